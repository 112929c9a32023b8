"""``s2bnn check`` and ``s2bnn pack``: typed functions the command line only parses arguments
for. Both pass a packed network only when its features agree with the float model's
(:mod:`.agreement`): ``check`` reads a packed file and also reports its size and speed;
``pack`` packs a checkpoint and writes nothing when the packed network disagrees.

Each prints its report; user errors (missing or unreadable files, an unknown backbone, a model
that cannot be packed, numbers out of range, an existing output, features that disagree with
the float model) are raised as :class:`~s2bnn_plugin.errors.S2BNNError` subclasses.
"""

from __future__ import annotations

import json
import os
from typing import Any

from s2bnn_plugin.arguments import (
    BATCH_RANGE,
    REPEATS_RANGE,
    SIZE_RANGE,
    int_arg,
    threads_arg,
)
from s2bnn_plugin.check.agreement import (
    MAX_FLIPPED,
    MIN_COSINE,
    MIN_IMAGES,
    Agreement,
    agreement,
    bounds_args,
    require_agreement,
)
from s2bnn_plugin.files import check_output
from s2bnn_plugin.memory import require_memory

__all__ = ["check", "pack_checkpoint"]


def check(
    file: str | os.PathLike[str],
    *,
    ckpt: str | os.PathLike[str] | None = None,
    backbone: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    size: int = 224,
    batch: int = 8,
    threads: int = 1,
    repeats: int = 3,
    min_cosine: float = MIN_COSINE,
    max_flipped: float = MAX_FLIPPED,
    verbose: bool = False,
    progress: bool = True,
) -> Agreement:
    """``s2bnn check FILE [--ckpt CKPT]``: agreement, file size, speed; returns the agreement
    figures.

    The agreement compares ``max(batch, MIN_IMAGES)`` random images (``batch`` is what the
    speed is timed on): one image cannot tell a correct packing from a wrong student. Raises
    :class:`AgreementError` (exit code 2 from ``s2bnn``) after printing the agreement when any
    image's features have a cosine similarity below ``min_cosine`` with the float model's, or
    more than ``max_flipped`` of the images have a flipped sign bit. Sign flips near a
    threshold are expected of a correct packing (float rounding differs); the defaults pass
    those with a wide margin and fail another network's weights, or one layer of them, at every
    batch size."""
    size = int_arg("--size", size, *SIZE_RANGE)
    batch = int_arg("--batch", batch, *BATCH_RANGE)
    threads = threads_arg(threads)
    repeats = int_arg("--repeats", repeats, *REPEATS_RANGE)
    min_cosine, max_flipped = bounds_args(min_cosine, max_flipped)
    from tqdm.auto import tqdm

    from s2bnn_plugin.bench.tables import markdown_table
    from s2bnn_plugin.bench.timing import comparison_bytes, end_to_end
    from s2bnn_plugin.checkpoints import load_backbone, require_backbone
    from s2bnn_plugin.packing import float_twin
    from s2bnn_plugin.packing.report import file_sizes
    from s2bnn_plugin.runtime import load

    net = load(file)
    require_memory(
        comparison_bytes(net, size, max(batch, MIN_IMAGES)),
        f"checking {file} on --batch {batch} random images of --size {size} px"
        if batch >= MIN_IMAGES
        else f"checking {file} on {MIN_IMAGES} random images (the fewest the agreement compares) "
        f"of --size {size} px",
    )
    if ckpt:
        model, _, _ = load_backbone(ckpt, backbone, backbone_kwargs)
        require_backbone(model, ckpt, net.backbone, net.backbone_kwargs)
        reference = f"the float model of {ckpt}"
    else:
        model = float_twin(net)
        reference = "the float twin rebuilt from the file (no --ckpt given)"
    print(f"{file}: {net!r}")
    if verbose:
        print(net.describe())
    with tqdm(total=3, desc="check", disable=not progress) as bar:
        bar.set_postfix_str("agreement")
        agree = agreement(model, net, size, batch)
        bar.update()
        # above the bar, which stays for the stages that follow
        tqdm.write(f"agreement with {reference}, {agree.images} random images at {size} px:")
        tqdm.write(f"  {agree.summary()}")
        require_agreement(agree, f"{file}", reference, min_cosine, max_flipped)
        bar.set_postfix_str("sizes")
        packed, fp32 = file_sizes(net, model)
        bar.update()
        bar.set_postfix_str("speed")
        timing = end_to_end(model, net, size, batch, threads, repeats)
        bar.update()
    rows = [
        [
            "file size",
            f"{packed / 1e6:.3f} MB",
            f"{fp32 / 1e6:.3f} MB (fp32 state dict)",
            f"1/{fp32 / packed:.1f}",
        ],
        [
            f"batch {batch}, {threads} thread(s)",
            f"{timing.packed_s * 1e3:.2f} ms",
            f"{timing.torch_s * 1e3:.2f} ms (PyTorch fp32)",
            f"{timing.speedup:.1f}x",
        ],
    ]
    print(markdown_table(["", "packed", "float", "ratio"], rows))
    return agree


