"""``s2bnn check``'s agreement bounds fail a wrong student at every batch size it accepts, and
pass a correct packing at each.

The hardest wrong student measured (tools/check_bounds.py, docs/cpu-engine.md): a student one
of whose binary layers has another seed's weights. On some layers its features keep a cosine
similarity of 0.998 with the float model's on every image, above what correct packings reach
on their rare flipped images, so no per-image bound can fail it on one image; it differs on
every image, which a correct packing never does (0-19 % of the images up to 224 px). With one
image per batch, the check compared one image and passed it (the flip bound always allowed
one); it now compares at least ``MIN_IMAGES`` whatever batch it times.
"""

from __future__ import annotations

import copy

import pytest
import torch
from pack_utils import solo_checkpoint
from test_export import CASES, trained_like

from s2bnn_plugin.check.agreement import MIN_IMAGES, AgreementError
from s2bnn_plugin.check.commands import check
from s2bnn_plugin.packing import pack

SIZE = 32
DEFAULT_BATCH = 8  # s2bnn check's --batch default
SWAPPED = "blocks.0.conv3x3"  # the hardest layer to catch for this model (tools/check_bounds.py)


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    """The float checkpoint of one student, and packed files: its own, another seed's, and its
    own with one binary layer from the other seed."""
    folder = tmp_path_factory.mktemp("students")
    name, kwargs, _ = CASES["a_cifar"]
    mine, other = trained_like(name, kwargs, seed=0), trained_like(name, kwargs, seed=1)
    hybrid = copy.deepcopy(mine)
    with torch.no_grad():
        hybrid.get_submodule(SWAPPED).conv.weight.copy_(other.get_submodule(SWAPPED).conv.weight)
    return {
        "ckpt": solo_checkpoint(folder, mine, name, kwargs),
        "correct": pack(mine).save(folder / "correct.s2bnn"),
        "another seed": pack(other).save(folder / "other.s2bnn"),
        "one layer swapped": pack(hybrid).save(folder / "hybrid.s2bnn"),
    }


def _check(students, which, batch):
    return check(
        students[which], ckpt=students["ckpt"], size=SIZE, batch=batch, repeats=1, progress=False
    )


@pytest.mark.parametrize("batch", [1, DEFAULT_BATCH])
@pytest.mark.parametrize("which", ["another seed", "one layer swapped"])
def test_a_wrong_student_fails_at_batch_1_as_at_the_default(students, which, batch):
    with pytest.raises(AgreementError, match=rf"{MIN_IMAGES} of {MIN_IMAGES} images \(100 %\)"):
        _check(students, which, batch)


def test_the_swapped_layer_is_one_no_per_image_bound_could_fail(students):
    """Why the check needs a sample: the swapped student's features are close on every image
    (cosine above 0.99), yet differ on every one."""
    with pytest.raises(AgreementError) as info:
        _check(students, "one layer swapped", 1)
    assert "--min-cosine" not in str(info.value)  # the per-image bound passes it


@pytest.mark.parametrize("batch", [1, DEFAULT_BATCH])
def test_a_correct_packing_passes_at_batch_1_as_at_the_default(students, batch):
    agree = _check(students, "correct", batch)
    assert agree.images == max(batch, MIN_IMAGES) and agree.images_with_a_flip == 0
    assert agree.min_cosine > 0.9999
