"""``s2bnn bench``: a typed function the command line only parses arguments for; it prints a
speed table of a random-weight backbone, packed, against PyTorch fp32.

User errors (an unknown backbone, numbers out of range) are raised as
:class:`~s2bnn_plugin.errors.S2BNNError` subclasses.
"""

from __future__ import annotations

from s2bnn_plugin.arguments import (
    BATCH_RANGE,
    MAX_WIDTH_MULT,
    REPEATS_RANGE,
    SIZE_RANGE,
    float_arg,
    int_arg,
    threads_arg,
)
from s2bnn_plugin.errors import UsageError
from s2bnn_plugin.memory import require_memory

__all__ = ["bench"]


def bench(
    backbone: str = "reactnet_a",
    *,
    width_mult: float = 1.0,
    size: int = 224,
    batches: tuple[int, ...] = (1, 32),
    threads: tuple[int, ...] = (1, 2),
    repeats: int = 3,
    layers: bool = False,
    progress: bool = True,
) -> None:
    """``s2bnn bench``: end-to-end (and per-layer) speed table on a random-weight model."""
    width_mult = float_arg("--width-mult", width_mult, 0.0, MAX_WIDTH_MULT, open_low=True)
    size = int_arg("--size", size, *SIZE_RANGE)
    if not batches or not threads:
        raise UsageError("--batch and --threads need at least one value each")
    batches = tuple(int_arg("--batch", b, *BATCH_RANGE) for b in batches)
    threads = tuple(threads_arg(t) for t in threads)
    repeats = int_arg("--repeats", repeats, *REPEATS_RANGE)
    from tqdm.auto import tqdm

    from s2bnn_plugin.backbones import backbone_bytes, create_backbone
    from s2bnn_plugin.bench.tables import layer_table, markdown_table
    from s2bnn_plugin.bench.timing import comparison_bytes, end_to_end, layer_timings
    from s2bnn_plugin.packing.packer import pack_model
    from s2bnn_plugin.packing.report import file_sizes

    # an unknown name or a bad setting: a BackboneError (S2BNNError), its message as it is
    cost = backbone_bytes(backbone, width_mult=width_mult)
    require_memory(cost, f"--width-mult {width_mult}: the backbone {backbone}")
    model = create_backbone(backbone, width_mult=width_mult).eval()
    net = pack_model(model)
    require_memory(
        comparison_bytes(net, size, max(batches)),
        f"timing --batch {max(batches)} images of --size {size} px",
    )
    jobs = [(b, t) for t in threads for b in batches]
    rows = []
    for batch, n_threads in tqdm(jobs, desc="bench", disable=not progress):
        t = end_to_end(model, net, size, batch, n_threads, repeats)
        ms = (f"{t.torch_s * 1e3:.1f}", f"{t.packed_s * 1e3:.2f}", f"{t.speedup:.1f}x")
        rows.append([f"{backbone} {size} px", batch, n_threads, *ms])
    print(
        markdown_table(
            ["model", "batch", "threads", "PyTorch fp32 ms", "packed ms", "speedup"], rows
        )
    )
    if layers:
        timings = [r for t in threads for r in layer_timings(net, size, t, repeats)]
        print()
        print(layer_table(timings))
    packed, fp32 = file_sizes(net, model)
    print(
        f"\nfile: {packed / 1e6:.3f} MB packed vs {fp32 / 1e6:.3f} MB fp32 state dict "
        f"(1/{fp32 / packed:.1f})"
    )
