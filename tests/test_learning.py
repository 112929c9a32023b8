"""Does distillation train the student? And does the packed engine agree with PyTorch on the
student it trained?

Real structured data (Fashion-MNIST from Debian's package, 16 px; images with class structure
made here when it is absent), a teacher trained here (a small torchvision ResNet, supervised,
fixed afterwards), and a binary ``reactnet18`` student trained by ``method=s2bnn`` through
Lightning's loop and solo-learn's ``BaseMethod`` (4 epochs of 12 steps, one CPU thread).
The margins are several times the run-to-run noise measured when they were set (see
docs/testing.md, "The claims a reviewer would ask about").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from s2bnn_plugin.methods.distillation import calibration_stats, distillation_loss

pytestmark = pytest.mark.solo  # the fixtures take about 15 s; the rest is marked slow

SIZE = 16
TRAIN_PER_CLASS = 40  # 400 training images
VAL_PER_CLASS = 60  # 600 held-out images
EPOCHS = 4
BATCH = 32
STUDENT = {"cifar": True, "width_mult": 0.125}
TEMPERATURE = 0.2


def _structured(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fallback data with class structure: class c is a bar at angle 18c degrees plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:28j, -1:1:28j]
    images, labels = [], []
    for c in range(10):
        angle = np.pi * c / 10
        bar = np.exp(-(((xx * np.sin(angle) - yy * np.cos(angle)) / 0.25) ** 2))
        for _ in range(n_per_class):
            img = bar * rng.uniform(0.6, 1.0) + rng.normal(0, 0.15, bar.shape)
            images.append(np.clip(img * 255, 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.asarray(labels)


def _load(split: str, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    from s2bnn_plugin.data import FashionMNISTNotFound, load_fashion_mnist, subsample_per_class

    try:
        images, labels = load_fashion_mnist(split)
        keep = subsample_per_class(labels, per_class, seed)
        images, labels, source = images[keep], labels[keep], "fashion-mnist"
    except FashionMNISTNotFound:
        images, labels = _structured(per_class, seed)
        source = "synthetic"
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.25).expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(labels).long(), source


class Crops(torch.utils.data.Dataset):
    """Two views per image (random flip and shift by up to 2 px), solo-learn's batch format."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def _view(self, img: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        dy, dx = torch.randint(-2, 3, (2,)).tolist()
        return img.roll((dy, dx), dims=(1, 2))

    def __getitem__(self, i: int):
        return i, [self._view(self.x[i]), self._view(self.x[i])], self.y[i]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    train_x, train_y, source = _load("train", TRAIN_PER_CLASS, seed=0)
    val_x, val_y, _ = _load("test", VAL_PER_CLASS, seed=1)
    return {"train": (train_x, train_y), "val": (val_x, val_y), "source": source}


@pytest.fixture(scope="module")
def teacher_ckpt(data, tmp_path_factory) -> Path:
    """A small ResNet (one block per stage, 7x7 stem) trained supervised for 15 epochs on the
    training images; its 10 logits are the prediction the student learns to match. Saved as a
    plain torchvision state dict (format ``torchvision``)."""
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1, 1])
    model.fc = nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 10))
    x, y = data["train"]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(15):
        for idx in torch.randperm(len(x), generator=g).split(BATCH):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        val_x, val_y = data["val"]
        accuracy = (model(val_x).argmax(1) == val_y).float().mean().item()
    print(f"\nteacher ({data['source']}): held-out top-1 {100 * accuracy:.1f} %")
    assert accuracy > 0.5, "the teacher did not learn; the student's test would mean nothing"
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save(model.state_dict(), path)
    return path


class History:
    """Epoch means of what the method logged, one dict per epoch."""

    def __init__(self) -> None:
        from lightning.pytorch import Callback

        epochs: list[dict[str, float]] = []
        self.epochs = epochs

        class Record(Callback):
            def on_train_epoch_end(self, trainer, _module):
                metrics = trainer.callback_metrics
                epochs.append({k: float(v) for k, v in metrics.items() if k.endswith("_epoch")})

        self.callback = Record()


