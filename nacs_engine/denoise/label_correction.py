"""Progressive label correction (ProSelfLC; docs/design/ENGINE.md, Eqs. 11-15).

y* = (1 - e) y + e p, with e = g(t) * l(p):
  global trust g(t) = 1 / (1 + exp(-16 (t / T - 0.5))), t optimizer steps so far,
      T the planned total of steps;
  local trust l(p) = 1 - H(p) / ln 2, H the binary entropy of the model's p.
A confident model late in training moves the target towards its own prediction;
an unsure one (p near 0.5) or an early one leaves the label as given.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GLOBAL_TRUST_SLOPE = 16.0
_PROBABILITY_FLOOR = 1e-7


def _check_steps(step: float, total_steps: float) -> None:
    if (
        isinstance(total_steps, bool)
        or not isinstance(total_steps, (int, float))
        or not total_steps > 0
    ):
        raise ValueError(f"total_steps: expected a positive number, got {total_steps!r}")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not step >= 0:
        raise ValueError(f"step: expected a non-negative number, got {step!r}")


def global_trust(step: float, total_steps: float) -> float:
    """g(t) = 1 / (1 + exp(-16 (t / T - 0.5))); 0.5 at t = T / 2, about 1 at t = T."""
    _check_steps(step, total_steps)
    return 1.0 / (1.0 + math.exp(-GLOBAL_TRUST_SLOPE * (step / total_steps - 0.5)))


def local_trust(probs: torch.Tensor) -> torch.Tensor:
    """l(p) = 1 - H(p) / ln 2 for probabilities (B,): 0 at p = 0.5, 1 as p -> 0 or 1."""
    if not torch.is_tensor(probs) or not probs.is_floating_point():
        raise ValueError("probs: expected a floating-point tensor")
    p = probs.clamp(_PROBABILITY_FLOOR, 1.0 - _PROBABILITY_FLOOR)
    entropy = -(p * p.log() + (1.0 - p) * (1.0 - p).log())
    return (1.0 - entropy / math.log(2.0)).clamp(0.0, 1.0)


def correction_strength(probs: torch.Tensor, step: float, total_steps: float) -> torch.Tensor:
    """e = g(t) * l(p), per row (B,)."""
    return global_trust(step, total_steps) * local_trust(probs)


def corrected_targets(
    labels: torch.Tensor, probs: torch.Tensor, step: float, total_steps: float
) -> torch.Tensor:
    """Soft targets y* = (1 - e) y + e p, (B,), in [0, 1]."""
    if labels.shape != probs.shape:
        raise ValueError(f"labels: expected shape {tuple(probs.shape)}, got {tuple(labels.shape)}")
    e = correction_strength(probs, step, total_steps)
    return ((1.0 - e) * labels.to(probs.dtype) + e * probs).clamp(0.0, 1.0)


def label_correcting_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    step: float,
    total_steps: float,
    *,
    relabel: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted BCE of ``logits`` (B,) against corrected targets; the targets use the
    model's own detached prediction. Returns (loss, mean correction strength e).

    With ``relabel=False`` the targets are the labels and e is 0.
    """
    if logits.ndim != 1 or labels.shape != logits.shape:
        raise ValueError(f"labels: expected shape {tuple(logits.shape)}, got {tuple(labels.shape)}")
    labels = labels.to(logits.dtype)
    if relabel:
        probs = torch.sigmoid(logits.detach())
        e = correction_strength(probs, step, total_steps)
        targets = ((1.0 - e) * labels + e * probs).clamp(0.0, 1.0)
        mean_e = e.mean()
    else:
        targets = labels
        mean_e = torch.zeros((), device=logits.device)
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # (B,)
    if weights is None:
        return losses.mean(), mean_e
    if weights.shape != logits.shape:
        raise ValueError(
            f"weights: expected shape {tuple(logits.shape)}, got {tuple(weights.shape)}"
        )
    weights = weights.to(logits.dtype)
    return (losses * weights).sum() / weights.sum().clamp_min(1e-12), mean_e
