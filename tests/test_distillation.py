"""The distillation losses (S2-BNN's KL, BURN's mix), checked against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from s2bnn_plugin.methods.distillation import (
    DistillationHead,
    burn_lambda,
    burn_loss,
    calibration_stats,
    distillation_loss,
)

STUDENT = [[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]


def _log_softmax_by_hand(row: list[float], temperature: float) -> list[float]:
    """log softmax(x / ||x|| / T), written out with plain floats."""
    norm = math.sqrt(sum(v * v for v in row))
    logits = [v / norm / temperature for v in row]
    log_z = math.log(sum(math.exp(v) for v in logits))
    return [v - log_z for v in logits]


def _loss_by_hand(student, teacher, temperature):
    total = 0.0
    for s, t in zip(student, teacher):
        ls = _log_softmax_by_hand(s, temperature)
        pt = [math.exp(v) for v in _log_softmax_by_hand(t, temperature)]
        total += -sum(p * q for p, q in zip(pt, ls))
    return total / len(student)


def _entropy_by_hand(rows, temperature):
    total = 0.0
    for row in rows:
        lp = _log_softmax_by_hand(row, temperature)
        total += -sum(math.exp(v) * v for v in lp)
    return total / len(rows)


@pytest.mark.parametrize("temperature", [0.2, 1.0, 0.05])
def test_loss_matches_hand_computation(temperature):
    loss = distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(_loss_by_hand(STUDENT, TEACHER, temperature), rel=1e-5)


def test_default_temperature_is_the_papers():
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    assert distillation_loss(s, t).item() == pytest.approx(_loss_by_hand(STUDENT, TEACHER, 0.2))


def test_loss_ignores_the_vectors_norms():
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    scaled = distillation_loss(s * torch.tensor([[3.0], [0.1]]), t * 7.0)
    assert scaled.item() == pytest.approx(distillation_loss(s, t).item(), rel=1e-5)


def test_loss_is_kl_plus_teacher_entropy():
    torch.manual_seed(1)
    s, t = torch.randn(16, 32, dtype=torch.float64), torch.randn(16, 32, dtype=torch.float64)
    T = 0.2
    ls = F.log_softmax(F.normalize(s, dim=1) / T, dim=1)
    lt = F.log_softmax(F.normalize(t, dim=1) / T, dim=1)
    kl = F.kl_div(ls, lt, log_target=True, reduction="batchmean")  # KL(teacher || student)
    entropy = -(lt.exp() * lt).sum(1).mean()
    assert distillation_loss(s, t, T).item() == pytest.approx((kl + entropy).item(), rel=1e-5)
    # the minimum (student == teacher) is the teacher's entropy: KL is 0 there
    assert distillation_loss(t, t, T).item() == pytest.approx(entropy.item(), rel=1e-5)
    assert distillation_loss(s, t, T).item() > distillation_loss(t, t, T).item()


def test_gradient_reaches_the_student_only():
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    distillation_loss(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_gradient_matches_finite_differences():
    torch.manual_seed(2)
    s = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 5, dtype=torch.float64)
    # the loss normalises in float32: check in float32 tolerance
    assert torch.autograd.gradcheck(
        lambda x: distillation_loss(x, t).double(), (s,), eps=1e-3, atol=1e-3, rtol=1e-2
    )


def test_half_precision_inputs_give_float32_loss():
    s, t = torch.tensor(STUDENT).half(), torch.tensor(TEACHER).bfloat16()
    loss = distillation_loss(s, t)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(_loss_by_hand(STUDENT, TEACHER, 0.2), rel=1e-2)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\).*same shape"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(3, 3))


def test_calibration_stats_by_hand():
    # rows 0 and 2 agree on the top-1 entry, row 1 does not
    student = torch.tensor([[5.0, 1.0, 0.0], [0.0, 4.0, 1.0], [0.0, 0.0, 1.0]])
    teacher = torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    stats = calibration_stats(student, teacher, 0.2)
    assert stats.agreement.item() == pytest.approx(2 / 3)
    assert stats.teacher_entropy.item() == pytest.approx(
        _entropy_by_hand(teacher.tolist(), 0.2), rel=1e-5
    )
    assert stats.student_entropy.item() == pytest.approx(
        _entropy_by_hand(student.tolist(), 0.2), rel=1e-5
    )


def test_calibration_stats_extremes():
    x = torch.randn(8, 10)
    same = calibration_stats(x, x * 2.0)
    assert same.agreement.item() == 1.0
    assert same.teacher_entropy.item() == pytest.approx(same.student_entropy.item(), rel=1e-5)
    # a constant vector gives the uniform distribution: entropy log(D), the maximum
    uniform = calibration_stats(torch.ones(4, 10), torch.ones(4, 10))
    assert uniform.teacher_entropy.item() == pytest.approx(math.log(10), rel=1e-5)
    # a large temperature flattens any distribution towards uniform; a small one sharpens it
    hot = calibration_stats(x, x, temperature=100.0)
    cold = calibration_stats(x, x, temperature=0.01)
    assert hot.student_entropy.item() == pytest.approx(math.log(10), rel=1e-3)
    assert cold.student_entropy.item() < same.student_entropy.item() < math.log(10)
    # opposite vectors never agree
    assert calibration_stats(x, -x).agreement.item() == 0.0


def test_calibration_stats_carry_no_gradient():
    s = torch.randn(4, 6, requires_grad=True)
    stats = calibration_stats(s, torch.randn(4, 6))
    for value in (stats.agreement, stats.teacher_entropy, stats.student_entropy):
        assert not value.requires_grad


def test_distillation_head_shapes_and_training():
    head = DistillationHead(in_dim=12, hidden_dim=7, out_dim=5)
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head[0].weight.shape == (7, 12) and head[-1].weight.shape == (5, 7)
    out = head(torch.randn(4, 12))
    assert out.shape == (4, 5)
    distillation_loss(out, torch.randn(4, 5)).backward()
    assert all(p.grad is not None for p in head.parameters())


# ------------------------------------------------------------------------- BURN's loss


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_burn_loss_by_hand():
    """s = (3, 4), t = (4, 3): normalised (0.6, 0.8) and (0.8, 0.6), squared distance 0.08; at
    T = 1 the distributions are (1 - p, p) and (p, 1 - p) with p = sigmoid(1), so KL(t || s) =
    (2p - 1) * ln(p / (1 - p)) = tanh(1/2). A second, identical pair adds 0 to both terms."""
    student = torch.tensor([[3.0, 4.0], [1.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[4.0, 3.0], [1.0, 0.0]])
    parts = burn_loss(student, teacher, lam=0.25, temperature=1.0)
    assert math.isclose(parts.feature.item(), 0.08 / 2, rel_tol=1e-6)
    assert math.isclose(parts.kl.item(), math.tanh(0.5) / 2, rel_tol=1e-6)
    expected = 0.75 * 0.04 + 0.25 * math.tanh(0.5) / 2
    assert math.isclose(parts.loss.item(), expected, rel_tol=1e-6)


def test_burn_loss_temperature_and_raw_logits():
    """T = 0.5 doubles the logit gap (p = sigmoid(2): KL = 2 tanh(1)); the feature term ignores
    the norms, the KL term does not (it takes the raw predictions over T, as BURN's head)."""
    student, teacher = torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]])
    parts = burn_loss(student, teacher, lam=1.0, temperature=0.5)
    assert math.isclose(parts.kl.item(), 2 * math.tanh(1.0), rel_tol=1e-6)
    assert math.isclose(parts.loss.item(), parts.kl.item(), rel_tol=1e-6)
    doubled = burn_loss(2 * student, teacher, lam=0.0, temperature=1.0)
    assert math.isclose(doubled.loss.item(), 0.08, rel_tol=1e-6)
    p, q = sigmoid(1.0), sigmoid(2.0)  # teacher (p, 1 - p), student (1 - q, q)
    kl = p * math.log(p / (1 - q)) + (1 - p) * math.log((1 - p) / q)
    assert math.isclose(doubled.kl.item(), kl, rel_tol=1e-6)


