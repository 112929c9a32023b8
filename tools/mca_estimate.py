"""llvm-mca estimates of the kernel variants' tap loops on CPUs that are not at hand: cycles
and binary MACs per cycle per core, beside each variant's bound.

How: each variant's wide micro-kernel is compiled by Numba on this machine without being run
(:func:`s2bnn_plugin.kernels.assembly.micro_kernel_asm`), in a child process per target:

- x86-64 CPUs: compiled for that CPU (``NUMBA_CPU_NAME=<cpu>``, ``NUMBA_CPU_FEATURES=""``), so an
  AVX-512 variant is compiled on an AVX2 machine;
- aarch64 cores: its optimised LLVM IR from a portable build (``NUMBA_CPU_NAME=generic``, whose
  byte counts are widened by the portable code the aarch64 build uses too), retargeted to
  ``aarch64-linux-gnu`` and compiled by llvmlite's LLVM for the core.

Every basic block that branches back to itself is a tap loop; ``llvm-mca`` (Debian's package
``llvm``) runs each for the same CPU. Its binary MACs per iteration follow from its instructions:
``vpopcntq`` / ``vpopcntd``: one per vector of ``a XOR w``; a byte popcount (two ``vpshufb``)
covers one vector, or four when carry-save adders (``vpor``) feed it, and so do the two lookups
of a nibble count (a loop of ``vpshufb`` without the shift that splits bytes, ``vpsrlw``);
``cnt``: 128 bits. The table gives the fastest loop of each kind (``vpopcnt``, ``carrysave``,
``nibbles``, ``bytes``): a static
estimate of the loop on data in L1, without the border taps, the reductions between blocks and
the epilogue.

Run: ``python tools/mca_estimate.py`` (a few minutes: one compile per CPU) or
``python tools/mca_estimate.py --only neon avx2``; ``--cpu`` replaces the default CPUs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from s2bnn_plugin.bench.bounds import bound  # noqa: E402

TRIPLE = "aarch64-unknown-linux-gnu"
CPUS = {
    "avx512_vpopcntdq": ["icelake-server", "sapphirerapids", "znver4"],
    "avx512bw": ["skylake-avx512", "cascadelake"],
    "avx2": ["znver3", "haswell", "skylake"],
    "neon": ["neoverse-n1", "cortex-a76"],
}

_CHILD = """
import sys
from s2bnn_plugin.kernels import VARIANTS
from s2bnn_plugin.kernels.assembly import micro_kernel_asm, micro_kernel_llvm
variant = VARIANTS[sys.argv[1]]
print(micro_kernel_llvm(variant) if sys.argv[2] == "llvm" else micro_kernel_asm(variant))
"""


def compiled(variant: str, cpu: str, what: str) -> str:
    """The micro-kernel of ``variant`` compiled for ``cpu`` (``generic`` for the IR), from a
    child process with a cache folder of its own."""
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES="")
    env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="mca-estimate-")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, variant, what],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    shutil.rmtree(env["NUMBA_CACHE_DIR"], ignore_errors=True)
    return done.stdout


def aarch64_asm(ir: str, cpu: str) -> str:
    """``ir`` (an x86 build's) compiled for an aarch64 core: its triple replaced, x86's data
    layout and CPU attributes dropped."""
    import llvmlite.binding as ll

    ir = re.sub(r'^target triple = ".*"$', f'target triple = "{TRIPLE}"', ir, flags=re.M)
    ir = re.sub(r'^target datalayout = ".*"$', "", ir, flags=re.M)
    ir = re.sub(r'"target-(cpu|features)"="[^"]*"', "", ir)
    ll.initialize_all_targets()
    ll.initialize_all_asmprinters()
    tm = ll.Target.from_triple(TRIPLE).create_target_machine(cpu=cpu, features="", opt=3)
    module = ll.parse_assembly(ir)
    module.triple = TRIPLE
    module.data_layout = str(tm.target_data)
    return tm.emit_assembly(module)


def loops(asm: str, comment: str) -> list[list[str]]:
    """The instructions of every block that branches back to itself (up to that branch)."""
    blocks: dict[str, list[str]] = {}
    label = None
    for line in asm.splitlines():
        m = re.match(r"^(\.?\w+):", line)
        if m:
            label = m.group(1)
            blocks[label] = []
            continue
        text = line.split(comment)[0].strip()
        if label and text and not text.startswith("."):
            blocks[label].append(text)
    out = []
    for name, ins in blocks.items():
        back = [j for j, i in enumerate(ins) if i.split()[-1] == name and i[0] in "bj"]
        if back:
            out.append(ins[: back[0] + 1])
    return out


def _count(loop: list[str], op: str) -> int:
    return sum(1 for i in loop if i.split()[0] == op)


def kind_and_bits(loop: list[str]) -> tuple[str, int] | None:
    """The loop's kind and the bits of ``a XOR w`` it counts per iteration (None: not a tap
    loop)."""
    width = 512 if any("zmm" in i for i in loop) else 256
    popcnts = [i for i in loop if i.startswith(("vpopcntq", "vpopcntd"))]
    if popcnts:
        return "vpopcnt", len(popcnts) * width
    cnt = _count(loop, "cnt")
    if cnt:
        return "bytes", cnt * 128
    shuffles = _count(loop, "vpshufb")
    if shuffles < 2:
        return None
    if _count(loop, "vpor") or _count(loop, "vpternlogq") or _count(loop, "vpternlogd"):
        return "carrysave", shuffles // 2 * 4 * width
    return "nibbles" if not _count(loop, "vpsrlw") else "bytes", shuffles // 2 * width


class UnknownCPU(Exception):
    """A CPU this llvm-mca has no scheduling model of (an older LLVM than the CPU)."""


def mca_cycles(loop: list[str], cpu: str, triple: str | None, iterations: int = 200) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".s", delete=False) as f:
        f.write("\n".join(loop) + "\n")
    args = ["llvm-mca", f"-mcpu={cpu}", f"-iterations={iterations}", f.name]
    if triple:
        args.insert(1, f"-mtriple={triple}")
    done = subprocess.run(args, capture_output=True, text=True)
    Path(f.name).unlink()
    if done.returncode:
        raise UnknownCPU(done.stderr.strip().splitlines()[0] if done.stderr.strip() else cpu)
    return int(re.search(r"Total Cycles:\s+(\d+)", done.stdout).group(1)) / iterations


def estimate(variant: str, cpu: str) -> list[tuple[str, int, int, float]]:
    """(kind, instructions, bits, cycles) of the fastest loop of each kind."""
    if variant == "neon":
        asm, comment, triple = aarch64_asm(compiled(variant, "generic", "llvm"), cpu), "//", TRIPLE
    else:
        asm, comment, triple = compiled(variant, cpu, "asm"), "#", None
    best: dict[str, tuple[str, int, int, float]] = {}
    for loop in loops(asm, comment):
        found = kind_and_bits(loop)
        if found is None:
            continue
        kind, bits = found
        cycles = mca_cycles(loop, cpu, triple)
        if kind not in best or bits / cycles > best[kind][2] / best[kind][3]:
            best[kind] = (kind, len(loop), bits, cycles)
    return sorted(best.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(CPUS), help="variants (default: all)")
    p.add_argument("--cpu", nargs="+", help="LLVM CPU names instead of each variant's defaults")
    args = p.parse_args(argv)
    if shutil.which("llvm-mca") is None:
        print("llvm-mca not found: apt-get install llvm", file=sys.stderr)
        return 2
    version = subprocess.run(["llvm-mca", "--version"], capture_output=True, text=True).stdout
    print(" ".join(version.split()[:4]) + "\n")
    print(
        "| variant | CPU | loop | instructions | bits per iteration | cycles per iteration | "
        "cycles per 512 binary MACs | binary MACs per cycle | bound | share of the bound |"
    )
    print("|---|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for variant in args.only or list(CPUS):
        for cpu in args.cpu or CPUS[variant]:
            ceiling = bound(variant, cpu)
            try:
                rows = estimate(variant, cpu)
            except UnknownCPU:
                print(f"| {variant} | {cpu} | not modelled by this llvm-mca | | | | | | | |")
                continue
            for kind, n, bits, cycles in rows:
                rate = bits / cycles
                limit = f"{ceiling.macs_per_cycle:.0f}" if ceiling else ""
                share = f"{100 * rate / ceiling.macs_per_cycle:.0f} %" if ceiling else ""
                print(
                    f"| {variant} | {cpu} | {kind} | {n} | {bits} | {cycles:.1f} | "
                    f"{cycles * 512 / bits:.2f} | {rate:.0f} | {limit} | {share} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
