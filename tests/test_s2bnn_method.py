"""``method=s2bnn`` in-process: the frozen teacher, the loss mix, bad input, two-step init."""

from __future__ import annotations

import dataclasses
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from s2bnn_plugin.methods.distillation import calibration_stats, distillation_loss

pytestmark = pytest.mark.solo

SMALL = {"cifar": True, "width_mult": 0.125}
SSL_KWARGS = {
    "proj_hidden_dim": 32,
    "proj_output_dim": 16,
    "pred_hidden_dim": 32,
    "queue_size": 64,
    "temperature": 0.5,  # differs from the distillation temperature on purpose
}
TEACHER_DIM = 16
LOGGED = (
    "train_distill_loss",
    "train_ssl_loss",
    "train_teacher_student_agreement",
    "train_teacher_entropy",
    "train_student_entropy",
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to OpenMP spin-waiting on a busy
    2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def methods():
    from s2bnn_plugin.solo import register

    register()
    import solo.methods

    return solo.methods.METHODS


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A small MoCo v2-style teacher: ResNet (one block per stage), fc = MLP 512-32-16."""
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1, 1])
    model.fc = nn.Sequential(nn.Linear(512, 32), nn.ReLU(), nn.Linear(32, TEACHER_DIM))
    path = tmp_path_factory.mktemp("teacher") / "moco.pth.tar"
    state = {f"module.encoder_q.{k}": v for k, v in model.state_dict().items()}
    state["module.queue"] = torch.randn(TEACHER_DIM, 64)
    torch.save({"state_dict": state}, path)
    return path


def ssl_kwargs_for(ssl_method: str) -> dict:
    """The part of SSL_KWARGS that the objective reads (a key it does not read is refused)."""
    from s2bnn_plugin.methods.settings import MethodConfigError, objective_keys

    try:
        reads = objective_keys(ssl_method.lower())
    except MethodConfigError:  # an unknown objective: the test is about that
        return dict(SSL_KWARGS)
    return {k: v for k, v in SSL_KWARGS.items() if k in reads}


def s2bnn_cfg(ckpt, ssl_method="none", backbone_kwargs=None, **method_kwargs):
    from solo_utils import base_cfg

    mk = {
        "teacher": {"ckpt": str(ckpt)},
        "ssl_method": ssl_method,
        "head_hidden_dim": 32,
        "ssl_kwargs": ssl_kwargs_for(ssl_method),
        **method_kwargs,
    }
    return base_cfg("s2bnn", "reactnet18", backbone_kwargs or SMALL, mk)


def make(methods, ckpt, ssl_method="none", backbone_kwargs=None, **method_kwargs):
    cfg = s2bnn_cfg(ckpt, ssl_method, backbone_kwargs, **method_kwargs)
    return methods["s2bnn"](cfg), cfg


def a_batch(n=4, size=32):
    g = torch.Generator().manual_seed(1)
    crops = [torch.randn(n, 3, size, size, generator=g) for _ in range(2)]
    return torch.arange(n), crops, torch.randint(0, 5, (n,), generator=g)


def capture_logs(model, monkeypatch) -> dict:
    logged: dict = {}
    monkeypatch.setattr(model, "log_dict", lambda d, **_: logged.update(d))
    monkeypatch.setattr(model, "log", lambda k, v, **_: logged.__setitem__(k, v))
    return logged


# ---------------------------------------------------------------------------------------------
# (a) the teacher: frozen, outside the optimiser and the checkpoints


def test_teacher_is_frozen_and_outside_optimiser_and_state_dict(methods, teacher_ckpt):
    model, _ = make(methods, teacher_ckpt, "simclr")
    assert type(model).__name__ == "S2BNN_simclr"
    teacher_params = list(model.teacher.parameters())
    assert teacher_params and not any(p.requires_grad for p in teacher_params)
    assert not model.teacher.training
    model.train()
    assert not any(m.training for m in model.teacher.modules())

    ids = {id(p) for p in teacher_params}
    assert not ids & {id(p) for p in model.parameters()}
    assert not any(m is model.teacher for m in model.modules())
    assert not any(k.startswith("teacher") for k in model.state_dict())

    groups = model.learnable_params
    assert "distill_head" in [g["name"] for g in groups]
    optimizer = model.configure_optimizers()
    optimizer = optimizer[0][0] if isinstance(optimizer, tuple) else optimizer
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not ids & in_optimizer
    for name in ("backbone", "distill_head", "projector", "classifier"):
        assert {id(p) for p in getattr(model, name).parameters()} <= in_optimizer, name


def test_checkpoint_has_no_teacher_weights_and_reloads_strictly(methods, teacher_ckpt, tmp_path):
    from solo_utils import fit

    model, cfg = make(methods, teacher_ckpt, "none")
    teacher_state = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    trainer = fit(model, cfg, steps=2)
    assert trainer.global_step == 2
    # two training steps leave the teacher as loaded (BatchNorm statistics included)
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k]), k
    assert not model.teacher.training

    path = tmp_path / "s2bnn.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert not any("teacher" in k or "encoder_q" in k for k in state)
    assert {k.split(".")[0] for k in state} == {"backbone", "classifier", "distill_head"}
    fresh, _ = make(methods, teacher_ckpt, "none")
    fresh.load_state_dict(state, strict=True)  # a resumed run: no teacher keys missing


# ---------------------------------------------------------------------------------------------
# (b) gradients reach the student only


@pytest.mark.parametrize("ssl_method", ["none", "simclr", "byol"])
def test_gradients_reach_the_student_only(methods, teacher_ckpt, ssl_method, monkeypatch):
    model, _ = make(methods, teacher_ckpt, ssl_method)
    capture_logs(model, monkeypatch)
    model.train()
    loss = model.training_step(a_batch(), 0)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name in ("backbone", "distill_head", "classifier"):
        for pname, p in getattr(model, name).named_parameters():
            assert p.grad is not None, f"{name}.{pname} got no gradient"
    assert any(p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.distill_head.parameters())
    assert all(p.grad is None for p in model.teacher.parameters())
    if ssl_method == "byol":
        assert all(p.grad is None for p in model.momentum_backbone.parameters())


def test_distillation_alone_trains_backbone_and_head_not_classifier_weights(
    methods, teacher_ckpt, monkeypatch
):
    """With the classifier's loss removed, the distillation loss's gradient flows to the
    backbone and distillation head only (the classifier sees detached features)."""
    model, _ = make(methods, teacher_ckpt, "none")
    logs = capture_logs(model, monkeypatch)
    model.train()
    loss = model.training_step(a_batch(), 0)
    (loss - logs["train_class_loss"]).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.classifier.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.backbone.parameters())
    assert all(p.grad is not None and p.grad.any() for p in model.distill_head.parameters())


# ---------------------------------------------------------------------------------------------
# (c) the mix


@pytest.mark.parametrize(
    "ssl_method",
    # contrastive, momentum (+ queue), prototype-based, redundancy-reduction objectives
    ["none", "simclr", "mocov2plus", "byol", "swav", "dino", "barlow_twins", "vicreg"],
)
def test_mix_trains_through_lightning_and_logs(methods, teacher_ckpt, ssl_method):
    from solo_utils import fit

    model, cfg = make(methods, teacher_ckpt, ssl_method)
    # parameters, not state_dict(): BatchNorm's running statistics change without any step
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = fit(model, cfg, steps=2)
    assert trainer.global_step == 2
    metrics = trainer.callback_metrics
    for key in LOGGED + ("train_class_loss",):
        assert key in metrics, f"{key} not logged (got {sorted(metrics)})"
        assert torch.isfinite(metrics[key]), key
    if ssl_method == "none":
        assert metrics["train_ssl_loss"].item() == 0.0
    else:
        assert metrics["train_ssl_loss"].item() > 0.0
    assert 0.0 < metrics["train_teacher_entropy"].item() <= torch.log(torch.tensor(16.0)) + 1e-4
    assert metrics["train_distill_loss"].item() >= metrics["train_teacher_entropy"].item() - 1e-4
    moved = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    # every part trained: backbone, distillation head, the objective's own head, and
    # solo-learn's online linear classifier alongside
    head = {"none": (), "dino": ("head.",)}.get(ssl_method, ("projector.",))
    for part in ("backbone.", "distill_head.", "classifier.", *head):
        assert any(k.startswith(part) for k in moved), f"no {part} parameter moved"
    if ssl_method in ("mocov2plus", "byol", "dino"):  # the objective's own machinery runs
        assert hasattr(model, "momentum_backbone")
    if ssl_method == "mocov2plus":
        assert model.queue.shape[-1] == SSL_KWARGS["queue_size"]


@pytest.mark.parametrize("ssl_method", ["none", "simclr"])
def test_total_loss_is_the_weighted_sum_computed_by_hand(
    methods, teacher_ckpt, ssl_method, monkeypatch
):
    """loss = class_loss + ssl_weight * ssl_loss + distill_weight * distill_loss, each term
    recomputed here from the model's modules (SimCLR's own loss function for ssl_loss)."""
    from solo.losses.simclr import simclr_loss_func

    model, _ = make(
        methods, teacher_ckpt, ssl_method, ssl_weight=0.3, distill_weight=2.5, temperature=0.1
    )
    logs = capture_logs(model, monkeypatch)
    model.train()
    batch = a_batch()
    indexes, crops, targets = batch
    loss = model.training_step(batch, 0)

    class_losses, distill, stats, z = [], [], [], []
    for x in crops:
        x = x.to(memory_format=torch.channels_last)
        feats = model.backbone(x)
        class_losses.append(F.cross_entropy(model.classifier(feats), targets))
        prediction, target = model.distill_head(feats), model.teacher(x)
        distill.append(distillation_loss(prediction, target, 0.1))
        stats.append(calibration_stats(prediction, target, 0.1))
        if ssl_method == "simclr":
            z.append(model.projector(feats))
    class_loss = sum(class_losses) / 2
    distill_loss = sum(distill) / 2
    if ssl_method == "simclr":
        ssl_loss = simclr_loss_func(torch.cat(z), indexes=indexes.repeat(2), temperature=0.5)
        expected = class_loss + 0.3 * ssl_loss + 2.5 * distill_loss
    else:
        ssl_loss = torch.tensor(0.0)
        expected = class_loss + 2.5 * distill_loss

    close = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logs["train_class_loss"], class_loss, **close)
    torch.testing.assert_close(logs["train_distill_loss"], distill_loss, **close)
    torch.testing.assert_close(logs["train_ssl_loss"], ssl_loss, **close)
    torch.testing.assert_close(loss, expected, **close)
    agreement = sum(s.agreement for s in stats) / 2
    torch.testing.assert_close(logs["train_teacher_student_agreement"], agreement)
    teacher_entropy = sum(s.teacher_entropy for s in stats) / 2
    torch.testing.assert_close(logs["train_teacher_entropy"], teacher_entropy, **close)


def test_objective_keeps_its_own_temperature(methods, teacher_ckpt):
    """The distillation temperature must not overwrite SimCLR's (both are 'temperature')."""
    model, cfg = make(methods, teacher_ckpt, "simclr", temperature=0.1)
    assert model.temperature == SSL_KWARGS["temperature"]
    assert model.distill_temperature == 0.1
    assert cfg.method_kwargs.ssl_kwargs.temperature == SSL_KWARGS["temperature"]


