"""An llvm-mca estimate of the NEON kernel variant's tap loop on aarch64 cores, where no hardware
is at hand: cycles per 512 binary MACs for each core, beside the NEON bound.

How: the ``neon`` variant's wide micro-kernel is compiled by Numba on this machine for a target
without x86 SIMD (``NUMBA_CPU_NAME=generic``, so that its byte counts are widened by the portable
code the aarch64 build uses too), its optimised LLVM IR retargeted to ``aarch64-linux-gnu`` and
compiled by LLVM (llvmlite's) for each core, and ``llvm-mca`` (Debian's package ``llvm``) runs the
byte-count loop: the basic block that loops on itself with the most ``cnt`` instructions, one
``cnt`` per 128 bits of ``a XOR w``.

Run: ``python tools/neon_estimate.py [--cpu neoverse-n1 cortex-a76 ...]`` (a minute: one compile).
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

TRIPLE = "aarch64-unknown-linux-gnu"
BOUND = 2 * 128 / 3  # per 128 bits eor, cnt, add on 2 ASIMD pipes (s2bnn_plugin.bench.bounds)

_IR = """
from s2bnn_plugin.kernels import VARIANTS
from s2bnn_plugin.kernels.assembly import micro_kernel_llvm
print(micro_kernel_llvm(VARIANTS["neon"]))
"""


def neon_ir() -> str:
    """The NEON variant's micro-kernel as LLVM IR, from a portable compile in a child process."""
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CPU_FEATURES="")
    env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="neon-estimate-")
    done = subprocess.run(
        [sys.executable, "-c", _IR], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def retarget(ir: str) -> str:
    """The IR for aarch64: its triple replaced, x86's data layout and CPU attributes dropped."""
    ir = re.sub(r'^target triple = ".*"$', f'target triple = "{TRIPLE}"', ir, flags=re.M)
    ir = re.sub(r'^target datalayout = ".*"$', "", ir, flags=re.M)
    return re.sub(r'"target-(cpu|features)"="[^"]*"', "", ir)


def aarch64_asm(ir: str, cpu: str) -> str:
    import llvmlite.binding as ll

    ll.initialize_all_targets()
    ll.initialize_all_asmprinters()
    tm = ll.Target.from_triple(TRIPLE).create_target_machine(cpu=cpu, features="", opt=3)
    module = ll.parse_assembly(ir)
    module.triple = TRIPLE
    module.data_layout = str(tm.target_data)
    return tm.emit_assembly(module)


def hot_loop(asm: str) -> list[str]:
    """The instructions of the block that branches back to itself with the most ``cnt``s."""
    blocks: dict[str, list[str]] = {}
    label = None
    for line in asm.splitlines():
        m = re.match(r"^(\.?\w+):", line)
        if m:
            label = m.group(1)
            blocks[label] = []
            continue
        text = line.split("//")[0].strip()
        if label and text and not text.startswith("."):
            blocks[label].append(text)
    loops = []
    for name, ins in blocks.items():
        back = [j for j, i in enumerate(ins) if i.startswith("b") and i.split()[-1] == name]
        if back:  # the block up to its branch back to itself (the rest falls through)
            loops.append(ins[: back[0] + 1])
    return max(loops, key=lambda ins: sum(i.startswith("cnt") for i in ins))


def mca_cycles(loop: list[str], cpu: str, iterations: int = 200) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".s", delete=False) as f:
        f.write("\n".join(loop) + "\n")
    out = subprocess.run(
        ["llvm-mca", f"-mtriple={TRIPLE}", f"-mcpu={cpu}", f"-iterations={iterations}", f.name],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    Path(f.name).unlink()
    return int(re.search(r"Total Cycles:\s+(\d+)", out).group(1)) / iterations


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", nargs="+", default=["neoverse-n1", "cortex-a76"])
    args = p.parse_args(argv)
    if shutil.which("llvm-mca") is None:
        print("llvm-mca not found: apt-get install llvm", file=sys.stderr)
        return 2
    ir = retarget(neon_ir())
    print("| core | loop instructions | cnt per iteration | cycles per iteration | cycles per "
          "512 binary MACs | binary MACs per cycle | NEON bound |")  # fmt: skip
    print("|---|--:|--:|--:|--:|--:|--:|")
    for cpu in args.cpu:
        loop = hot_loop(aarch64_asm(ir, cpu))
        cnts = sum(i.startswith("cnt") for i in loop)
        cycles = mca_cycles(loop, cpu)
        macs = cnts * 128
        print(f"| {cpu} | {len(loop)} | {cnts} | {cycles:.1f} | {cycles * 512 / macs:.2f} | "
              f"{macs / cycles:.0f} | {BOUND:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
