"""The command lines that run solo-learn's scripts with the plugin's configs, the plugin
registered by its Hydra callback in every process (DDP children too)."""

from __future__ import annotations

import re

from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.solo_learn.locate import configs_dir, find_solo_script

__all__ = ["CALLBACK_OVERRIDE", "CALLBACK_TARGET", "PATH_KEYS", "hydra_quote", "solo_command"]

#: The Hydra ``_target_`` of the plugin's callback, :class:`s2bnn_plugin.solo.RegisterS2BNN`
#: (written in every config; a test checks that it resolves to the class). A string, because
#: the callback's module sits above this one.
CALLBACK_TARGET = "s2bnn_plugin.solo.RegisterS2BNN"
#: The Hydra override that registers the plugin in a solo-learn script run.
CALLBACK_OVERRIDE = f"++hydra.callbacks.s2bnn._target_={CALLBACK_TARGET}"


#: The settings whose values are file or folder paths: ``s2bnn pretrain`` / ``linear`` pass them
#: to Hydra as literal strings, whatever characters they hold.
PATH_KEYS = frozenset(
    {
        "data.train_path",
        "data.val_path",
        "method_kwargs.teacher.ckpt",
        "method_kwargs.student_init",
        "pretrained_feature_extractor",
        "resume_from_checkpoint",
        "checkpoint.dir",
        "auto_umap.dir",
    }
)
# characters Hydra's grammar takes in an unquoted value (others need quotes)
_UNQUOTED = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ$%*+-./:?@\\_|"
)


def _hydra_quoted(text: str) -> str:
    """``text`` as a single-quoted string of Hydra's override grammar: a quote is escaped with a
    backslash, and a run of backslashes is doubled where it stands before a quote or at the
    end (elsewhere Hydra keeps backslashes as they are)."""
    body = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)
    return "'" + body.replace("'", "\\'") + "'"


def _omegaconf_literal(text: str) -> str:
    """``text`` with every ``${`` escaped, so that OmegaConf takes it literally instead of
    interpolating it (``\\${``; backslashes before it doubled, as OmegaConf reads them)."""
    return re.sub(r"(\\*)\$\{", lambda m: "\\" * (2 * len(m.group(1)) + 1) + "${", text)


def hydra_quote(override: str) -> str:
    """An override as Hydra must read it. The value of a path setting (:data:`PATH_KEYS`) is
    taken literally: quoted, with quotes, backslashes and ``${`` escaped, so that a path holding
    ``"``, ``'``, ``=``, a space or ``${...}`` reaches the config unchanged (``null`` stays
    null). Any other value is quoted only when it holds characters Hydra's grammar rejects
    unquoted (solo-learn names checkpoints ``...-ep=9.ckpt``), and keeps its interpolations. A
    value already in Hydra's syntax (quoted, a list ``[...]``, a dict ``{...}``) is left as the
    user wrote it."""
    key, sep, value = override.partition("=")
    if not sep or not value or value[0] in "'\"[{":
        return override
    if key.lstrip("+~") in PATH_KEYS:
        if value == "null":
            return override
        return f"{key}={_hydra_quoted(_omegaconf_literal(value))}"
    if all(c in _UNQUOTED for c in value):
        return override
    return f"{key}={_hydra_quoted(value)}"


def solo_command(
    script: str, overrides: list[str], *, kind: str, dataset: str, config: str, python: str
) -> list[str]:
    """The command line that runs solo-learn's ``script`` with the plugin's ``kind/dataset``
    configs (unless the overrides name a ``--config-path``) and the plugin registered."""
    extra = list(overrides)
    if not any(a.startswith(("--config-path", "-cp")) for a in extra):
        config_dir = configs_dir() / kind / dataset
        if not config_dir.is_dir():
            choices = sorted(p.name for p in (configs_dir() / kind).iterdir() if p.is_dir())
            raise S2BNNError(f"no {kind} configs for dataset {dataset!r}; choose one of {choices}")
        if not (config_dir / config).is_file():
            choices = sorted(p.name for p in config_dir.glob("*.yaml"))
            raise S2BNNError(f"no config {config!r} in {config_dir}; choose one of {choices}")
        extra = ["--config-path", str(config_dir), "--config-name", config, *extra]
    return [python, str(find_solo_script(script)), *map(hydra_quote, extra), CALLBACK_OVERRIDE]