def test_distill_weight_zero_leaves_only_the_classifier_loss(methods, teacher_ckpt, monkeypatch):
    model, _ = make(methods, teacher_ckpt, "none", distill_weight=0.0)
    logs = capture_logs(model, monkeypatch)
    loss = model.training_step(a_batch(), 0)
    torch.testing.assert_close(loss, logs["train_class_loss"])
    assert logs["train_distill_loss"] > 0


def test_teacher_backbone_output_sizes_the_head(methods, teacher_ckpt):
    model, _ = make(methods, teacher_ckpt, "none", teacher={"ckpt": str(teacher_ckpt)})
    assert model.distill_head[-1].out_features == TEACHER_DIM
    model, _ = make(
        methods, teacher_ckpt, "none", teacher={"ckpt": str(teacher_ckpt), "output": "backbone"}
    )
    assert model.distill_head[-1].out_features == 512
    assert model.distill_head[0].in_features == model.features_dim


def test_ssl_method_is_case_insensitive(methods, teacher_ckpt):
    model, _ = make(methods, teacher_ckpt, "SimCLR")
    assert type(model).__name__ == "S2BNN_simclr"


# ---------------------------------------------------------------------------------------------
# (d) bad input, refused at construction (before any training)


def test_missing_teacher_ckpt(methods, teacher_ckpt):
    cfg = s2bnn_cfg(teacher_ckpt)
    del cfg.method_kwargs.teacher
    with pytest.raises(ValueError, match="method_kwargs.teacher.ckpt"):
        methods["s2bnn"](cfg)