def test_burn_loss_gradient_reaches_the_student_only():
    student = torch.tensor([[3.0, 4.0]], requires_grad=True)
    teacher = torch.tensor([[4.0, 3.0]], requires_grad=True)
    burn_loss(student, teacher, lam=0.5, temperature=1.0).loss.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_burn_loss_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="same shape"):
        burn_loss(torch.zeros(2, 3), torch.zeros(2, 4), lam=0.5)


@pytest.mark.parametrize(
    "step,expected",
    [(0, 0.1), (25, 0.3 - 0.1 * (1 + math.sqrt(0.5))), (50, 0.2), (100, 0.3), (150, 0.3)],
)
def test_burn_lambda_follows_a_half_cosine(step, expected):
    """BURN's hook: lambda = end - (end - start) * (cos(pi * step / total) + 1) / 2."""
    assert math.isclose(burn_lambda(step, 100, 0.1, 0.3), expected, rel_tol=1e-9)


# -------------------------------------------------------------- the losses as registered objects


def test_the_registered_losses_pair_the_crops_their_way():
    """kl: each crop against itself; burn: across views (BURN); first: the first crop to both."""
    from s2bnn_plugin.methods.losses import LOSSES

    kl = LOSSES["kl"](0.2, {})
    burn = LOSSES["burn"](0.2, {"burn_lambda_start": 0.1, "burn_lambda_end": 0.3})
    assert kl.pairs(2, "all") == [(0, 0), (1, 1)]
    assert burn.pairs(2, "all") == [(0, 1), (1, 0)]
    assert burn.pairs(3, "all") == [(0, 1), (1, 2), (2, 0)]
    for loss in (kl, burn):
        assert loss.pairs(2, "first") == [(0, 0)]
        assert loss.pairs(1, "all") == [(0, 0)]


