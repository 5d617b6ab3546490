"""Training loops: the proxy's per-round training and a fresh model to early stopping.

Features come in as (n, F) integer arrays or tensors on the CPU; each loop
moves what it trains on to the device once and shuffles with its own seeded
generator. A batch of a single row is never trained on (BatchNorm needs two).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nacs_engine.denoise.label_correction import label_correcting_loss

DEFAULT_BATCH_SIZE = 8192
# Small enough that a coreset of 60 rows still takes 7 steps an epoch: with a floor of 64 it
# took one, and early stopping (patience 2 epochs) could end its training after 3 steps.
MIN_BATCH_SIZE = 8
# With the default batch size, aim for at least this many steps per epoch on small data.
TARGET_STEPS_PER_EPOCH = 16


def default_batch_size(n_rows: int) -> int:
    """8192, or for small data the power of two giving about 16 steps per epoch (at least 8)."""
    if isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 1:
        raise ValueError(f"n_rows: expected a positive integer, got {n_rows!r}")
    if n_rows >= DEFAULT_BATCH_SIZE * TARGET_STEPS_PER_EPOCH:
        return DEFAULT_BATCH_SIZE
    size = 1 << max(0, int(math.floor(math.log2(max(1, n_rows // TARGET_STEPS_PER_EPOCH)))))
    return int(min(DEFAULT_BATCH_SIZE, max(MIN_BATCH_SIZE, size)))


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """Optimizer steps one epoch over ``n_rows`` takes (a trailing single row is skipped)."""
    if n_rows < 2:
        return 0
    full, rest = divmod(n_rows, batch_size)
    return full + (1 if rest >= 2 else 0)


def make_optimizer(
    model: nn.Module, *, learning_rate: float, weight_decay: float
) -> torch.optim.Adam:
    """Adam over all of the model's parameters (the fused implementation where torch has one)."""
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, (int, float))
        or not learning_rate > 0
    ):
        raise ValueError(f"learning_rate: expected a positive number, got {learning_rate!r}")
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, (int, float))
        or not weight_decay >= 0
    ):
        raise ValueError(f"weight_decay: expected a non-negative number, got {weight_decay!r}")
    parameters = list(model.parameters())
    try:
        # The fused kernel updates large embedding tables several times faster.
        return torch.optim.Adam(
            parameters, lr=float(learning_rate), weight_decay=float(weight_decay), fused=True
        )
    except (RuntimeError, ValueError):
        return torch.optim.Adam(
            parameters, lr=float(learning_rate), weight_decay=float(weight_decay)
        )