def test_nonexistent_teacher_path(methods, tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher.ckpt=.*nope.pth is not a file"):
        make(methods, tmp_path / "nope.pth")


def test_teacher_matching_no_format(methods, tmp_path):
    from s2bnn_plugin.teachers import TeacherError

    path = tmp_path / "odd.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, path)
    with pytest.raises(TeacherError, match="matches no known teacher format.*encoder.weight"):
        make(methods, path)


def test_unknown_ssl_method_lists_the_available_ones(methods, teacher_ckpt):
    with pytest.raises(ValueError, match="unknown method_kwargs.ssl_method 'simclrr'") as info:
        make(methods, teacher_ckpt, "simclrr")
    for name in ("none", "simclr", "byol", "mocov2plus", "swav"):
        assert f"'{name}'" in str(info.value)
    assert "'s2bnn'" not in str(info.value)


def test_mixing_with_itself_is_refused(methods, teacher_ckpt):
    with pytest.raises(ValueError, match="cannot be mixed with itself.*'none'"):
        make(methods, teacher_ckpt, "s2bnn")


def test_bad_temperature_and_teacher_options(methods, teacher_ckpt):
    from s2bnn_plugin.teachers import TeacherError

    with pytest.raises(ValueError, match="temperature must be > 0"):
        make(methods, teacher_ckpt, temperature=0.0)
    with pytest.raises(ValueError, match="teacher.format must be one of"):
        make(methods, teacher_ckpt, teacher={"ckpt": str(teacher_ckpt), "format": "timm"})
    with pytest.raises(ValueError, match="teacher.output must be one of"):
        make(methods, teacher_ckpt, teacher={"ckpt": str(teacher_ckpt), "output": "logits"})
    with pytest.raises(ValueError, match="stem_padding must be null or an int >= 0"):
        make(methods, teacher_ckpt, teacher={"ckpt": str(teacher_ckpt), "stem_padding": -1})
    # reaches the loader: this teacher's stem is 7x7, where a padding choice cannot apply
    with pytest.raises(TeacherError, match="3x3 \\(CIFAR\\) stems only"):
        make(methods, teacher_ckpt, teacher={"ckpt": str(teacher_ckpt), "stem_padding": 2})


def test_student_init_that_does_not_fit(methods, teacher_ckpt, tmp_path):
    other, _ = make(methods, teacher_ckpt, backbone_kwargs={"cifar": True, "width_mult": 0.25})
    path = tmp_path / "wide.ckpt"
    torch.save({"state_dict": other.state_dict()}, path)
    with pytest.raises(ValueError, match="does not fit the student.*same backbone.name"):
        make(methods, teacher_ckpt, student_init=str(path))
    with pytest.raises(FileNotFoundError, match="student_init=.*missing.ckpt"):
        make(methods, teacher_ckpt, student_init=str(tmp_path / "missing.ckpt"))


# ---------------------------------------------------------------------------------------------
# (e) two-step training: step 1 (real weights) initialises step 2 (binary weights)


def test_step1_checkpoint_initialises_step2(methods, teacher_ckpt, tmp_path):
    from solo_utils import fit

    step1, cfg1 = make(methods, teacher_ckpt, backbone_kwargs={**SMALL, "binary_weights": False})
    trainer = fit(step1, cfg1, steps=1)
    path = tmp_path / "step1.ckpt"
    trainer.save_checkpoint(path)

    step2, _ = make(
        methods,
        teacher_ckpt,
        "byol",
        backbone_kwargs={**SMALL, "binary_weights": True},
        student_init=str(path),
    )
    assert step2.backbone.config.binary_weights and not step1.backbone.config.binary_weights
    trained = step1.backbone.state_dict()
    for k, v in step2.backbone.state_dict().items():
        assert torch.equal(v, trained[k]), k
    for k, v in step2.distill_head.state_dict().items():
        assert torch.equal(v, step1.distill_head.state_dict()[k]), k
    # the momentum encoder starts from the initialised student, not from random weights
    for online, momentum in zip(
        step2.backbone.parameters(), step2.momentum_backbone.parameters(), strict=True
    ):
        assert torch.equal(online, momentum)


# ---------------------------------------------------------------------------------------------
# (f) the teacher follows the model's dtype, device and memory-format moves


def test_teacher_follows_dtype_and_memory_format(methods, teacher_ckpt, monkeypatch):
    model, _ = make(methods, teacher_ckpt, "none")
    model.double()
    assert all(p.dtype == torch.float64 for p in model.teacher.parameters())
    assert all(b.dtype == torch.float64 for b in model.teacher.buffers() if b.is_floating_point())
    capture_logs(model, monkeypatch)
    indexes, crops, targets = a_batch()
    loss = model.training_step((indexes, [c.double() for c in crops], targets), 0)
    assert torch.isfinite(loss)
    model.to(torch.float32)
    assert all(p.dtype == torch.float32 for p in model.teacher.parameters())
    model.to(memory_format=torch.channels_last)
    conv = model.teacher.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert not model.teacher.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_teacher_follows_device_moves(methods, teacher_ckpt):
    model, _ = make(methods, teacher_ckpt, "none")
    model.cuda()
    assert all(p.is_cuda for p in model.teacher.parameters())
    model.cpu()
    assert not any(p.is_cuda for p in model.teacher.parameters())


# ---------------------------------------------------------------------------------------------
# (g) every loss term taken where it is computed: momentum classifier, multi-crop, 16-bit


def test_momentum_classifier_loss_is_its_own_term(methods, teacher_ckpt, monkeypatch):
    """BYOL with ``momentum.classifier``: the total is class + momentum class + ssl_weight * the
    objective's own loss (what BYOL itself logs) + distill_weight * distillation, each recomputed
    here; ssl_loss contains neither classifier's loss."""
    cfg = s2bnn_cfg(teacher_ckpt, "byol", ssl_weight=0.3, distill_weight=2.5)
    cfg.momentum = {"base_tau": 0.99, "final_tau": 1.0, "classifier": True}
    model = methods["s2bnn"](cfg)
    assert type(model).__name__ == "S2BNN_byol" and model.momentum_classifier is not None
    logs = capture_logs(model, monkeypatch)
    model.train()
    batch = a_batch()
    _, crops, targets = batch
    loss = model.training_step(batch, 0)

    class_losses, momentum_losses, distill = [], [], []
    for x in crops:
        x = x.to(memory_format=torch.channels_last)
        feats = model.backbone(x)
        class_losses.append(F.cross_entropy(model.classifier(feats), targets))
        with torch.no_grad():
            momentum_feats = model.momentum_backbone(x)
        momentum_losses.append(F.cross_entropy(model.momentum_classifier(momentum_feats), targets))
        distill.append(distillation_loss(model.distill_head(feats), model.teacher(x), 0.2))
    class_loss, momentum_loss = sum(class_losses) / 2, sum(momentum_losses) / 2
    distill_loss = sum(distill) / 2
    close = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logs["train_class_loss"], class_loss, **close)
    torch.testing.assert_close(logs["train_momentum_class_loss"], momentum_loss, **close)
    torch.testing.assert_close(logs["train_ssl_loss"], logs["train_neg_cos_sim"], **close)
    expected = class_loss + momentum_loss + 0.3 * logs["train_neg_cos_sim"] + 2.5 * distill_loss
    torch.testing.assert_close(loss, expected, **close)
    torch.testing.assert_close(logs["train_loss"], loss, **close)
    loss.backward()
    assert all(p.grad is not None for p in model.momentum_classifier.parameters())


