"""Registration into solo-learn: where the plugin's backbones and methods meet solo-learn's
registries (:mod:`s2bnn_plugin.solo_learn.registry`).

:func:`register` adds them there (idempotently). :class:`RegisterS2BNN` is a Hydra callback
calling it, so that a config listing

    hydra:
      callbacks:
        s2bnn:
          _target_: s2bnn_plugin.solo.RegisterS2BNN

runs in an unmodified solo-learn checkout (and again in each DDP child, which Lightning re-launches
with the same arguments); before the job starts it also checks the config against the hardware
(:mod:`s2bnn_plugin.solo_learn.preflight`), the names and ``method_kwargs`` it gives
(:meth:`RegisterS2BNN.check_config`) and the run it would resume
(:mod:`s2bnn_plugin.solo_learn.resume`).
"""

from __future__ import annotations

import sys
from typing import Any

from s2bnn_plugin.backbones import BACKBONES
from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.solo_learn.registry import (
    register_backbones,
    register_methods,
    solo_backbones,
    solo_methods,
)

__all__ = ["RegisterS2BNN", "register"]


def _methods() -> dict[str, Any]:
    """The plugin's methods, imported lazily (they subclass solo-learn's classes)."""
    from s2bnn_plugin.methods.s2bnn import S2BNN

    return {"s2bnn": S2BNN}


def register() -> None:
    """Add the plugin's backbones (and methods) to solo-learn's registries. Idempotent."""
    register_backbones(BACKBONES)
    register_methods(_methods())


try:  # Hydra is a dependency, but keep the module importable if a user strips it.
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class RegisterS2BNN(_HydraCallback):
    """Hydra callback: registers the plugin when Hydra instantiates it, before ``main()`` runs,
    and refuses a config that cannot run on this machine before anything is built.

    Registration errors are raised here (in ``__init__``), where they stop the run. Hydra turns
    exceptions raised in later hooks into mere warnings, so the config check in
    :meth:`on_job_start` exits the process itself (``SystemExit`` is not an ``Exception``).
    """

    def __init__(self, **_: Any) -> None:
        register()

    def on_job_start(self, config: Any, **_: Any) -> None:
        from s2bnn_plugin.solo_learn.preflight import ConfigError, check_run_config
        from s2bnn_plugin.solo_learn.resume import check_resume

        try:
            check_run_config(config)
        except ConfigError as e:
            print(f"s2bnn: this config cannot run here: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        try:
            self.check_config(config)
            check_resume(config)  # never continue a checkpoint trained with other settings
        except S2BNNError as e:
            print(f"s2bnn: bad config: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    @staticmethod
    def check_config(config: Any) -> None:
        """Refuse what solo-learn would take silently or fail on with a bare assertion or a
        traceback inside ``main()``: an unknown ``backbone.name`` or ``method``; the plugin's
        backbones' ``backbone.kwargs`` (built on the meta device: checked, nothing allocated);
        for ``method=s2bnn`` its ``method_kwargs`` (unknown keys, values out of range:
        :mod:`s2bnn_plugin.methods.settings`) and its teacher, loaded as the method will load it
        (weights only: a file holding pickled objects is refused); ``scheduler.name=linear``
        where nothing builds it, or with settings out of range
        (:mod:`s2bnn_plugin.methods.schedule`). Raises an
        :class:`~s2bnn_plugin.errors.S2BNNError` naming each problem and its fix."""
        from omegaconf import OmegaConf

        from s2bnn_plugin.methods.schedule import scheduler_problems
        from s2bnn_plugin.methods.settings import MethodConfigError, check_method_kwargs
        from s2bnn_plugin.solo_learn.preflight import check_names

        registered = set(solo_backbones())
        check_names(
            config,
            backbones={
                "the plugin's": sorted(BACKBONES),
                "solo-learn's": sorted(registered - set(BACKBONES)),
            },
            methods=sorted(solo_methods()),
        )
        _check_backbone_kwargs(config)
        if OmegaConf.select(OmegaConf.create(config), "method", default=None) == "s2bnn":
            check_method_kwargs(config)
            _check_teacher(config)
        problems = scheduler_problems(config)  # scheduler.name=linear: method=s2bnn's only
        if problems:
            raise MethodConfigError("; ".join(problems))


def _check_backbone_kwargs(config: Any) -> None:
    """Build a plugin backbone from ``backbone.kwargs`` on PyTorch's meta device (no memory):
    whatever its factory refuses (``compile=yes``, an unknown kwarg) is refused here, before
    solo-learn builds the method."""
    import torch
    from omegaconf import OmegaConf

    from s2bnn_plugin.backbones import BackboneError
    from s2bnn_plugin.solo_learn.preflight import ConfigError

    cfg = OmegaConf.create(config)
    name = OmegaConf.select(cfg, "backbone.name", default=None)
    if name not in BACKBONES:
        return  # solo-learn's own, or unknown (check_names said so)
    kwargs = OmegaConf.select(cfg, "backbone.kwargs", default=None) or {}
    kwargs = OmegaConf.to_container(kwargs, resolve=True) if OmegaConf.is_config(kwargs) else kwargs
    try:
        with torch.device("meta"):
            BACKBONES[name](OmegaConf.select(cfg, "method", default=None), **kwargs)
    except BackboneError as e:
        raise ConfigError(f"backbone.kwargs: {e}") from None


def _check_teacher(config: Any) -> None:
    """Load ``method_kwargs.teacher`` as :class:`~s2bnn_plugin.methods.s2bnn.S2BNN` will: a file
    that cannot be a teacher (pickled objects, another format, weights that do not fit) is one
    line here instead of a traceback from inside solo-learn's ``main()``."""
    from omegaconf import OmegaConf

    from s2bnn_plugin.teachers import load_teacher

    teacher = OmegaConf.select(OmegaConf.create(config), "method_kwargs.teacher", default=None)
    if teacher is None or teacher.get("ckpt") in (None, "", "???"):
        return  # check_method_kwargs names a missing teacher
    keys = ("format", "output", "stem_padding")
    given = {k: teacher[k] for k in keys if teacher.get(k) is not None}
    load_teacher(teacher.ckpt, **given)
