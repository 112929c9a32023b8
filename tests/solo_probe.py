"""Run one of solo-learn's scripts unchanged, with a test callback added to its Trainer.

Usage (tests only): ``S2BNN_PROBE_SCRIPT=/path/main_pretrain.py python solo_probe.py <hydra
overrides>``. Lightning's DDP launcher re-runs ``sys.argv[0]`` (this file), so every rank
runs the wrapper.

- ``S2BNN_PROBE_OUT=DIR``: at the end of training each rank writes ``DIR/rank<r>.pt`` (its
  student's state dict, the logged metrics, which parameters DDP synchronises).
  The record also holds ``lrs``: (epoch, global step, lr, initial lr) of each optimiser
  parameter group, taken before every training batch.
- ``S2BNN_PROBE_NO_RNG_RESTORE=1``: resume without restoring the random states (stock behaviour).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer


class Probe(Callback):
    def __init__(self) -> None:
        self.lrs: list[tuple[int, int, list[float], list[float]]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        groups = trainer.optimizers[0].param_groups
        self.lrs.append(
            (
                trainer.current_epoch,
                trainer.global_step,
                [g["lr"] for g in groups],
                [g.get("initial_lr", g["lr"]) for g in groups],
            )
        )

    def on_train_end(self, trainer, module) -> None:
        out = os.environ.get("S2BNN_PROBE_OUT")
        if not out:
            return
        wrapped = trainer.strategy.model
        synced = {id(p) for p in wrapped.parameters()}
        teacher = getattr(module, "teacher", None)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "wrapper": type(wrapped).__name__,
            "state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
            "metrics": {k: v.detach().clone() for k, v in trainer.callback_metrics.items()},
            "synced_parameters": [n for n, p in module.named_parameters() if id(p) in synced],
            "teacher_parameters_synced": sum(
                id(p) in synced for p in (teacher.parameters() if teacher is not None else [])
            ),
            "teacher_parameters": sum(1 for _ in teacher.parameters()) if teacher else 0,
            "lrs": self.lrs,
        }
        torch.save(record, Path(out) / f"rank{trainer.global_rank}.pt")


def main() -> None:
    if os.environ.get("S2BNN_PROBE_NO_RNG_RESTORE"):
        from s2bnn_plugin.methods import rng_state

        rng_state.restore = lambda state: None

    init = Trainer.__init__

    @functools.wraps(init)  # main_pretrain.py keeps only the arguments in its signature
    def with_probe(self, *args, callbacks=None, **kwargs):
        init(self, *args, callbacks=[*(callbacks or []), Probe()], **kwargs)

    Trainer.__init__ = with_probe
    script = os.environ["S2BNN_PROBE_SCRIPT"]
    sys.path.insert(0, str(Path(script).parent))
    # not runpy.run_path: it sets sys.argv[0] to the script, and Lightning's DDP launcher would
    # then start the other ranks without this wrapper
    code = compile(Path(script).read_text(), script, "exec")
    exec(code, {"__name__": "__main__", "__file__": script})


if __name__ == "__main__":
    main()