def test_teacher_sees_only_the_large_crops(methods, teacher_ckpt, monkeypatch):
    """Multi-crop (2 x 32 px + 2 x 16 px, SimCLR over all four): the teacher is asked about the
    two large crops only, the distillation loss is theirs, and the objective uses all crops."""
    cfg = s2bnn_cfg(teacher_ckpt, "simclr")
    cfg.data.num_small_crops = 2
    model = methods["s2bnn"](cfg)
    logs = capture_logs(model, monkeypatch)
    seen: list[tuple[int, ...]] = []
    forward = model.teacher.forward
    monkeypatch.setattr(model.teacher, "forward", lambda x: seen.append(x.shape) or forward(x))
    g = torch.Generator().manual_seed(2)
    large = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)]
    small = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)]
    model.train()
    loss = model.training_step((torch.arange(4), large + small, torch.arange(4) % 5), 0)
    assert seen == [(4, 3, 32, 32)] * 2
    with torch.no_grad():
        feats = [model.backbone(x.to(memory_format=torch.channels_last)) for x in large]
        expected = sum(
            distillation_loss(model.distill_head(f), model.teacher(x), 0.2)
            for f, x in zip(feats, large, strict=True)
        )
    torch.testing.assert_close(logs["train_distill_loss"], expected / 2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logs["train_ssl_loss"], logs["train_nce_loss"])
    loss.backward()
    assert torch.isfinite(loss)