def pack_checkpoint(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    force: bool = False,
    backbone: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    check_size: int = 64,
    min_cosine: float = MIN_COSINE,
    max_flipped: float = MAX_FLIPPED,
    progress: bool = True,
) -> Agreement:
    """``s2bnn pack CKPT -o FILE``: load, pack, check against the float model, save.

    The output path is checked before anything is loaded (:func:`s2bnn_plugin.files.
    check_output`: exists without ``force``, a folder, a missing or read-only folder, a name
    too long, the checkpoint itself); the file is then created exclusively (unless ``force``)
    and atomically.

    Nothing is written when the model cannot be packed (including NaN or infinite weights or
    statistics) or when the packed network's features on :data:`MIN_IMAGES` random images
    disagree with the float model's beyond ``min_cosine`` / ``max_flipped`` (see
    :func:`check`):
    :class:`AgreementError`. Returns the agreement figures."""
    check_size = int_arg("--check-size", check_size, *SIZE_RANGE)
    min_cosine, max_flipped = bounds_args(min_cosine, max_flipped)
    from tqdm.auto import tqdm

    from s2bnn_plugin.bench.timing import comparison_bytes
    from s2bnn_plugin.checkpoints import load_backbone
    from s2bnn_plugin.packing.packer import pack_model

    out = check_output(output, force=force, option="-o", inputs=[checkpoint])
    with tqdm(total=3, desc="pack", disable=not progress) as bar:
        bar.set_postfix_str("loading checkpoint")
        model, name, kwargs = load_backbone(checkpoint, backbone, backbone_kwargs)
        bar.update()
        bar.set_postfix_str("packing")
        net = pack_model(model, progress=progress)
        bar.update()
        require_memory(
            comparison_bytes(net, check_size, MIN_IMAGES),
            f"checking the packed network on {MIN_IMAGES} random images of --check-size "
            f"{check_size} px",
        )
        bar.set_postfix_str("checking against the float model")
        agree = agreement(model, net, check_size, MIN_IMAGES)
        bar.update()
    require_agreement(
        agree,
        f"the packed network ({check_size} px, {agree.images} random images; nothing written)",
        f"the float model of {checkpoint}",
        min_cosine,
        max_flipped,
    )
    net.save(out, force=force)
    from s2bnn_plugin.packing.report import file_sizes

    packed, fp32 = file_sizes(net, model)
    print(f"{name}({json.dumps(kwargs)}) -> {out}")
    print(f"  {len(net.model.units)} binary units, {net.num_features}-d features")
    print(
        f"  size: {packed / 1e6:.3f} MB packed vs {fp32 / 1e6:.3f} MB fp32 state dict "
        f"(1/{fp32 / packed:.1f})"
    )
    print(
        f"  features vs the float model ({check_size} px, {agree.images} images): max |diff| "
        f"{agree.max_abs:.2e} (feature scale {agree.feature_scale:.2e}), lowest cosine "
        f"similarity {agree.min_cosine:.6f}"
    )
    return agree