def _held_out(model, data) -> dict[str, float]:
    """Distillation loss and top-1 agreement with the teacher on the held-out images (eval)."""
    x, _ = data["val"]
    model.eval()
    with torch.no_grad():
        prediction = model.distill_head(model.backbone(x))
        target = model.teacher(x)
        stats = calibration_stats(prediction, target, TEMPERATURE)
        loss = distillation_loss(prediction, target, TEMPERATURE)
    model.train()
    return {"loss": loss.item(), "agreement": stats.agreement.item()}


def _train(data, teacher_ckpt, ssl_method: str, out: Path):
    """method=s2bnn through Lightning with solo-learn's Checkpointer (a .ckpt + args.json)."""
    from lightning.pytorch import Trainer, seed_everything
    from solo.utils.checkpointer import Checkpointer
    from solo_utils import base_cfg

    from s2bnn_plugin.solo import register

    register()
    import solo.methods

    seed_everything(0)
    mk = {
        "teacher": {"ckpt": str(teacher_ckpt), "format": "torchvision"},
        "ssl_method": ssl_method,
        "head_hidden_dim": 64,
        "temperature": TEMPERATURE,
    }
    if ssl_method != "none":  # nothing reads ssl_kwargs without an objective: refused
        mk["ssl_kwargs"] = {"proj_hidden_dim": 64, "proj_output_dim": 32, "temperature": 0.2}
    cfg = base_cfg("s2bnn", "reactnet18", STUDENT, mk, batch_size=BATCH, num_classes=10)
    cfg.optimizer.lr = 2e-3
    cfg.augmentations = [{"crop_size": SIZE}]
    model = solo.methods.METHODS["s2bnn"](cfg)
    before = {
        "held_out": _held_out(model, data),
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
        "teacher": {k: v.clone() for k, v in model.teacher.state_dict().items()},
    }
    history = History()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Checkpointer(cfg, logdir=out), history.callback],
    )
    loader = torch.utils.data.DataLoader(
        Crops(*data["train"]), batch_size=BATCH, shuffle=True, drop_last=True
    )
    trainer.fit(model, loader)
    assert trainer.global_step == EPOCHS * (len(data["train"][0]) // BATCH)
    return model, before, history.epochs, trainer


@pytest.fixture(scope="module")
def distilled(data, teacher_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("distilled")
    model, before, epochs, trainer = _train(data, teacher_ckpt, "none", out)
    return {"model": model, "before": before, "epochs": epochs, "out": out, "trainer": trainer}


def test_distillation_trains_the_student(distilled, data):
    """Held-out distillation loss falls and top-1 agreement with the teacher rises by stated
    margins; the epoch-mean training loss falls every epoch; every student parameter moved
    (buffers are not counted); the teacher's weights and statistics are as loaded."""
    model, before = distilled["model"], distilled["before"]
    start, end = before["held_out"], _held_out(model, data)
    losses = [e["train_distill_loss_epoch"] for e in distilled["epochs"]]
    agreements = [e["train_teacher_student_agreement_epoch"] for e in distilled["epochs"]]
    print(
        f"\n[{data['source']}] held-out distillation loss {start['loss']:.4f} -> "
        f"{end['loss']:.4f}; agreement with the teacher {100 * start['agreement']:.1f} % -> "
        f"{100 * end['agreement']:.1f} %; training loss by epoch {np.round(losses, 4)}; "
        f"agreement by epoch {np.round(agreements, 3)}"
    )
    assert end["loss"] < start["loss"] - 0.5
    assert end["agreement"] > start["agreement"] + 0.25
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert agreements[-1] > agreements[0] + 0.15

    moved = {k: not torch.equal(v, before["params"][k]) for k, v in model.named_parameters()}
    student = [k for k in moved if k.startswith(("backbone.", "distill_head."))]
    assert student and all(moved[k] for k in student), [k for k in student if not moved[k]]
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, before["teacher"][k]), k


@pytest.mark.slow
def test_mixed_with_simclr_both_losses_fall(data, teacher_ckpt, tmp_path):
    """s2bnn + SimCLR: the epoch means of both logged losses fall, and the held-out
    agreement with the teacher still rises."""
    model, before, epochs, _ = _train(data, teacher_ckpt, "simclr", tmp_path)
    distill = [e["train_distill_loss_epoch"] for e in epochs]
    ssl = [e["train_ssl_loss_epoch"] for e in epochs]
    end = _held_out(model, data)
    print(
        f"\n[{data['source']}] mixed: distillation loss by epoch {np.round(distill, 4)}, "
        f"SimCLR loss by epoch {np.round(ssl, 4)}; held-out agreement "
        f"{100 * before['held_out']['agreement']:.1f} % -> {100 * end['agreement']:.1f} %"
    )
    assert distill[-1] < distill[0] - 0.3
    assert ssl[-1] < ssl[0] - 0.3
    assert end["agreement"] > before["held_out"]["agreement"] + 0.15


def test_packed_engine_on_the_trained_student(distilled, data):
    """The student trained above, packed: kNN predictions (k=20, T=0.07, each engine against
    its own bank of the 400 training images) agree with PyTorch's on >= 99.5 % of the 600
    held-out images; images whose features show a flipped sign bit (per-image relative
    difference above float rounding) are counted, reported and bounded."""
    from s2bnn_plugin.evaluation.knn import knn_agreement, knn_classify
    from s2bnn_plugin.packing import pack

    backbone = distilled["model"].backbone.eval()
    net = pack(backbone)
    (train_x, train_y), (val_x, val_y) = data["train"], data["val"]
    with torch.no_grad():
        torch_train, torch_val = backbone(train_x).numpy(), backbone(val_x).numpy()
    packed_train = net(np.ascontiguousarray(train_x.numpy()))
    packed_val = net(np.ascontiguousarray(val_x.numpy()))

    agreement = knn_agreement(packed_train, packed_val, torch_train, torch_val, train_y.numpy())
    features = np.concatenate([torch_train, torch_val])
    diff = np.abs(np.concatenate([packed_train, packed_val]) - features).max(axis=1)
    flipped = int((diff / (np.abs(features).max(axis=1) + 1e-12) > 1e-4).sum())
    accuracy = knn_classify(packed_train, train_y.numpy(), packed_val, val_y.numpy()).top1
    print(
        f"\n[{data['source']}] packed vs PyTorch kNN agreement {100 * agreement:.2f} % of "
        f"{len(val_x)} held-out images; images with a flipped sign bit: {flipped} of "
        f"{len(features)}; packed kNN top-1 {accuracy:.1f} %"
    )
    assert agreement >= 0.995
    assert flipped <= 0.05 * len(features)
    assert accuracy > 40.0  # the trained student's features carry the classes (chance: 10 %)


@pytest.mark.slow
def test_s2bnn_pack_and_check_pass_on_the_trained_checkpoint(distilled, tmp_path):
    """``s2bnn pack`` and ``s2bnn check --ckpt`` on the checkpoint solo-learn's Checkpointer
    wrote for the trained student (with its args.json)."""
    ckpt = sorted(distilled["out"].rglob("*.ckpt"))[-1]
    assert (ckpt.parent / "args.json").is_file()
    packed = tmp_path / "student.s2bnn"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cli = [sys.executable, "-m", "s2bnn_plugin.cli"]
    pack = subprocess.run(
        [*cli, "pack", str(ckpt), "-o", str(packed), "--check-size", "16", "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert pack.returncode == 0, pack.stderr
    check = subprocess.run(
        [*cli, "check", str(packed), "--ckpt", str(ckpt), "--size", "16", "--batch", "16"]
        + ["--repeats", "1", "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert check.returncode == 0, check.stderr
    print("\n" + check.stdout)
    line = next(ln for ln in check.stdout.splitlines() if "flipped sign bit" in ln)
    flipped, total = line.rsplit(": ", 1)[1].split("/")
    assert int(total) == 16 and int(flipped) <= 2