def test_bf16_mixed_on_cpu_runs_teacher_and_student_in_16_bit(methods, teacher_ckpt):
    """``precision=bf16-mixed``: the teacher's prediction is bfloat16 (it runs under the trainer's
    autocast), its fp32 weights stay as loaded, the student's weights train and stay fp32."""
    from solo_utils import fit

    model, cfg = make(methods, teacher_ckpt, "simclr")
    cfg.precision = "bf16-mixed"
    dtypes: list[torch.dtype] = []
    model.teacher.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    teacher_state = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    params = {k: v.detach().clone() for k, v in model.backbone.named_parameters()}
    trainer = fit(model, cfg, steps=2)
    assert trainer.precision == "bf16-mixed"
    assert dtypes and set(dtypes) == {torch.bfloat16}
    for k, v in model.teacher.state_dict().items():
        assert v.dtype == teacher_state[k].dtype and torch.equal(v, teacher_state[k]), k
    changed = [k for k, v in model.backbone.named_parameters() if not torch.equal(v, params[k])]
    assert changed and all(v.dtype == torch.float32 for v in model.backbone.parameters())
    for key in ("train_loss", "train_distill_loss", "train_ssl_loss", "train_class_loss"):
        assert torch.isfinite(trainer.callback_metrics[key]), key


