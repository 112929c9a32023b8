"""How many binary multiply-accumulates a core can do per cycle with each kernel variant's
instruction set: the ceiling the benchmark's per-layer rates are read against.

Each bound is the steady state of the best scheme for that instruction set (the one its variant
runs, :mod:`s2bnn_plugin.kernels.variants`): vector operations per bits of ``a XOR w``, divided
among the vector pipes that can run them, loads and loop overhead not counted (they use other
ports). Arithmetic, not measurements; the derivation is printed with every table.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Bound", "bound"]


@dataclass(frozen=True)
class Bound:
    """Binary MACs per cycle per core, and how that number comes about."""

    macs_per_cycle: float
    derivation: str


def _nibbles_avx2(amd: bool) -> Bound:
    ops = 2 + 2 + 2  # per 256 bits: 2 vpxor, 2 vpshufb, 2 vpaddb (low and high nibbles)
    if amd:
        pipes, where = 4, "Zen's 4 vector ALU pipes (vpshufb on 2 of them: not binding)"
    else:
        pipes = 3
        where = (
            "Intel Haswell-Skylake's 3 vector ALU ports (the 2 vpshufb on port 5 alone: as binding)"
        )
    return Bound(
        256 * pipes / ops,
        f"nibble counts per 256 bits: 2 vpxor + 2 vpshufb + 2 vpaddb = {ops} vector ops on {where}",
    )


def bound(variant: str, cpu: str) -> Bound | None:
    """The bound of ``variant`` on a core of LLVM's CPU name ``cpu`` (None: no bound known,
    the portable variant)."""
    amd = cpu.startswith("znver")
    if variant == "avx512_vpopcntdq":
        return Bound(
            2 * 512 / 3,
            "per 512 bits: vpxorq, vpopcntq, vpaddq = 3 vector ops; 2 x 512-bit vector ops per "
            "cycle (Ice Lake and Sapphire Rapids ports 0 and 5; Zen 4/5's four 256-bit pipes)",
        )
    if variant == "avx512bw":
        ops = 4 + 3 * 2 + 6 + 1  # xors, 3 adders of 2 vpternlogq, byte popcount, byte add
        return Bound(
            4 * 512 * 2 / ops,
            f"carry-save over 4 x 512 bits: 4 vpxorq + 3 adders x 2 vpternlogq + a byte popcount "
            f"of the fours (6) + vpaddb = {ops} ops on 2 x 512-bit ports (Skylake-SP, Cascade "
            "Lake: ports 0 and 5, vpshufb on port 5: 2 of them, not binding)",
        )
    if variant == "avx2":
        return _nibbles_avx2(amd)
    if variant == "neon":
        return Bound(
            2 * 128 / 3,
            "per 128 bits: eor, cnt, add = 3 ops on 2 ASIMD pipes (Neoverse N1, Cortex-A76)",
        )
    return None
