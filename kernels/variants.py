"""Which micro-kernels run: one variant per instruction set, chosen for the CPU the kernels
compile for.

The binary convolution's inner loop counts the set bits of ``a XOR w``. How to do that fastest
depends on the instruction set, so each variant names a scheme for the tap loop
(:mod:`.taps`) and how its work is blocked into registers:

================== ===================================== =========================================
variant            instruction set                       tap loop of layers over 32 channels
================== ===================================== =========================================
avx512_vpopcntdq   AVX-512 with VPOPCNTDQ (Ice Lake and  ``vpopcntq`` per 64-bit lane, 4 positions
                   later Xeons, Zen 4 and 5)             x 32 channels in zmm registers
avx512bw           AVX-512 without it (Skylake-SP,       carry-save adders, byte popcounts
                   Cascade Lake)                         (``vpshufb``) on zmm, 2 positions a pass
avx2               AVX2 (Haswell and later, Zen 1-3)     byte popcounts of nibble-split inputs and
                                                         weights, one ``vpshufb`` per 32 nibbles
                                                         and no masking, 4 positions a pass
neon               aarch64 (Advanced SIMD)               byte popcounts (``cnt``), summed in bytes
portable           anything else                         byte popcounts, summed in bytes
================== ===================================== =========================================

A layer's scheme also depends on how long a row of its taps is (``k * words`` input words,
:func:`wide_scheme`): carry-save adders pay off over long dot products only, so the carry-save
variant takes the byte-count loop (4 positions a pass, bytes summed for up to 31 steps before
they are widened) below ``carrysave_from`` words. With AVX2, where carry-save adders cost 5
logic ops each, counting nibbles split beforehand is faster at every length (6 vector ops per
256 bits against 6.5). Layers of at most 32 input channels use 32-bit lanes: ``vpopcntd`` with
VPOPCNTDQ, byte counts otherwise. Every variant gives the same integers, bit for bit (they are
exact counts).

The target is what Numba compiles for: the host CPU, or ``NUMBA_CPU_NAME`` /
``NUMBA_CPU_FEATURES`` when set. :func:`target` finds which of these instruction sets the
compiled code can use by compiling a probe with LLVM for exactly that target and reading the
instructions it emits (so a CPU name LLVM knows needs no table here). :func:`select` returns the
best variant for it, or the one named by the ``variant`` argument or the ``S2BNN_KERNELS``
environment variable; a variant whose instruction set the target lacks is refused
(:class:`UnsupportedVariant`, naming the target's instruction sets) rather than compiled into
code that would stop with an illegal instruction.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from typing import NamedTuple

import llvmlite.binding as ll
from numba import types
from numba.core import config
from numba.core.codegen import get_host_cpu_features
from numba.extending import NativeValue, models, register_model, typeof_impl, unbox

__all__ = [
    "ENV",
    "VARIANTS",
    "KernelVariant",
    "Target",
    "UnsupportedVariant",
    "VariantType",
    "best",
    "select",
    "target",
    "target_key",
    "wide_scheme",
]

ENV = "S2BNN_KERNELS"


class UnsupportedVariant(ValueError):
    """A kernel variant this target cannot run, or no such variant."""


@dataclass(frozen=True)
class KernelVariant:
    """One set of micro-kernels (see the module's table). Passed to the compiled drivers, whose
    code is specialised on it at compile time (:class:`VariantType`): nothing is chosen per call.
    """

    name: str
    requires: str  # the instruction set it needs (a :attr:`Target.isa` member; "" for none)
    # tap loop over more than 32 input channels: "vpopcnt", "carrysave", "nibbles" or "bytes"
    wide: str
    narrow: str  # at most 32 input channels: "vpopcnt" or "bytes"
    carrysave_from: int  # carry-save when a row of taps has at least this many words
    description: str


def wide_scheme(variant: KernelVariant, k: int, cin: int) -> str:
    """The tap loop ``variant`` runs on a ``k`` x ``k`` layer over ``cin`` (> 32) input
    channels: ``"vpopcnt"`` (lane popcounts), ``"nibbles"``, ``"bytes"`` or ``"carrysave"``.
    The compiled dispatch (:func:`.taps.wide`) applies the same rule; the weights' layout
    follows it (:func:`.bitpack.kernel_weights`)."""
    row = k * ((cin + 63) // 64)
    if variant.wide in ("vpopcnt", "nibbles"):
        return variant.wide
    if variant.wide == "carrysave" and row >= variant.carrysave_from:
        return "carrysave"
    return "bytes"


VARIANTS: dict[str, KernelVariant] = {
    v.name: v
    for v in (
        KernelVariant(
            "avx512_vpopcntdq", "avx512vpopcntdq", "vpopcnt", "vpopcnt", 0,
            "AVX-512 VPOPCNTDQ: vpopcntq on zmm, 4 positions x 32 channels in registers",
        ),
        KernelVariant(
            "avx512bw", "avx512bw", "carrysave", "bytes", 12,
            "AVX-512BW: carry-save adders and byte popcounts on zmm",
        ),
        KernelVariant(
            "avx2", "avx2", "nibbles", "bytes", 0,
            "AVX2: byte popcounts of nibble-split a ^ w (one vpshufb each) on ymm",
        ),
        KernelVariant(
            "neon", "neon", "bytes", "bytes", 0,
            "NEON: byte popcounts (cnt) summed in bytes",
        ),
        KernelVariant(
            "portable", "", "bytes", "bytes", 0,
            "any CPU: byte popcounts summed in bytes",
        ),
    )
}  # fmt: skip
"""Every variant, best first."""


class VariantType(types.Type):
    """The Numba type of a :class:`KernelVariant`: the drivers are compiled once per variant,
    and its fields are constants to the code that dispatches on them."""

    def __init__(self, variant: KernelVariant) -> None:
        self.variant = variant
        super().__init__(name=f"KernelVariant({variant.name})")


@typeof_impl.register(KernelVariant)
def _typeof_variant(value: KernelVariant, c) -> VariantType:
    return VariantType(value)


register_model(VariantType)(models.OpaqueModel)


@unbox(VariantType)
def _unbox_variant(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


class Target(NamedTuple):
    """The CPU the kernels compile for and the instruction sets its code can use."""

    cpu: str  # LLVM's CPU name
    features: str  # LLVM's feature string ("" for the CPU's own)
    source: str  # "host", or "NUMBA_CPU_NAME" when that variable chose it
    isa: frozenset[str]  # among "avx2", "avx512bw", "avx512vpopcntdq", "neon"


_PROBE = """
define <8 x i64> @probe64(<8 x i64> %x) {
  %r = call <8 x i64> @llvm.ctpop.v8i64(<8 x i64> %x)
  ret <8 x i64> %r
}
define <64 x i8> @probe8(<64 x i8> %x) {
  %r = call <64 x i8> @llvm.ctpop.v64i8(<64 x i8> %x)
  ret <64 x i8> %r
}
declare <8 x i64> @llvm.ctpop.v8i64(<8 x i64>)
declare <64 x i8> @llvm.ctpop.v64i8(<64 x i8>)
"""


def _instructions(asm: str, start: str, stop: str | None) -> list[str]:
    body = asm[asm.index(start) : asm.index(stop) if stop else None]
    return [line.split("#")[0].strip() for line in body.splitlines()]


@functools.cache
def _probe(triple: str, cpu: str, features: str) -> frozenset[str]:
    """The instruction sets LLVM uses for 64-bit and byte popcounts on this target."""
    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    tm = ll.Target.from_triple(triple).create_target_machine(cpu=cpu, features=features, opt=2)
    asm = tm.emit_assembly(ll.parse_assembly(_PROBE))
    p64 = _instructions(asm, "probe64:", "probe8:")
    p8 = _instructions(asm, "probe8:", None)
    isa = set()
    if any(i.startswith("vpopcntq") and "zmm" in i for i in p64):
        isa.add("avx512vpopcntdq")
    if any(i.startswith(("vpshufb", "vpopcntb")) and "zmm" in i for i in p8):
        isa.update(("avx512bw", "avx2"))
    if any(i.startswith(("vpshufb", "vpopcntb")) and "ymm" in i for i in p8):
        isa.add("avx2")
    if triple.startswith(("aarch64", "arm64")) and any(i.startswith("cnt") for i in p8):
        isa.add("neon")
    return frozenset(isa)


def _cpu_and_features() -> tuple[str, str]:
    """The CPU name and feature string Numba compiles for (``NUMBA_CPU_NAME`` and
    ``NUMBA_CPU_FEATURES``, else the host's), as Numba itself chooses them."""
    cpu = config.CPU_NAME or ll.get_host_cpu_name()
    features = config.CPU_FEATURES
    if features is None:
        features = get_host_cpu_features()
    return cpu, features


def target() -> Target:
    """The target Numba compiles for and the instruction sets its code can use."""
    cpu, features = _cpu_and_features()
    source = "NUMBA_CPU_NAME" if config.CPU_NAME else "host"
    return Target(cpu, features, source, _probe(ll.get_process_triple(), cpu, features))


def target_key() -> str:
    """A short name for the compile target, unique per CPU name and feature set (no probe):
    machine code compiled for one target is kept apart from another's (:mod:`.cache`)."""
    cpu, features = _cpu_and_features()
    digest = hashlib.sha256(f"{ll.get_process_triple()}|{features}".encode()).hexdigest()
    return f"{cpu}-{digest[:12]}"


def best(tgt: Target | None = None) -> KernelVariant:
    """The fastest variant the target can run."""
    tgt = tgt or target()
    return next(v for v in VARIANTS.values() if not v.requires or v.requires in tgt.isa)


def _describe(tgt: Target) -> str:
    sets = ", ".join(sorted(tgt.isa)) or "none of avx2, avx512bw, avx512vpopcntdq, neon"
    how = "" if tgt.source == "host" else " (set by NUMBA_CPU_NAME)"
    return f"{tgt.cpu}{how}, whose code can use: {sets}"


def select(name: str | None = None) -> KernelVariant:
    """The variant called ``name``, else the one ``S2BNN_KERNELS`` names, else :func:`best`.
    Raises :class:`UnsupportedVariant` for an unknown name or one the target cannot run."""
    how = "the variant argument"
    if name is None:
        name = os.environ.get(ENV) or None
        how = f"{ENV}={name}"
    if name is None:
        return best()
    tgt = target()
    runnable = [v.name for v in VARIANTS.values() if not v.requires or v.requires in tgt.isa]
    if name not in VARIANTS:
        raise UnsupportedVariant(
            f"{how}: no kernel variant {name!r}; the kernels have {', '.join(VARIANTS)} "
            f"(this CPU runs {', '.join(runnable)}; leave it unset for the fastest)"
        )
    variant = VARIANTS[name]
    if variant.name not in runnable:
        raise UnsupportedVariant(
            f"{how}: kernel variant {name!r} needs {variant.requires}, which this CPU lacks "
            f"({_describe(tgt)}); choose one of {', '.join(runnable)}, or leave it unset"
        )
    return variant