@pytest.mark.parametrize("ssl_method", ["none", "simclr", "byol"])
def test_model_pickles_without_its_teacher(methods, teacher_ckpt, ssl_method, monkeypatch):
    """torch.save(model) and ddp_spawn pickle the model: the mixed class is importable by name,
    the teacher stays out of the pickle (as out of checkpoints) and is reloaded from its path."""
    import io
    import pickle

    model, _ = make(methods, teacher_ckpt, ssl_method)
    torch.save(model, io.BytesIO())
    data = pickle.dumps(model)
    teacher_bytes = model.teacher.backbone.conv1.weight.detach().numpy().tobytes()[:256]
    assert teacher_bytes not in data and str(teacher_ckpt).encode() in data
    assert model.backbone.stem[0].weight.detach().numpy().tobytes()[:256] in data
    clone = pickle.loads(data)
    assert type(clone) is type(model) and type(clone).__name__ == f"S2BNN_{ssl_method}"
    for k, v in model.state_dict().items():
        assert torch.equal(v, clone.state_dict()[k]), k
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, clone.teacher.state_dict()[k]), k
    assert not any(m is clone.teacher for m in clone.modules())
    capture_logs(model, monkeypatch)
    capture_logs(clone, monkeypatch)
    torch.manual_seed(3)
    expected = model.training_step(a_batch(), 0)
    torch.manual_seed(3)
    torch.testing.assert_close(clone.training_step(a_batch(), 0), expected)


def test_mixed_classes_are_module_attributes(methods):
    from s2bnn_plugin.methods import s2bnn

    assert s2bnn.S2BNN_simclr is s2bnn.mixed_class("simclr")
    assert issubclass(s2bnn.S2BNN_none, s2bnn.S2BNN)
    with pytest.raises(AttributeError):
        s2bnn.S2BNN_nonsense  # noqa: B018
    with pytest.raises(TypeError, match="config is required"):
        s2bnn.S2BNN()


# ---------------------------------------------------------------------------------------------
# (h) resuming equals not stopping: the random states travel in the checkpoint


class AugmentedCrops(torch.utils.data.Dataset):
    """Two augmented crops per image, drawing on torch's, Python's and NumPy's global random
    states (as solo-learn's augmentations do), in solo-learn's batch format."""

    def __init__(self, n: int = 16, size: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.arange(n) % 5

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        import random

        import numpy as np

        crops = []
        for _ in range(2):
            crop = self.x[i] + 0.3 * torch.randn(self.x[i].shape)
            if random.random() < 0.5:
                crop = crop.flip(-1)
            crops.append(crop * float(np.random.uniform(0.8, 1.2)))  # noqa: NPY002
        return i, crops, self.y[i]


def _train(methods, ckpt, ssl_method, out, num_workers, stop_after=None, resume=None):
    """One launch as main_pretrain.py does it: seed, build, fit (solo-learn's Checkpointer
    writes a checkpoint at every epoch end); ``stop_after`` ends it after that epoch."""
    from lightning.pytorch import Callback, Trainer, seed_everything
    from solo.utils.checkpointer import Checkpointer

    class Stop(Callback):
        def on_train_epoch_end(self, trainer, _module):
            if trainer.current_epoch == stop_after:
                trainer.should_stop = True

    seed_everything(0)
    cfg = s2bnn_cfg(ckpt, ssl_method)
    model = methods["s2bnn"](cfg)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Checkpointer(cfg, logdir=out, keep_prev=True), Stop()],
    )
    loader = torch.utils.data.DataLoader(
        AugmentedCrops(), batch_size=4, shuffle=True, drop_last=True, num_workers=num_workers
    )
    trainer.fit(model, loader, ckpt_path=resume)
    return model, trainer


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.parametrize("ssl_method,num_workers", [("none", 0), ("simclr", 2), ("byol", 0)])
def test_resumed_run_equals_the_uninterrupted_one_bitwise(
    methods, teacher_ckpt, tmp_path, ssl_method, num_workers, monkeypatch
):
    """2 epochs in one go vs 1 epoch + resume from its checkpoint + 1: weights and optimiser
    state are equal bit for bit (shuffled data, augmentations on three random generators,
    data-loader workers). Without the restore of the random states they are not."""
    from s2bnn_plugin.methods import rng_state

    args = (methods, teacher_ckpt, ssl_method)
    whole, whole_trainer = _train(*args, tmp_path / "whole", num_workers)
    _train(*args, tmp_path / "part", num_workers, stop_after=0)
    (first,) = (tmp_path / "part").rglob("*ep=0.ckpt")
    saved = torch.load(first, map_location="cpu", weights_only=True)
    (states,) = saved["s2bnn_rng_states"]  # one process, its states as plain data
    assert isinstance(states["python"]["state"], list) and states["torch"].dtype == torch.uint8
    resumed, resumed_trainer = _train(*args, tmp_path / "resumed", num_workers, resume=first)

    assert resumed_trainer.global_step == whole_trainer.global_step == 8
    expected, got = whole.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k
    opt_expected = whole_trainer.optimizers[0].state_dict()["state"]
    opt_got = resumed_trainer.optimizers[0].state_dict()["state"]
    assert opt_expected.keys() == opt_got.keys()
    for i, state in opt_expected.items():
        for k, v in state.items():
            assert torch.equal(v, opt_got[i][k]), (i, k)

    # the same resume without restoring the random states: other batches, other weights
    monkeypatch.setattr(rng_state, "restore", lambda state: None)
    stale, _ = _train(*args, tmp_path / "stale", num_workers, resume=first)
    assert _max_diff(expected, stale.state_dict()) > 1e-3


