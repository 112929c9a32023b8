"""The machinery of packing by rules: the registry of pack rules (:func:`pack_rule`) and the
:class:`Packer`, the walk's state that rules add the stem, binary units, activations and the
global pool to. The built-in rules are in :mod:`.rules`;
:func:`s2bnn_plugin.packing.packer.pack_model` runs the walk. (Kept apart from both so that the
rules and the driver import it, not each other.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import NoReturn, TypeVar

import numpy as np
import torch
from torch import nn

from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.runtime.model import BackboneRef, Stem, Unit

__all__ = [
    "PACK_RULES",
    "PackError",
    "PackRule",
    "Packer",
    "find_pack_rule",
    "pack_rule",
    "walk_model",
]


class PackError(S2BNNError, ValueError):
    """The model (or one of its layers) cannot be bit-packed."""


PackRule = Callable[["Packer", nn.Module, str], None]
"""``rule(packer, module, path)``: add ``module``'s part of the packed network (``path``: its
name in the model, ``""`` for the model itself)."""

PACK_RULES: dict[type[nn.Module], PackRule] = {}
"""The pack rule of each module type (exact type; see :func:`pack_rule`)."""

_INHERITED: set[type[nn.Module]] = set()  # types whose rule also applies to faithful subclasses

R = TypeVar("R", bound=PackRule)


def pack_rule(*types: type[nn.Module], subclasses: bool = False) -> Callable[[R], R]:
    """Register the decorated function as the pack rule of modules of exactly these types.

    ``subclasses=True`` lets the rule also take a subclass that overrides none of the type's own
    methods but ``__init__`` (e.g. a :class:`~s2bnn_plugin.backbones.BinaryBackbone` that only
    builds different blocks): what it computes is then the type's ``forward``. A type has one rule.
    """

    def register(fn: R) -> R:
        for t in types:
            if PACK_RULES.get(t, fn) is not fn:
                raise ValueError(f"{t.__name__} already has a pack rule ({PACK_RULES[t]})")
            PACK_RULES[t] = fn
            if subclasses:
                _INHERITED.add(t)
        return fn

    return register


def _overridden(cls: type, base: type) -> list[str]:
    """``base``'s own methods (but ``__init__``) that ``cls`` replaces."""
    return [
        name
        for name, value in vars(base).items()
        if name != "__init__"
        and callable(getattr(value, "__func__", value))
        and getattr(cls, name) is not getattr(base, name)
    ]


def find_pack_rule(module: nn.Module) -> PackRule | None:
    """The rule for ``module``: its exact type's, else an inherited one it is faithful to."""
    rule = PACK_RULES.get(type(module))
    if rule is not None:
        return rule
    for base in type(module).__mro__[1:]:
        if base in _INHERITED and not _overridden(type(module), base):
            return PACK_RULES[base]
    return None


def _rule_names() -> str:
    names = {t.__name__ + (" (and subclasses)" if t in _INHERITED else "") for t in PACK_RULES}
    return ", ".join(sorted(names))


@dataclasses.dataclass
class _OpenUnit:
    """A binary unit whose activation may still follow."""

    unit: Unit
    activation: np.ndarray | None = None
    activation_path: str | None = None


