"""The plugin's only contact with solo-learn: registration into its registries.

solo-learn has no plugin entry points; its scripts look names up in two class-level dicts,
``solo.methods.base.BaseMethod._BACKBONES`` and ``solo.methods.METHODS``. :func:`register` adds
ours there (idempotently). :class:`RegisterS2BNN` is a Hydra callback calling it, so that a config
listing

    hydra:
      callbacks:
        s2bnn:
          _target_: s2bnn_plugin.solo.RegisterS2BNN

runs in an unmodified solo-learn checkout (and again in each DDP child, which Lightning re-launches
with the same arguments). Everything else in the plugin works without solo-learn.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from s2bnn_plugin.backbones import BACKBONES

__all__ = [
    "CALLBACK_OVERRIDE",
    "INSTALL_HINT",
    "find_solo_script",
    "solo_checkout",
    "hydra_quote",
    "RegisterS2BNN",
    "SoloLearnNotFound",
    "register",
    "require_solo",
    "solo_available",
]

INSTALL_HINT = (
    "solo-learn is not importable. PyPI's `solo-learn` is an unusable 2021 release; install the "
    "current code from its GitHub repository (vturrisi/solo-learn): clone it, run "
    "`pip install -e '.[solo]'` in this plugin for solo-learn's runtime needs, then put the "
    'checkout on sys.path, e.g. `python -c "import site; print(site.getsitepackages()[0])"` and '
    "write the checkout's absolute path into a file `solo_learn.pth` in that folder "
    "(or export PYTHONPATH=/path/to/solo-learn). See README.md, 'Install'."
)


CALLBACK_OVERRIDE = "++hydra.callbacks.s2bnn._target_=s2bnn_plugin.solo.RegisterS2BNN"


class SoloLearnNotFound(ImportError):
    """solo-learn (the GitHub version) is not importable."""


def solo_available() -> bool:
    """True when solo-learn's ``solo/methods`` package can be found, without importing it
    (importing solo-learn costs seconds)."""
    try:
        spec = importlib.util.find_spec("solo")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(
        (Path(location) / "methods" / "__init__.py").is_file()
        for location in spec.submodule_search_locations
    )


def require_solo() -> Any:
    """Import and return ``solo.methods``, or raise :class:`SoloLearnNotFound` saying how to
    install it."""
    if not solo_available():
        raise SoloLearnNotFound(INSTALL_HINT)
    import solo.methods

    if not isinstance(getattr(solo.methods.BaseMethod, "_BACKBONES", None), dict):
        raise SoloLearnNotFound(
            f"the solo-learn found at {solo.methods.__file__} is too old (no backbone registry). "
            + INSTALL_HINT
        )
    return solo.methods


def _methods() -> dict[str, Any]:
    """The plugin's methods, imported lazily (they subclass solo-learn's classes)."""
    from s2bnn_plugin.methods.s2bnn import S2BNN

    return {"s2bnn": S2BNN}


def _add(registry: dict[str, Any], name: str, obj: Any, kind: str) -> None:
    existing = registry.get(name)
    if existing is not None and existing is not obj:
        where = getattr(existing, "__module__", "?")
        raise RuntimeError(
            f"solo-learn already has a {kind} named {name!r} (from {where}); the plugin will not "
            "overwrite it. Rename one of them."
        )
    registry[name] = obj


def register() -> None:
    """Add the plugin's backbones (and methods) to solo-learn's registries. Idempotent."""
    methods_module = require_solo()
    base_method = methods_module.BaseMethod
    for name, factory in BACKBONES.items():
        _add(base_method._BACKBONES, name, factory, "backbone")
    for name, cls in _methods().items():
        _add(methods_module.METHODS, name, cls, "method")


try:  # Hydra is a dependency, but keep the module importable if a user strips it.
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class RegisterS2BNN(_HydraCallback):
    """Hydra callback: registers the plugin when Hydra instantiates it, before ``main()`` runs.

    Registration errors are raised here (in ``__init__``), where they stop the run; Hydra turns
    errors raised in later hooks into mere warnings.
    """

    def __init__(self, **_: Any) -> None:
        register()


def solo_checkout() -> Path | None:
    """The solo-learn checkout: ``$SOLO_LEARN_DIR`` if set, else the folder holding the
    importable ``solo`` package (found without importing it)."""
    import os

    env = os.environ.get("SOLO_LEARN_DIR")
    if env:
        return Path(env).expanduser()
    if not solo_available():
        return None
    spec = importlib.util.find_spec("solo")
    return Path(next(iter(spec.submodule_search_locations))).resolve().parent


def find_solo_script(name: str) -> Path:
    """Path of solo-learn's ``main_pretrain.py`` / ``main_linear.py``."""
    root = solo_checkout()
    if root is None:
        raise SoloLearnNotFound(INSTALL_HINT)
    script = root / name
    if not script.is_file():
        raise SoloLearnNotFound(
            f"{script} does not exist: solo-learn's scripts come with its repository checkout "
            "(a wheel has only the `solo` package). Point SOLO_LEARN_DIR at the checkout. "
            + INSTALL_HINT
        )
    return script


def hydra_quote(override: str) -> str:
    """Quote an override's value when it holds characters Hydra's grammar rejects unquoted
    (solo-learn names checkpoints ``...-ep=9.ckpt``)."""
    key, sep, value = override.partition("=")
    if not sep or not value or value[0] in "'\"[{" or not any(c in value for c in "=,: "):
        return override
    return f'{key}="{value}"'