@pytest.mark.slow
def test_ddp_spawn_pickles_the_mixed_model(methods, teacher_ckpt):
    """strategy=ddp_spawn pickles the model into 2 new processes (the mixed class by name, the
    teacher reloaded from its path there); the trained weights come back to this process."""
    from lightning.pytorch import Trainer
    from solo_utils import RandomCrops

    model, cfg = make(methods, teacher_ckpt, "simclr")
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = RandomCrops(n=16, size=32)
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4, drop_last=True))
    moved = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.") for k in moved)
    assert any(k.startswith("distill_head.") for k in moved)
    assert torch.isfinite(trainer.callback_metrics["train_distill_loss"])


# ---------------------------------------------------------------------------------------------
# loss=burn, distill_crops, the head's default width, scheduler.name=linear


def test_burn_loss_pairs_the_views_across_and_logs_each_term(methods, teacher_ckpt, monkeypatch):
    """loss=burn: student crop 0 against teacher crop 1 and 1 against 0 (BURN's pairing), the
    mean of the two mixes at lambda = burn_lambda_start outside a Trainer, each term logged."""
    from s2bnn_plugin.methods.distillation import burn_loss

    model, cfg = make(
        methods, teacher_ckpt, "none", loss="burn", burn_lambda_start=0.4, temperature=0.5
    )
    assert cfg.method_kwargs.burn_lambda_end == 0.3  # BURN's default end value
    logs = capture_logs(model, monkeypatch)
    model.train()
    batch = a_batch()
    loss = model.training_step(batch, 0)
    _, crops, targets = batch
    with torch.no_grad():
        xs = [x.to(memory_format=torch.channels_last) for x in crops]
        preds = [model.distill_head(model.backbone(x)) for x in xs]
        targets_ = [model.teacher(x) for x in xs]
    parts = [burn_loss(preds[0], targets_[1], 0.4, 0.5), burn_loss(preds[1], targets_[0], 0.4, 0.5)]
    close = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        logs["train_distill_loss"], (parts[0].loss + parts[1].loss) / 2, **close
    )
    torch.testing.assert_close(
        logs["train_burn_feature_loss"], (parts[0].feature + parts[1].feature) / 2, **close
    )
    torch.testing.assert_close(logs["train_burn_kl_loss"], (parts[0].kl + parts[1].kl) / 2, **close)
    assert float(logs["train_burn_lambda"]) == pytest.approx(0.4)
    torch.testing.assert_close(loss, logs["train_class_loss"] + logs["train_distill_loss"], **close)


def test_burn_lambda_moves_with_the_trainers_steps(methods, teacher_ckpt):
    from solo_utils import fit

    cfg = s2bnn_cfg(teacher_ckpt, "none", loss="burn", burn_lambda_start=0.0, burn_lambda_end=1.0)
    model = methods["s2bnn"](cfg)
    seen = []
    original = model.distill_loss.kl_weight
    model.distill_loss.kl_weight = lambda progress: seen.append(original(progress)) or seen[-1]
    fit(model, cfg, steps=4)
    # steps 0..3 of 4: (1 - cos(pi * k / 4)) / 2
    assert seen == pytest.approx([(1 - math.cos(math.pi * k / 4)) / 2 for k in range(4)])


