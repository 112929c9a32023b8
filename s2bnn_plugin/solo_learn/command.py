"""The command lines that run solo-learn's scripts with the plugin's configs, the plugin
registered by its Hydra callback in every process (DDP children too)."""

from __future__ import annotations

from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.solo_learn.locate import configs_dir, find_solo_script

__all__ = ["CALLBACK_OVERRIDE", "CALLBACK_TARGET", "hydra_quote", "solo_command"]

#: The Hydra ``_target_`` of the plugin's callback, :class:`s2bnn_plugin.solo.RegisterS2BNN`
#: (written in every config; a test checks that it resolves to the class). A string, because
#: the callback's module sits above this one.
CALLBACK_TARGET = "s2bnn_plugin.solo.RegisterS2BNN"
#: The Hydra override that registers the plugin in a solo-learn script run.
CALLBACK_OVERRIDE = f"++hydra.callbacks.s2bnn._target_={CALLBACK_TARGET}"


def hydra_quote(override: str) -> str:
    """Quote an override's value when it holds characters Hydra's grammar rejects unquoted
    (solo-learn names checkpoints ``...-ep=9.ckpt``)."""
    key, sep, value = override.partition("=")
    if not sep or not value or value[0] in "'\"[{" or not any(c in value for c in "=,: "):
        return override
    return f'{key}="{value}"'


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
