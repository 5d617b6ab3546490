"""Monte Carlo dropout denoising (docs/design/ENGINE.md, Eq. 16).

With dropout on and BatchNorm in eval mode, N passes over the selected rows
give each row N losses; their mean m and variance v (Welford's update, never
E[x^2] - E[x]^2, which can go negative) score the row by the upper confidence
bound U = m + 1.96 sqrt(v / N). Rows with the highest U are the likeliest to
carry a wrong label.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

UCB_Z = 1.96


def ucb_scores(mean: torch.Tensor, variance: torch.Tensor, passes: int) -> torch.Tensor:
    """U = mean + 1.96 * sqrt(variance / passes), per row."""
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes: expected a positive integer, got {passes!r}")
    if mean.shape != variance.shape:
        raise ValueError(
            f"variance: expected shape {tuple(mean.shape)}, got {tuple(variance.shape)}"
        )
    return mean + UCB_Z * torch.sqrt(variance.clamp_min(0.0) / passes)


class RunningMoments:
    """Welford's running mean and (sample) variance over passes, per row."""

    def __init__(self, size: int, device: torch.device | str = "cpu") -> None:
        self.count = 0
        self.mean = torch.zeros(size, dtype=torch.float64, device=device)
        self._m2 = torch.zeros(size, dtype=torch.float64, device=device)

    def update(self, values: torch.Tensor) -> None:
        values = values.to(torch.float64)
        self.count += 1
        delta = values - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (values - self.mean)

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased sample variance (0 with fewer than two passes); never negative."""
        if self.count < 2:
            return torch.zeros_like(self.mean)
        return (self._m2 / (self.count - 1)).clamp_min(0.0)


def enable_mc_dropout(model: nn.Module) -> None:
    """Eval mode everywhere (BatchNorm uses its running statistics) except dropout layers."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()


@torch.no_grad()
def mc_dropout_scores(
    model: nn.Module,
    features: np.ndarray | torch.Tensor,
    labels: torch.Tensor,
    *,
    passes: int,
    batch_size: int,
    device: torch.device,
    progress: Callable[[float, str], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row loss mean, variance and UCB score under ``passes`` MC-dropout passes.

    features: (n, F) ids; labels: (n,) targets the loss is taken against.
    Returns three (n,) float64 CPU tensors (mean, variance, U). The model's
    training mode is restored afterwards.
    """
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 2:
        raise ValueError(f"passes: expected an integer of at least 2, got {passes!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    x_all = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    if x_all.ndim != 2:
        raise ValueError(f"features: expected an (n, F) array, got shape {tuple(x_all.shape)}")
    n = x_all.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},), got {tuple(labels.shape)}")
    was_training = model.training
    enable_mc_dropout(model)
    moments = RunningMoments(n, device=device)
    batches = max(1, -(-n // batch_size))
    try:
        for pass_index in range(passes):
            losses = torch.empty(n, dtype=torch.float32, device=device)
            for b in range(batches):
                start, stop = b * batch_size, min(n, (b + 1) * batch_size)
                x = x_all[start:stop].to(device)
                y = labels[start:stop].to(device=device, dtype=torch.float32)
                logits = model(x)
                losses[start:stop] = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
            moments.update(losses)
            if progress is not None:
                progress((pass_index + 1) / passes, f"MC dropout pass {pass_index + 1}/{passes}")
    finally:
        model.train(was_training)
    mean, variance = moments.mean.cpu(), moments.variance.cpu()
    return mean, variance, ucb_scores(mean, variance, passes)