def test_distill_crops_first_feeds_the_first_crop_to_teacher_and_student(
    methods, teacher_ckpt, monkeypatch
):
    model, _ = make(methods, teacher_ckpt, "none", distill_crops="first")
    logs = capture_logs(model, monkeypatch)
    seen = []
    forward = model.teacher.forward
    monkeypatch.setattr(model.teacher, "forward", lambda x: seen.append(x) or forward(x))
    model.train()
    batch = a_batch()
    model.training_step(batch, 0)
    _, crops, _ = batch
    assert len(seen) == 1 and torch.equal(seen[0], crops[0])
    with torch.no_grad():
        x = crops[0].to(memory_format=torch.channels_last)
        expected = distillation_loss(model.distill_head(model.backbone(x)), model.teacher(x), 0.2)
    torch.testing.assert_close(logs["train_distill_loss"], expected, rtol=1e-4, atol=1e-5)


def test_every_default_is_filled_from_the_settings_table(methods, teacher_ckpt, monkeypatch):
    """Keys left out get their row's default (BURN's only with loss=burn), and a default
    changed in the table (as the method module reads it) is the one the model trains with."""
    from omegaconf import OmegaConf

    from s2bnn_plugin.methods import settings
    from s2bnn_plugin.validate import NO_DEFAULT

    for loss in ("kl", "burn"):
        cfg = s2bnn_cfg(teacher_ckpt, "none", loss=loss)
        for key in ("head_hidden_dim", "ssl_kwargs"):
            del cfg.method_kwargs[key]
        methods["s2bnn"](cfg)
        for setting in settings.SETTINGS:
            found = OmegaConf.select(cfg, f"method_kwargs.{setting.key}", default="<absent>")
            if setting.key.startswith("burn_") and loss == "kl":
                assert found == "<absent>", setting.key
            elif setting.default is not NO_DEFAULT and setting.key != "loss":
                assert found == setting.default, (loss, setting.key, found)
    warmer = [
        dataclasses.replace(s, default=0.7) if s.key == "temperature" else s
        for s in settings.SETTINGS
    ]
    monkeypatch.setattr(sys.modules[methods["s2bnn"].__module__], "SETTINGS", tuple(warmer))
    model, cfg = make(methods, teacher_ckpt, "none")
    assert cfg.method_kwargs.temperature == 0.7 and model.distill_temperature == 0.7


def test_head_hidden_width_defaults_to_the_backbones(methods, teacher_ckpt):
    """S2-BNN's code: the MLP's hidden width is the backbone's (dim_mlp = fc.in_features)."""
    model, cfg = make(methods, teacher_ckpt, "none", head_hidden_dim=None)
    assert cfg.method_kwargs.head_hidden_dim is None
    assert model.distill_head[0].out_features == model.features_dim
    assert model.distill_head[-1].in_features == model.features_dim


def test_linear_schedule_decays_per_step_and_keeps_static_groups(
    methods, teacher_ckpt, monkeypatch
):
    """scheduler.name=linear, interval=step: after k of n optimiser steps the lr is
    lr * (1 - k / n); a group marked static_lr (as SimSiam's predictor) keeps its lr."""
    from solo_utils import fit

    cfg = s2bnn_cfg(teacher_ckpt, "none")
    cfg.scheduler = {"name": "linear", "interval": "step"}
    model = methods["s2bnn"](cfg)
    assert cfg.scheduler.warmup_epochs == 0  # S2-BNN's default, not solo-learn's 10
    own = S2BNN_learnable_params()

    def marked(self):  # fresh dicts on every call, as solo-learn's methods build them
        return [dict(g, static_lr=True) if g["name"] == "distill_head" else g for g in own(self)]

    monkeypatch.setattr(type(model), "learnable_params", property(marked))
    trainer = fit(model, cfg, steps=3)
    lrs = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
    assert trainer.estimated_stepping_batches == 3
    assert lrs["backbone"] == pytest.approx(3e-4 * (1 - 3 / 3), abs=1e-12)
    assert lrs["distill_head"] == pytest.approx(3e-4)
    # the decay itself, one step before the end
    trainer.lr_scheduler_configs[0].scheduler.step(2)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(3e-4 / 3)


def S2BNN_learnable_params():  # noqa: N802
    from s2bnn_plugin.methods.s2bnn import S2BNN

    return S2BNN.learnable_params.fget