def test_the_registered_losses_are_the_means_of_their_formulas_over_the_pairs():
    from s2bnn_plugin.methods.losses import LOSSES, Progress

    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)) for _ in range(2)]
    kl = LOSSES["kl"](0.5, {})(pairs, lambda: None)
    expected = (distillation_loss(*pairs[0], 0.5) + distillation_loss(*pairs[1], 0.5)) / 2
    torch.testing.assert_close(kl.loss, expected)
    assert kl.logged == {}

    burn = LOSSES["burn"](0.5, {"burn_lambda_start": 0.0, "burn_lambda_end": 1.0})
    for progress, lam in ((None, 0.0), (Progress(50, 100), 0.5), (Progress(100, 100), 1.0)):
        terms = burn(pairs, lambda progress=progress: progress)
        parts = [burn_loss(s, t, lam, 0.5) for s, t in pairs]
        torch.testing.assert_close(terms.loss, (parts[0].loss + parts[1].loss) / 2)
        torch.testing.assert_close(
            terms.logged["train_burn_feature_loss"], (parts[0].feature + parts[1].feature) / 2
        )
        torch.testing.assert_close(
            terms.logged["train_burn_kl_loss"], (parts[0].kl + parts[1].kl) / 2
        )
        assert float(terms.logged["train_burn_lambda"]) == pytest.approx(lam)


def test_each_loss_is_a_choice_of_the_loss_setting_and_alone_reads_its_settings():
    from s2bnn_plugin.methods.losses import LOSSES
    from s2bnn_plugin.methods.settings import SETTINGS, reads

    loss_row = next(s for s in SETTINGS if s.key == "loss")
    assert loss_row.choices == tuple(LOSSES) == ("kl", "burn")
    assert [s.key for s in LOSSES["burn"].settings] == ["burn_lambda_start", "burn_lambda_end"]
    for name, loss in LOSSES.items():
        assert loss.summary in loss_row.hint
        for setting in loss.settings:
            assert setting in SETTINGS
            assert all(reads(setting, {"loss": other}) == (other == name) for other in LOSSES)
    assert reads(loss_row, {"loss": "burn"}) and reads(loss_row, {})
