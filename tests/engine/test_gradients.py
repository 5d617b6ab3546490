"""Closed-form last-layer gradients and Adam preconditioning against torch itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nacs_engine.gradients import adam_precondition, head_moments, last_layer_gradients
from nacs_engine.models import build_model

FIELD_DIMS = (6, 4, 5)


def _data(rows: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.stack([torch.randint(0, d, (rows,), generator=generator) for d in FIELD_DIMS], dim=1)
    targets = torch.rand(rows, generator=generator)  # soft targets in [0, 1]
    return x, targets


@pytest.mark.parametrize("backbone", ["deepfm", "dcnv2"])
def test_closed_form_gradient_equals_autograd_per_row(backbone: str) -> None:
    torch.manual_seed(0)
    model = build_model(backbone, FIELD_DIMS, embed_dim=3, hidden_dims=(7, 5), dropout=0.0)
    model.eval()
    x, targets = _data()
    with torch.no_grad():
        logits, h = model.logits_and_features(x)
    closed_form = last_layer_gradients(logits, h, targets)
    assert closed_form.shape == (12, 6)
    for i in range(x.shape[0]):
        model.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(x[i : i + 1]), targets[i : i + 1])
        loss.backward()
        autograd = torch.cat([model.head.weight.grad.reshape(-1), model.head.bias.grad.reshape(-1)])
        torch.testing.assert_close(closed_form[i], autograd, rtol=1e-5, atol=1e-6)


def test_moments_before_training_are_zero_and_t_is_one() -> None:
    model = build_model("deepfm", FIELD_DIMS, embed_dim=3, hidden_dims=(5,))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    moments = head_moments(optimizer, model.head)
    assert moments.step == 0
    assert (
        torch.count_nonzero(moments.exp_avg) == 0 and torch.count_nonzero(moments.exp_avg_sq) == 0
    )
    g = torch.tensor([[0.5, -0.25, 0.0, 1.0, 2.0, -3.0]])
    # t = 1: m_hat = g, v_hat = g^2, so g_hat = g / (|g| + eps).
    expected = g / (g.abs() + 1e-8)
    torch.testing.assert_close(adam_precondition(g, moments), expected)


def test_preconditioning_uses_the_optimizers_real_moments() -> None:
    torch.manual_seed(1)
    model = build_model("deepfm", FIELD_DIMS, embed_dim=3, hidden_dims=(5,), dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.95), eps=1e-6)
    x, targets = _data(rows=32, seed=2)
    for _ in range(3):
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(model(x), targets).backward()
        optimizer.step()
    moments = head_moments(optimizer, model.head)
    assert moments.step == 3
    state_w = optimizer.state[model.head.weight]
    state_b = optimizer.state[model.head.bias]
    m = torch.cat([state_w["exp_avg"].reshape(-1), state_b["exp_avg"].reshape(-1)])
    v = torch.cat([state_w["exp_avg_sq"].reshape(-1), state_b["exp_avg_sq"].reshape(-1)])
    assert torch.count_nonzero(m) > 0
    g = torch.randn(4, 6, generator=torch.Generator().manual_seed(3)) * 1e-2
    t = 4
    m_hat = (0.8 * m + 0.2 * g) / (1 - 0.8**t)
    v_hat = (0.95 * v + 0.05 * g * g) / (1 - 0.95**t)
    expected = m_hat / (v_hat.sqrt() + 1e-6)
    torch.testing.assert_close(adam_precondition(g, moments), expected)
    # The preconditioned vector is the step Adam takes for that gradient (divided by -lr).
    model.head.weight.grad = g[0, :5].reshape(1, 5).clone()
    model.head.bias.grad = g[0, 5:].clone()
    before = torch.cat([model.head.weight.reshape(-1), model.head.bias]).detach().clone()
    for parameter in model.parameters():
        if parameter is not model.head.weight and parameter is not model.head.bias:
            parameter.grad = None
    optimizer.step()
    after = torch.cat([model.head.weight.reshape(-1), model.head.bias]).detach()
    torch.testing.assert_close((before - after) / 0.01, expected[0], rtol=1e-4, atol=1e-5)


def test_gradient_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="logits"):
        last_layer_gradients(torch.zeros(3, 1), torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="features"):
        last_layer_gradients(torch.zeros(3), torch.zeros(2, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="targets"):
        last_layer_gradients(torch.zeros(3), torch.zeros(3, 2), torch.zeros(2))
    model = build_model("deepfm", FIELD_DIMS, embed_dim=3, hidden_dims=(5,))
    with pytest.raises(ValueError, match="optimizer"):
        head_moments(torch.optim.SGD(model.parameters(), lr=0.1), model.head)
    moments = head_moments(torch.optim.Adam(model.parameters()), model.head)
    with pytest.raises(ValueError, match="gradients"):
        adam_precondition(torch.zeros(2, 3), moments)
