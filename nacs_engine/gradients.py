"""Closed-form last-layer gradients and their Adam preconditioning (docs/design/ENGINE.md,
Eqs. 7-9).

For a model whose logit is head(h) + other terms, with p = sigmoid(logit) and
the binary cross-entropy against a soft target y*, dL/dlogit = p - y*, so the
gradient of the head's weight and bias is g = (p - y*) * [h, 1]: H + 1 numbers
per row, computed for a whole batch at once, at their natural scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AdamMoments:
    """Adam's state for the head's parameters, flattened as [weight, bias].

    exp_avg, exp_avg_sq: (H + 1,) first and second moments; step: the number of
    optimizer steps taken so far (0 before training).
    """

    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: int
    beta1: float
    beta2: float
    eps: float


def last_layer_gradients(
    logits: torch.Tensor, features: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Per-row gradient of BCE(sigmoid(logit), target) w.r.t. the head's [weight, bias].

    logits: (B,), features: (B, H) penultimate features, targets: (B,) in [0, 1].
    Returns (B, H + 1): (p - y*) * [h, 1].
    """
    if logits.ndim != 1:
        raise ValueError(f"logits: expected shape (B,), got {tuple(logits.shape)}")
    if features.ndim != 2 or features.shape[0] != logits.shape[0]:
        raise ValueError(
            f"features: expected shape ({logits.shape[0]}, H), got {tuple(features.shape)}"
        )
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets: expected shape {tuple(logits.shape)}, got {tuple(targets.shape)}"
        )
    residual = (torch.sigmoid(logits) - targets.to(logits.dtype)).unsqueeze(1)  # (B, 1)
    ones = torch.ones_like(residual)
    return torch.cat([residual * features, residual * ones], dim=1)  # (B, H + 1)


def head_moments(optimizer: torch.optim.Optimizer, head: nn.Linear) -> AdamMoments:
    """Read Adam's real moments and step count for ``head.weight`` and ``head.bias``.

    Before the first step the moments are zero and the step count is 0.
    """
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise ValueError(f"optimizer: expected torch.optim.Adam, got {type(optimizer).__name__}")
    if not isinstance(head, nn.Linear) or head.out_features != 1 or head.bias is None:
        raise ValueError("head: expected an nn.Linear(H, 1) with a bias")
    group = _group_of(optimizer, head.weight)
    beta1, beta2 = group["betas"]
    parts_m, parts_v, steps = [], [], []
    for parameter in (head.weight, head.bias):
        state = optimizer.state.get(parameter, {})
        if "exp_avg" in state:
            parts_m.append(state["exp_avg"].detach().reshape(-1))
            parts_v.append(state["exp_avg_sq"].detach().reshape(-1))
            steps.append(int(state["step"]))
        else:
            parts_m.append(torch.zeros(parameter.numel(), device=parameter.device))
            parts_v.append(torch.zeros(parameter.numel(), device=parameter.device))
            steps.append(0)
    return AdamMoments(
        exp_avg=torch.cat(parts_m).float(),
        exp_avg_sq=torch.cat(parts_v).float(),
        step=max(steps),
        beta1=float(beta1),
        beta2=float(beta2),
        eps=float(group["eps"]),
    )


def _group_of(optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> dict:
    for group in optimizer.param_groups:
        if any(p is parameter for p in group["params"]):
            return group
    raise ValueError("head: its parameters are not optimised by this optimizer")


def adam_precondition(gradients: torch.Tensor, moments: AdamMoments) -> torch.Tensor:
    """The update direction Adam would take for each row's gradient (Eqs. 7-9).

    m_hat = (b1 m + (1 - b1) g) / (1 - b1^t), v_hat = (b2 v + (1 - b2) g^2) / (1 - b2^t),
    g_hat = m_hat / (sqrt(v_hat) + eps), with t = step + 1 (t = 1 before training).
    gradients: (B, H + 1). Returns (B, H + 1), float32.
    """
    if gradients.ndim != 2 or gradients.shape[1] != moments.exp_avg.shape[0]:
        raise ValueError(
            f"gradients: expected shape (B, {moments.exp_avg.shape[0]}), "
            f"got {tuple(gradients.shape)}"
        )
    t = moments.step + 1
    g = gradients.float()
    m = moments.exp_avg.to(g.device)
    v = moments.exp_avg_sq.to(g.device)
    m_hat = (moments.beta1 * m + (1.0 - moments.beta1) * g) / (1.0 - moments.beta1**t)
    v_hat = (moments.beta2 * v + (1.0 - moments.beta2) * g * g) / (1.0 - moments.beta2**t)
    return m_hat / (v_hat.sqrt() + moments.eps)  # (B, H + 1)