def as_feature_tensor(features: np.ndarray | torch.Tensor, name: str = "features") -> torch.Tensor:
    """(n, F) integer ids as a CPU tensor (int32 or int64), without copying when possible."""
    if torch.is_tensor(features):
        tensor = features
    else:
        array = np.asarray(features)
        if array.dtype.kind not in "iu":
            raise ValueError(f"{name}: expected integer ids, got dtype {array.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(array.astype(np.int64, copy=False)))
    if tensor.ndim != 2:
        raise ValueError(f"{name}: expected an (n, F) array, got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point():
        raise ValueError(f"{name}: expected integer ids, got dtype {tensor.dtype}")
    return tensor


def _batches(n_rows: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = (
        torch.randperm(n_rows, generator=generator)
        if generator is not None
        else torch.arange(n_rows)
    )
    batches = list(torch.split(order, batch_size))
    if batches and batches[-1].numel() < 2:
        batches.pop()
    return batches


@dataclass
class TrainingLog:
    """What a run of training did: optimizer steps, and per epoch the mean loss and correction."""

    steps: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    epoch_corrections: list[float] = field(default_factory=list)


def train_label_correcting(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    features: np.ndarray | torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    epochs: int,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator,
    start_step: int,
    total_steps: int,
    relabel: bool,
    on_epoch: Callable[[int, float, float], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    report_every: int = 8,
) -> TrainingLog:
    """Train ``model`` for ``epochs`` epochs with the label-correcting loss
    (docs/design/ENGINE.md, Eqs. 11-15).

    features: (n, F) ids; labels: (n,) given labels; weights: (n,) or None.
    The targets of each batch are (1 - e) y + e p with p the model's own
    detached prediction and e = g(t) l(p), t = ``start_step`` + steps taken so
    far, T = ``total_steps``. ``on_epoch(epoch, mean_loss, mean_e)`` is called
    after every epoch and ``on_batch(steps_done, steps_in_epoch)`` every
    ``report_every`` steps within an epoch (either may raise to stop).
    Returns the training log.
    """
    x_all = as_feature_tensor(features)
    n = x_all.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},), got {tuple(labels.shape)}")
    if weights is not None and weights.shape != (n,):
        raise ValueError(f"weights: expected shape ({n},), got {tuple(weights.shape)}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected a positive integer, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size: expected an integer of at least 2, got {batch_size!r}")
    x_all = x_all.to(device)
    y_all = labels.to(device=device, dtype=torch.float32)
    w_all = weights.to(device=device, dtype=torch.float32) if weights is not None else None
    log = TrainingLog()
    model.train()
    for epoch in range(epochs):
        loss_sum, correction_sum, batches_done = 0.0, 0.0, 0
        batches = _batches(n, batch_size, generator)
        for batch in batches:
            batch = batch.to(device)
            logits = model(x_all[batch])
            loss, mean_e = label_correcting_loss(
                logits,
                y_all[batch],
                w_all[batch] if w_all is not None else None,
                start_step + log.steps,
                total_steps,
                relabel=relabel,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            log.steps += 1
            batches_done += 1
            loss_sum += float(loss.detach())
            correction_sum += float(mean_e)
            if on_batch is not None and batches_done % report_every == 0:
                on_batch(batches_done, len(batches))
        mean_loss = loss_sum / max(batches_done, 1)
        mean_correction = correction_sum / max(batches_done, 1)
        log.epoch_losses.append(mean_loss)
        log.epoch_corrections.append(mean_correction)
        if on_epoch is not None:
            on_epoch(epoch, mean_loss, mean_correction)
    return log


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    features: np.ndarray | torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Logits (n,) float32 on the CPU, the model in eval mode (its mode is restored).

    features may be a memory-mapped array: it is read one batch at a time.
    ``on_batch(rows_done, n)`` is called after every batch.
    """
    n = int(features.shape[0])
    was_training = model.training
    model.eval()
    out = torch.empty(n, dtype=torch.float32)
    try:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            x = as_feature_tensor(features[start:stop]).to(device)
            out[start:stop] = model(x).float().cpu()
            if on_batch is not None:
                on_batch(stop, n)
    finally:
        model.train(was_training)
    return out


@dataclass
class FitResult:
    """Early-stopped training: the best epoch (1-based), epochs run and the validation scores."""

    best_epoch: int
    epochs_run: int
    best_score: float
    scores: list[float]
    train_losses: list[float]


def check_min_gain(min_gain: object) -> None:
    """Raise ValueError unless ``min_gain`` is a number in [0, 1)."""
    if (
        isinstance(min_gain, bool)
        or not isinstance(min_gain, (int, float))
        or not 0.0 <= min_gain < 1.0
    ):
        raise ValueError(f"min_gain: expected a number in [0, 1), got {min_gain!r}")


def fit_early_stopping(
    model: nn.Module,
    features: np.ndarray | torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    validate: Callable[[nn.Module], float],
    learning_rate: float,
    weight_decay: float,
    batch_size: int,
    max_epochs: int,
    patience: int,
    device: torch.device,
    generator: torch.Generator,
    on_epoch: Callable[[int, float], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    report_every: int = 8,
    min_gain: float = 0.0,
) -> FitResult:
    """Train on (features, soft targets, weights) until ``validate`` stops improving.

    targets: (n,) in [0, 1]; weights: (n,) or None. ``validate(model)`` returns a
    score where higher is better (e.g. validation AUC). Training stops after
    ``patience`` epochs without improvement or at ``max_epochs``; an epoch improves
    when its score exceeds by more than ``min_gain`` the score of the last epoch that
    improved (0: any rise). The model ends with the weights of its best epoch, whether
    or not that epoch improved by ``min_gain``. ``on_epoch(epoch, score)`` is called after
    every epoch and ``on_batch(steps_done, steps_in_epoch)`` every ``report_every``
    steps within an epoch (either may raise to stop).
    """
    x_all = as_feature_tensor(features)
    n = x_all.shape[0]
    if targets.shape != (n,):
        raise ValueError(f"targets: expected shape ({n},), got {tuple(targets.shape)}")
    if bool(((targets < 0) | (targets > 1)).any()):
        raise ValueError("targets: expected values in [0, 1]")
    if weights is not None and weights.shape != (n,):
        raise ValueError(f"weights: expected shape ({n},), got {tuple(weights.shape)}")
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"max_epochs: expected a positive integer, got {max_epochs!r}")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"patience: expected a positive integer, got {patience!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size: expected an integer of at least 2, got {batch_size!r}")
    check_min_gain(min_gain)
    optimizer = make_optimizer(model, learning_rate=learning_rate, weight_decay=weight_decay)
    x_all = x_all.to(device)
    y_all = targets.to(device=device, dtype=torch.float32)
    w_all = weights.to(device=device, dtype=torch.float32) if weights is not None else None
    best_score, best_epoch, best_state = -math.inf, 0, copy.deepcopy(model.state_dict())
    # The last epoch that improved by more than min_gain, and its score: patience counts from it.
    gain_score, gain_epoch = -math.inf, 0
    scores: list[float] = []
    losses: list[float] = []
    epochs_run = 0
    for epoch in range(1, max_epochs + 1):
        model.train()
        loss_sum, batches_done = 0.0, 0
        batches = _batches(n, batch_size, generator)
        for batch in batches:
            batch = batch.to(device)
            logits = model(x_all[batch])
            per_row = F.binary_cross_entropy_with_logits(logits, y_all[batch], reduction="none")
            if w_all is None:
                loss = per_row.mean()
            else:
                w = w_all[batch]
                loss = (per_row * w).sum() / w.sum().clamp_min(1e-12)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            batches_done += 1
            if on_batch is not None and batches_done % report_every == 0:
                on_batch(batches_done, len(batches))
        epochs_run = epoch
        losses.append(loss_sum / max(batches_done, 1))
        score = float(validate(model))
        scores.append(score)
        if on_epoch is not None:
            on_epoch(epoch, score)
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
        if score > gain_score + min_gain:
            gain_score, gain_epoch = score, epoch
        elif epoch - gain_epoch >= patience:
            break
    model.load_state_dict(best_state)
    return FitResult(best_epoch, epochs_run, best_score, scores, losses)
