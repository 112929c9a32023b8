"""``method=s2bnn``: S2-BNN's guided distribution calibration as a solo-learn method.

A frozen real-valued teacher predicts a distribution for each large crop; the binary student's
distillation head learns to match it (:func:`distillation_loss`). Optionally any other solo-learn
objective trains alongside: ``loss = class_loss + ssl_weight * ssl_loss + distill_weight *
distill_loss`` (``class_loss`` trains solo-learn's online linear classifier on detached features;
with ``momentum.classifier`` the momentum classifier's loss is added too).

How the mixing works: ``S2BNN(cfg)`` returns an instance of a class built for
``method_kwargs.ssl_method``, ``S2BNN_<objective>`` (importable from this module, so the model
pickles), whose bases are ``(S2BNN, <objective class>, [_TakeMomentumClassLoss,]
_TakeClassLoss)``. The objective keeps all of its own machinery (momentum encoders, queues,
prototypes, its hooks) and reads its own settings, ``method_kwargs.ssl_kwargs``, as if they were
its ``method_kwargs``. ``_TakeClassLoss`` sits just above ``BaseMethod`` in the MRO: it records the
online classifier's loss and the per-crop features and hands the objective a zero in place of that
loss; ``_TakeMomentumClassLoss`` does the same just above ``BaseMomentumMethod`` for the momentum
classifier. What the objective returns is then its own loss alone, and every term of the total is
taken where it is computed, not derived by subtraction.

The teacher is not a registered sub-module: it never reaches the optimiser, DDP's gradient
synchronisation, solo-learn's checkpoints or a pickled model; a resumed (or unpickled) model loads
it again from its path.

Resuming: Lightning's checkpoints do not hold the Python, NumPy and torch random states that
drive the data order and the augmentations, so a resumed run would see other batches than an
uninterrupted one. ``on_save_checkpoint`` adds every rank's states (plain tensors and lists:
``torch.load(..., weights_only=True)`` reads them) and ``on_load_checkpoint`` restores this rank's,
so a run resumed from an epoch-end checkpoint trains on exactly the batches the uninterrupted run
did. Momentum objectives' current momentum (``momentum_updater.cur_tau``, outside solo-learn's
state dict too) is saved and restored the same way (see docs/training.md, "Resuming").
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import omegaconf
import torch
from solo.methods.base import BaseMethod, BaseMomentumMethod
from solo.utils.misc import omegaconf_select, remove_bias_and_norm_from_weight_decay
from solo.utils.momentum import initialize_momentum_params

from s2bnn_plugin.checkpoints import UnreadableWeights, load_weights
from s2bnn_plugin.methods import rng_state
from s2bnn_plugin.methods.distillation import DistillationHead, calibration_stats
from s2bnn_plugin.methods.losses import LOSSES, DistillLoss, Progress
from s2bnn_plugin.methods.schedule import LINEAR, LinearDecay, linear_decay, s2bnn_linear_problems
from s2bnn_plugin.methods.settings import (
    SETTINGS,
    MethodConfigError,
    check_method_kwargs,
    objective_class,
    objective_names,
    reads,
)
from s2bnn_plugin.methods.ssl_defaults import ssl_defaults
from s2bnn_plugin.solo_learn.resume import file_sha256
from s2bnn_plugin.teachers import load_teacher
from s2bnn_plugin.validate import NO_DEFAULT

__all__ = ["S2BNN", "mixed_class", "objective_names"]

MIXED_PREFIX = "S2BNN_"
RNG_KEY = "s2bnn_rng_states"
TAU_KEY = "s2bnn_momentum_tau"


class _TakeClassLoss(BaseMethod):
    """Just above ``BaseMethod``: records the online classifier's loss and the per-crop features,
    and passes a zero up in place of that loss, so the objective returns its own loss alone."""

    def training_step(self, batch: list[Any], batch_idx: int) -> dict[str, Any]:
        outs = super().training_step(batch, batch_idx)
        self._loss_terms["class_loss"] = outs["loss"]
        self._loss_terms["feats"] = outs["feats"]
        return {**outs, "loss": outs["loss"].new_zeros(())}


class _TakeMomentumClassLoss(BaseMomentumMethod):
    """Just above ``BaseMomentumMethod``: records the momentum classifier's loss (when
    ``momentum.classifier`` is set) and passes a zero up in place of the classifier losses."""

    def training_step(self, batch: list[Any], batch_idx: int) -> dict[str, Any]:
        outs = super().training_step(batch, batch_idx)
        if "momentum_loss" in outs:
            self._loss_terms["momentum_class_loss"] = outs["momentum_loss"]
        return {**outs, "loss": outs["loss"].new_zeros(())}


class S2BNN(BaseMethod):
    """Guided distribution calibration of a binary student by a frozen real teacher.

    ``method_kwargs``: every key, its default, the values it accepts and what it means are the
    rows of :data:`s2bnn_plugin.methods.settings.SETTINGS` (docs/training.md shows them as a
    table). ``teacher.ckpt`` is required; any other key, a key under ``ssl_kwargs`` that the
    mixed objective does not read, and a value out of range are refused
    (:func:`s2bnn_plugin.methods.settings.check_method_kwargs`).
    """

    def __new__(cls, cfg: omegaconf.DictConfig | None = None, *args: Any, **kwargs: Any) -> S2BNN:
        # (cfg is None when pickle re-creates an instance of a mixed class)
        if cls is S2BNN:
            if cfg is None:
                raise TypeError("S2BNN(cfg): the config is required")
            ssl_method = str(omegaconf_select(cfg, "method_kwargs.ssl_method", "none")).lower()
            cls = mixed_class(ssl_method)
        return super().__new__(cls)

    def __init__(self, cfg: omegaconf.DictConfig) -> None:
        cfg = S2BNN.add_and_assert_specific_cfg(cfg)
        own = cfg.method_kwargs
        # The objective sees its own settings as its method_kwargs while it is built, and fills
        # its defaults there; they are written back under ssl_kwargs (so args.json records them).
        cfg.method_kwargs = own.ssl_kwargs
        try:
            super().__init__(cfg)
            filled = cfg.method_kwargs
        finally:
            cfg.method_kwargs = own
        cfg.method_kwargs.ssl_kwargs = filled
        mk = cfg.method_kwargs
        # args.json records the teacher's content: a resume with another teacher is refused
        mk.teacher.sha256 = file_sha256(mk.teacher.ckpt)

        # not ``self.temperature``: SimCLR, MoCo, SwAV, NNCLR, ... keep their own under that name
        self.distill_temperature: float = float(mk.temperature)
        self.distill_weight: float = float(mk.distill_weight)
        self.ssl_method: str = str(mk.ssl_method)
        self.ssl_weight: float = float(mk.ssl_weight) if self.ssl_method != "none" else 0.0
        # a plain object (not a sub-module): it holds settings, no weights
        self.distill_loss: DistillLoss = LOSSES[str(mk.loss)](self.distill_temperature, mk)
        self.distill_crops: str = str(mk.distill_crops)

        teacher = load_teacher(
            mk.teacher.ckpt, mk.teacher.format, mk.teacher.output, mk.teacher.stem_padding
        )
        crop = _crop_size(cfg)
        teacher_dim = teacher.output_dim(crop)
        # not a registered sub-module: see the module docstring
        object.__setattr__(self, "teacher", teacher)
        hidden = int(mk.head_hidden_dim) if mk.head_hidden_dim is not None else self.features_dim
        self.distill_head = DistillationHead(self.features_dim, hidden, teacher_dim)
        self._loss_terms: dict[str, Any] = {}

        if mk.student_init:
            self._load_student_init(Path(mk.student_init))

    @staticmethod
    def add_and_assert_specific_cfg(cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """Fill s2bnn's defaults and check its settings, before any weights are loaded.

        (A mixed class replaces this static method by its objective's own chain, which
        ``BaseMethod.__init__`` calls on the objective's view of the config.)
        """
        cfg.method_kwargs = omegaconf_select(cfg, "method_kwargs", {})
        # unknown keys, out-of-range values, a missing teacher (see methods/settings.py)
        check_method_kwargs(cfg)
        mk = cfg.method_kwargs
        mk.teacher = omegaconf_select(cfg, "method_kwargs.teacher", {})
        ckpt = mk.teacher.ckpt
        if not Path(str(ckpt)).expanduser().is_file():
            raise FileNotFoundError(
                f"method_kwargs.teacher.ckpt={ckpt} is not a file; give the path of the teacher "
                "checkpoint (relative paths are relative to the directory you launch from)"
            )
        # the table's defaults, in its order (a loss's own settings once the loss is known)
        for setting in SETTINGS:
            if setting.default is not NO_DEFAULT and reads(setting, mk):
                *parents, key = setting.key.split(".")
                node = functools.reduce(getattr, parents, mk)
                node[key] = omegaconf_select(cfg, f"method_kwargs.{setting.key}", setting.default)
        mk.ssl_method = str(mk.ssl_method).lower()
        if mk.student_init and not Path(str(mk.student_init)).expanduser().is_file():
            raise FileNotFoundError(
                f"method_kwargs.student_init={mk.student_init} is not a file; give the step-1 "
                "checkpoint (a .ckpt written by solo-learn) or null"
            )

        if str(omegaconf_select(cfg, "scheduler.name", "")).lower() == LINEAR:
            # S2-BNN's own schedule has no warmup (solo-learn's default is 10 epochs)
            cfg.scheduler.warmup_epochs = omegaconf_select(cfg, "scheduler.warmup_epochs", 0)
            problems = s2bnn_linear_problems(cfg)
            if problems:
                raise MethodConfigError("; ".join(problems))

        kwargs, momentum = ssl_defaults(mk.ssl_method)
        user = omegaconf_select(cfg, "method_kwargs.ssl_kwargs", {}) or {}
        mk.ssl_kwargs = omegaconf.OmegaConf.merge(kwargs, user)
        if momentum:
            cfg.momentum = omegaconf_select(cfg, "momentum", {}) or {}
            for key, value in momentum.items():
                cfg.momentum[key] = omegaconf_select(cfg, f"momentum.{key}", value)
        return cfg

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        return super().learnable_params + [
            {"name": "distill_head", "params": self.distill_head.parameters()}
        ]

    def configure_optimizers(self) -> Any:
        """solo-learn's optimiser and scheduler, and for ``scheduler.name=linear`` S2-BNN's
        linear decay (:mod:`s2bnn_plugin.methods.schedule`), which solo-learn does not build.
        Parameter groups marked ``static_lr`` keep their lr, as under solo-learn's schedulers."""
        if str(self.scheduler).lower() != LINEAR:
            return super().configure_optimizers()
        name, self.scheduler = self.scheduler, "none"
        try:
            optimizer = super().configure_optimizers()  # "none": the optimiser alone
        finally:
            self.scheduler = name
        groups = self.learnable_params
        if self.exclude_bias_n_norm_wd:
            groups = remove_bias_and_norm_from_weight_decay(groups)
        static = [bool(g.get("static_lr", False)) for g in groups]
        if len(static) != len(optimizer.param_groups):
            raise RuntimeError(
                f"{len(optimizer.param_groups)} optimiser parameter groups but "
                f"{len(static)} learnable parameter groups: cannot tell which keep a static lr"
            )
        per_step = self.scheduler_interval == "step"
        decay = linear_decay(
            lr=self.lr,
            max_epochs=self.max_epochs,
            warmup_epochs=self.warmup_epochs,
            warmup_start_lr=self.warmup_start_lr,
            min_lr=self.min_lr,
            steps_per_epoch=(
                self.trainer.estimated_stepping_batches / self.max_epochs if per_step else None
            ),
        )
        constant = LinearDecay(warmup=0.0, total=0.0, start=1.0, end=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [constant if keep else decay for keep in static]
        )
        return [optimizer], [
            {"scheduler": scheduler, "interval": self.scheduler_interval, "frequency": 1}
        ]

    def _apply(self, fn: Any, recurse: bool = True) -> S2BNN:
        """Device, dtype and memory-format moves reach the unregistered teacher too, so it runs
        where the student runs and under the trainer's precision."""
        super()._apply(fn, recurse)
        self.teacher._apply(fn)
        return self

    def training_step(self, batch: list[Any], batch_idx: int) -> torch.Tensor:
        self._loss_terms = {}
        out = super().training_step(batch, batch_idx)
        terms, self._loss_terms = self._loss_terms, {}
        # the classifier losses were handed up as zeros: this is the objective's own loss
        ssl_loss = out["loss"] if isinstance(out, dict) else out
        class_loss = terms["class_loss"]  # logged by BaseMethod as train_class_loss
        # logged by BaseMomentumMethod as train_momentum_class_loss
        momentum_class_loss = terms.get("momentum_class_loss")

        _, crops, _ = batch
        crops = [crops] if isinstance(crops, torch.Tensor) else crops
        # the teacher sees the large crops only (multi-crop's small crops train the objective)
        large = list(crops[: self.num_large_crops])[: len(terms["feats"])]
        pairs = self.distill_loss.pairs(len(large), self.distill_crops)
        targets: dict[int, torch.Tensor] = {}
        predictions: dict[int, torch.Tensor] = {}
        for i, j in pairs:
            if j not in targets:
                x = large[j]
                if not self.no_channel_last:
                    x = x.to(memory_format=torch.channels_last)
                targets[j] = self.teacher(x)
            if i not in predictions:
                predictions[i] = self.distill_head(terms["feats"][i])
        matched = [(predictions[i], targets[j]) for i, j in pairs]
        distill = self.distill_loss(matched, self._progress)
        stats = [calibration_stats(s, t, self.distill_temperature) for s, t in matched]
        distill_loss = distill.loss
        loss = class_loss + self.distill_weight * distill_loss
        if self.ssl_method != "none":
            loss = loss + self.ssl_weight * ssl_loss
        if momentum_class_loss is not None:
            loss = loss + momentum_class_loss

        n = len(stats)
        if distill.logged:  # the loss's own terms
            self.log_dict(distill.logged, on_epoch=True, sync_dist=True)
        self.log_dict(
            {
                "train_loss": loss,
                "train_distill_loss": distill_loss,
                "train_ssl_loss": ssl_loss,
                "train_teacher_student_agreement": sum(s.agreement for s in stats) / n,
                "train_teacher_entropy": sum(s.teacher_entropy for s in stats) / n,
                "train_student_entropy": sum(s.student_entropy for s in stats) / n,
            },
            on_epoch=True,
            sync_dist=True,
        )
        return loss

    def _progress(self) -> Progress | None:
        """Where training is (``None`` outside a Trainer), for a loss that changes over it."""
        trainer = self._trainer
        if trainer is None:
            return None
        return Progress(trainer.global_step, int(trainer.estimated_stepping_batches))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add every rank's random states (see the module docstring) and, for momentum
        objectives, the current momentum (tau), which solo-learn keeps outside the state dict.
        Lightning calls this on every rank when a checkpoint is written, so the states can be
        gathered here."""
        super().on_save_checkpoint(checkpoint)
        state = rng_state.capture()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
        else:
            states = [state]
        checkpoint[RNG_KEY] = states
        updater = getattr(self, "momentum_updater", None)
        if updater is not None:  # solo-learn's tau schedule lives outside the state dict
            checkpoint[TAU_KEY] = float(updater.cur_tau)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the momentum (tau) and, when ``trainer.fit`` resumes from a checkpoint (not
        when a checkpoint is merely loaded, e.g. by ``load_from_checkpoint``), this rank's
        random states."""
        super().on_load_checkpoint(checkpoint)
        updater = getattr(self, "momentum_updater", None)
        if updater is not None and TAU_KEY in checkpoint:
            updater.cur_tau = checkpoint[TAU_KEY]
        states = checkpoint.get(RNG_KEY)
        trainer = self._trainer
        if not states or trainer is None or trainer.state.fn != "fit":
            return
        rank = trainer.global_rank
        if rank >= len(states):
            warnings.warn(
                f"the checkpoint holds random states for {len(states)} process(es), this is "
                f"rank {rank}: its data order and augmentations will differ from an "
                "uninterrupted run",
                stacklevel=2,
            )
            return
        rng_state.restore(states[rank])

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the teacher (as in checkpoints): it is reloaded from its path."""
        state = super().__getstate__()
        state.pop("teacher", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        mk = self.cfg.method_kwargs
        teacher = load_teacher(
            mk.teacher.ckpt, mk.teacher.format, mk.teacher.output, mk.teacher.stem_padding
        )
        param = next(self.backbone.parameters())
        object.__setattr__(self, "teacher", teacher.to(device=param.device, dtype=param.dtype))

    def _load_student_init(self, path: Path) -> None:
        """Initialise from a step-1 checkpoint: the backbone must fit exactly."""
        try:
            obj = load_weights(path)
        except UnreadableWeights as e:
            raise MethodConfigError(
                f"method_kwargs.student_init={path} is not a torch checkpoint ({e.reason}); give "
                "the .ckpt that solo-learn wrote for step 1"
            ) from e
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
        own = self.state_dict()
        backbone_keys = [k for k in own if k.startswith("backbone.")]
        missing = [k for k in backbone_keys if k not in state]
        wrong = [
            f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
            for k in own
            if k in state and state[k].shape != own[k].shape
        ]
        if missing or wrong:
            raise ValueError(
                f"student_init {path} does not fit the student ({self.backbone_name} with "
                f"{dict(self.backbone_args)}): missing {missing[:4]}, shape mismatch {wrong[:4]}. "
                "Use the step-1 checkpoint of the same backbone.name and backbone.kwargs "
                "(only binary_weights may differ)."
            )
        loadable = {k: v for k, v in state.items() if k in own}
        self.load_state_dict(loadable, strict=False)
        for online, momentum in getattr(self, "momentum_pairs", []):
            initialize_momentum_params(online, momentum)


def _crop_size(cfg: omegaconf.DictConfig) -> int:
    augmentations = omegaconf_select(cfg, "augmentations", None)
    if augmentations:
        return int(augmentations[0].get("crop_size", 224))
    return 224


@functools.cache
def mixed_class(ssl_method: str) -> type[S2BNN]:
    """The class S2BNN instantiates for ``ssl_method`` (cached, one per objective), importable
    as ``s2bnn_plugin.methods.s2bnn.S2BNN_<ssl_method>`` so that pickle finds it."""
    objective = objective_class(ssl_method)
    if objective is None:
        bases: tuple[type, ...] = (S2BNN, _TakeClassLoss)
    elif issubclass(objective, BaseMomentumMethod):
        bases = (S2BNN, objective, _TakeMomentumClassLoss, _TakeClassLoss)
    else:
        bases = (S2BNN, objective, _TakeClassLoss)
    chain = (objective or BaseMethod).add_and_assert_specific_cfg
    name = f"{MIXED_PREFIX}{ssl_method}"
    return type(
        name,
        bases,
        {
            "add_and_assert_specific_cfg": staticmethod(chain),
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": S2BNN.__doc__,
        },
    )


def __getattr__(name: str) -> type[S2BNN]:
    """``S2BNN_<objective>``: the mixed classes, made on first use (pickle looks them up here)."""
    if name.startswith(MIXED_PREFIX):
        try:
            return mixed_class(name[len(MIXED_PREFIX) :])
        except ValueError:
            pass
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
