"""What every exporter of a packed network shares: the unit-kind dispatch and the refusal of a
network it cannot express, before anything is written.

An exporter builds its graph from the typed model
(:class:`~s2bnn_plugin.runtime.model.PackedModel`): the stem and the global pool are fixed
parts of every packed network; each unit is built by the exporter's builder for its kind
(:meth:`Exporter.unit_builder`). A unit whose kind has no builder, or one the target cannot run
exactly (:meth:`Exporter.unit_refusal`), is refused by index and layer name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.runtime.model import PackedModel, Unit
from s2bnn_plugin.runtime.units import UNIT_KINDS

__all__ = ["ExportError", "Exporter"]


class ExportError(S2BNNError, ValueError):
    """A packed network, or an input, that an exporter cannot express or was not built for."""


class Exporter(ABC):
    """An export target: its ``name`` (in messages), its error type, per unit kind a builder."""

    name: ClassVar[str]
    error: ClassVar[type[ExportError]] = ExportError

    @abstractmethod
    def unit_builder(self, kind: type[Unit]) -> Callable[..., Any] | None:
        """The function that builds a unit of ``kind`` in this target's graph (``None``: the
        target has none for it)."""

    def unit_refusal(self, unit: Unit) -> str | None:
        """Why this target cannot run ``unit`` exactly (``None``: it can)."""
        return None

    def known_kinds(self) -> list[str]:
        """The registered unit kinds this exporter builds."""
        return sorted(name for name, kind in UNIT_KINDS.items() if self.unit_builder(kind))

    def check_expressible(self, model: PackedModel) -> None:
        """Refuse, naming the layer, a network this exporter cannot express exactly."""
        for i, unit in enumerate(model.units):
            if self.unit_builder(type(unit)) is None:
                raise self.error(
                    f"unit {i} ({unit.name}) is of kind {unit.kind!r}, which the {self.name} "
                    f"export does not know (it builds {self.known_kinds()}); nothing written"
                )
            refusal = self.unit_refusal(unit)
            if refusal is not None:
                raise self.error(f"unit {i} ({unit.name}) {refusal}; nothing written")