class Packer:
    """The walk's state: what rules see and add to.

    Rules add, in forward order: the stem (:meth:`set_stem`, then optionally a max pool), binary
    units (:meth:`add_unit`), each optionally followed by its activation (:meth:`add_activation`),
    and last the global average pool (:meth:`add_global_pool`). The packed format is exactly that
    chain; anything out of that order is refused where it occurs.
    """

    def __init__(self, model: nn.Module, *, progress: bool = False) -> None:
        self.model = model
        self.progress = progress
        self.names = {id(m): n for n, m in model.named_modules()}
        self.seen: set[int] = set()
        self.units: list[Unit] = []
        #: per unit, the path of the RPReLU after it (None: none); the float twin uses it
        self.activation_paths: list[str | None] = []
        self.stem: Stem | None = None
        self.stem_conv: nn.Conv2d | None = None  # a stem convolution waiting for its BatchNorm
        self.in_channels: int | None = None
        self.channels: int | None = None  # channels of the map at this point of the walk
        self.backbone: BackboneRef | None = None  # set by the backbone's rule
        self.pooled = False
        self._open: _OpenUnit | None = None
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=len(self.names), desc="packing layers", unit="layer")

    # -- walking ---------------------------------------------------------------------------
    def path(self, module: nn.Module) -> str:
        """``module``'s name in the model (``"<model>"`` for the model itself)."""
        return self.names.get(id(module), "?") or "<model>"

    @staticmethod
    def child_path(path: str, name: str) -> str:
        return f"{path}.{name}" if path else name

    def fail(self, path: str, message: str) -> NoReturn:
        raise PackError(f"cannot pack {path or '<model>'!r}: {message}")

    def visit(self, *modules: nn.Module | None) -> None:
        """Mark modules as accounted for (a rule that reads a module's values marks it)."""
        self.seen.update(id(m) for m in modules if m is not None)

    def expect(self, module: object, kind: type | tuple[type, ...], path: str) -> None:
        """Refuse ``module`` unless its type is exactly ``kind`` (or one of them)."""
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if type(module) not in kinds:
            want = " or ".join(k.__name__ for k in kinds)
            self.fail(path, f"it is {type(module).__name__}, expected {want}")

    def walk(self, module: nn.Module, path: str) -> None:
        """Hand ``module`` to its rule; refuse it when its type has none."""
        if self.pooled:
            self.fail(path, "the global average pool must be the last layer")
        rule = find_pack_rule(module)
        if rule is None:
            kind = type(module).__name__
            self.fail(
                path,
                f"no pack rule for {kind} (rules exist for: {_rule_names()}); a new block needs "
                "one, see CONTRIBUTING.md, 'Adding a backbone'",
            )
        self.visit(module)
        if self._bar is not None:
            self._bar.update(len(self.seen) - self._bar.n)
        rule(self, module, path)

    def walk_children(
        self, module: nn.Module, path: str, names: Iterable[str] | None = None
    ) -> None:
        """Walk ``module``'s children (or those named), in order: one feeds the next."""
        if names is None:
            children = list(module.named_children())
        else:
            children = [(n, getattr(module, n)) for n in names]
        for name, child in children:
            self.walk(child, self.child_path(path, name))

    # -- the packed chain --------------------------------------------------------------------
    def set_stem(self, stem: Stem, in_channels: int) -> None:
        """The real stem: convolution + BatchNorm, first in the chain."""
        if self.stem is not None or self.has_units:
            self.fail(stem.name, "the packed format has one real convolution, the stem, first")
        self.stem = stem
        self.in_channels = in_channels
        self.channels = stem.out_channels

    def add_maxpool(self, path: str) -> None:
        """ResNet's 3x3 stride-2 max pool, directly after the stem."""
        if self.stem is None or self.has_units or self.stem.maxpool:
            self.fail(path, "a MaxPool2d must directly follow the stem's BatchNorm2d")
        self.stem = dataclasses.replace(self.stem, maxpool=True)

    def add_unit(self, unit: Unit) -> None:
        """A binary unit (its activation, if any, follows through :meth:`add_activation`)."""
        if self.stem is None:
            self.fail(unit.name, "a binary unit before the stem (Conv2d + BatchNorm2d)")
        if unit.in_channels != self.channels:
            cin = unit.in_channels
            self.fail(unit.name, f"it reads {cin} channels, its input has {self.channels}")
        self._close()
        self._open = _OpenUnit(unit)
        self.channels = unit.out_channels

    @property
    def has_units(self) -> bool:
        return bool(self.units) or self._open is not None

    @property
    def awaits_activation(self) -> bool:
        """True right after a binary unit (its activation may follow)."""
        open_unit = self._open
        return (
            open_unit is not None
            and open_unit.activation is None
            and open_unit.unit.accepts_activation
        )

    def add_activation(self, params: np.ndarray, path: str) -> None:
        """RPReLU parameters (3, C) of the unit just added."""
        if not self.awaits_activation:
            self.fail(path, "an RPReLU must directly follow a binary unit (ResidualBinaryConv)")
        self._open.activation = params
        self._open.activation_path = path

    def add_global_pool(self, path: str) -> None:
        """The global average pool: the last layer; it closes the chain."""
        if not self.has_units:
            self.fail(path, "the global pool needs binary units before it")
        self._close()
        self.pooled = True

    def _close(self) -> None:
        if self._open is None:
            return
        unit = self._open.unit
        if self._open.activation is not None:
            unit = unit.with_activation(self._open.activation)
        self.units.append(unit)
        self.activation_paths.append(self._open.activation_path)
        self._open = None

    def leftovers(self) -> None:
        """Refuse the model if the walk did not account for every module."""
        for name, m in self.model.named_modules():
            if id(m) not in self.seen:
                raise PackError(
                    f"cannot pack layer {name!r} ({type(m).__name__}): the pack rules did not "
                    "reach it, so it is not part of the forward pass they understand"
                )


def walk_model(model: nn.Module, *, progress: bool = False) -> Packer:
    """Run the pack rules over ``model`` (eval mode) and return the walk's state. The caller
    imports :mod:`.rules` first, so that the built-in rules are registered."""
    packer = Packer(model, progress=progress)
    try:
        with torch.no_grad():
            packer.walk(model, "")
    finally:
        if packer._bar is not None:
            packer._bar.close()
    return packer
