"""Label correction (Eqs. 11-15) and MC-dropout scores (Eq. 16)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nacs_engine.denoise import (
    RunningMoments,
    corrected_targets,
    correction_strength,
    global_trust,
    label_correcting_loss,
    local_trust,
    mc_dropout_scores,
    ucb_scores,
)
from nacs_engine.models import build_model


def test_global_trust_at_chosen_steps() -> None:
    assert global_trust(0, 100) == pytest.approx(1 / (1 + math.exp(8)))
    assert global_trust(0, 100) == pytest.approx(3.3535e-4, rel=1e-4)
    assert global_trust(50, 100) == pytest.approx(0.5)
    assert global_trust(100, 100) == pytest.approx(1 / (1 + math.exp(-8)))
    assert global_trust(100, 100) > 0.9996
    assert global_trust(25, 100) < global_trust(75, 100)


def test_local_trust_is_zero_when_unsure_and_one_when_sure() -> None:
    values = local_trust(torch.tensor([0.5, 1.0 - 1e-9, 1e-9, 0.9], dtype=torch.float64))
    assert values[0].item() == pytest.approx(0.0, abs=1e-12)
    assert values[1].item() == pytest.approx(1.0, abs=1e-5)
    assert values[2].item() == pytest.approx(1.0, abs=1e-5)
    entropy = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert values[3].item() == pytest.approx(1 - entropy / math.log(2))


def test_corrected_targets_by_hand() -> None:
    labels = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    probs = torch.tensor([0.1, 0.5, 0.99], dtype=torch.float64)
    targets = corrected_targets(labels, probs, 50, 100)  # g = 0.5
    local = local_trust(probs)
    e = 0.5 * local
    expected = (1 - e) * labels + e * probs
    torch.testing.assert_close(targets, expected)
    assert targets[1].item() == pytest.approx(0.0)  # p = 0.5: no trust, label kept
    torch.testing.assert_close(correction_strength(probs, 50, 100), e)
    # Early on the labels are kept, late on a confident model overrides a wrong label.
    early = corrected_targets(labels, probs, 0, 100)
    late = corrected_targets(labels, probs, 100, 100)
    assert early[0].item() > 0.99
    assert late[0].item() < 0.55


def test_label_correcting_loss_matches_bce_on_targets() -> None:
    logits = torch.tensor([2.0, -1.0, 0.3])
    labels = torch.tensor([0.0, 0.0, 1.0])
    weights = torch.tensor([1.0, 2.0, 0.5])
    loss, mean_e = label_correcting_loss(logits, labels, weights, 80, 100)
    targets = corrected_targets(labels, torch.sigmoid(logits), 80, 100)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(loss, (bce * weights).sum() / weights.sum())
    torch.testing.assert_close(mean_e, correction_strength(torch.sigmoid(logits), 80, 100).mean())
    plain, zero = label_correcting_loss(logits, labels, None, 80, 100, relabel=False)
    torch.testing.assert_close(
        plain, torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    )
    assert zero.item() == 0.0


def test_label_correction_rejects_bad_steps() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        global_trust(1, 0)
    with pytest.raises(ValueError, match="step"):
        global_trust(-1, 10)
    with pytest.raises(ValueError, match="labels"):
        corrected_targets(torch.zeros(2), torch.zeros(3), 1, 2)


def test_ucb_formula_by_hand() -> None:
    # Losses of two rows over four passes.
    losses = torch.tensor([[1.0, 2.0], [3.0, 2.0], [2.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    moments = RunningMoments(2)
    for row in losses:
        moments.update(row)
    mean, variance = moments.mean, moments.variance
    torch.testing.assert_close(mean, torch.tensor([2.0, 2.0], dtype=torch.float64))
    # Sample variance of (1, 3, 2, 2) is 2 / 3.
    torch.testing.assert_close(variance, torch.tensor([2.0 / 3.0, 0.0], dtype=torch.float64))
    scores = ucb_scores(mean, variance, 4)
    assert scores[0].item() == pytest.approx(2.0 + 1.96 * math.sqrt((2.0 / 3.0) / 4))
    assert scores[1].item() == pytest.approx(2.0)


def test_variance_is_never_negative_on_constant_losses() -> None:
    moments = RunningMoments(3)
    constant = torch.tensor([0.6931471805599453, 1e8 + 0.1, 1e-12], dtype=torch.float64)
    for _ in range(10):
        moments.update(constant.clone())
    assert torch.all(moments.variance >= 0)
    torch.testing.assert_close(moments.variance, torch.zeros(3, dtype=torch.float64))
    assert torch.all(torch.isfinite(ucb_scores(moments.mean, moments.variance, 10)))


def test_mc_dropout_scores_use_dropout_and_keep_batchnorm_frozen() -> None:
    torch.manual_seed(0)
    field_dims = (5, 4)
    model = build_model("deepfm", field_dims, embed_dim=3, hidden_dims=(8,), dropout=0.5)
    rng = np.random.default_rng(0)
    x = np.stack([rng.integers(0, d, 40) for d in field_dims], axis=1).astype(np.int32)
    labels = torch.from_numpy(rng.integers(0, 2, 40).astype(np.float32))
    running_before = model.mlp.layers[1].running_mean.clone()
    model.train()
    fractions: list[float] = []
    mean, variance, scores = mc_dropout_scores(
        model,
        x,
        labels,
        passes=5,
        batch_size=16,
        device=torch.device("cpu"),
        progress=lambda fraction, message: fractions.append(fraction),
    )
    assert model.training  # mode restored
    torch.testing.assert_close(model.mlp.layers[1].running_mean, running_before)
    assert mean.shape == variance.shape == scores.shape == (40,)
    assert torch.all(variance >= 0) and variance.max() > 0  # dropout really varies the loss
    torch.testing.assert_close(scores, ucb_scores(mean, variance, 5))
    assert fractions[-1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="passes"):
        mc_dropout_scores(model, x, labels, passes=1, batch_size=16, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="labels"):
        mc_dropout_scores(model, x, labels[:3], passes=2, batch_size=16, device=torch.device("cpu"))
