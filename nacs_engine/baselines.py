"""Random baselines: uniform, stratified (same click rate) and balanced (50/50).

Each returns the selected positions and their weights; the weights of the
balanced baseline restore the data's click rate, the others are all 1.
"""

from __future__ import annotations

import numpy as np


def class_quota(labels: np.ndarray, k: int, class_balance: str) -> tuple[int, int]:
    """How many positives and negatives a coreset of ``k`` rows takes.

    stratified keeps the click rate of ``labels``; balanced asks for k/2 each;
    both are clipped to what the data holds. Returns (n_positive, n_negative).
    """
    n_pos = int(np.count_nonzero(labels > 0.5))
    n_neg = int(labels.shape[0]) - n_pos
    if class_balance == "balanced":
        want_pos = k // 2
    elif class_balance == "stratified":
        want_pos = int(round(k * n_pos / max(n_pos + n_neg, 1)))
    else:
        raise ValueError(f"class_balance: expected stratified or balanced, got {class_balance!r}")
    take_pos = min(max(want_pos, k - n_neg), n_pos)
    return take_pos, k - take_pos


def prior_weights(selected_labels: np.ndarray, data_click_rate: float) -> np.ndarray:
    """Weights (mean 1) that make the weighted click rate of the selection equal
    ``data_click_rate``."""
    positive = selected_labels > 0.5
    share = float(positive.mean()) if positive.size else 0.0
    weights = np.ones(selected_labels.shape[0], dtype=np.float64)
    if 0.0 < share < 1.0:
        weights[positive] = data_click_rate / share
        weights[~positive] = (1.0 - data_click_rate) / (1.0 - share)
    return (weights / weights.mean()).astype(np.float32)


def random_rows(
    labels: np.ndarray, k: int, method: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Select ``k`` rows by ``method`` (random, stratified, balanced). Returns (rows, weights)."""
    n = labels.shape[0]
    if method == "random":
        rows = np.sort(rng.choice(n, size=k, replace=False))
        return rows.astype(np.int64), np.ones(k, dtype=np.float32)
    n_pos, n_neg = class_quota(labels, k, "balanced" if method == "balanced" else "stratified")
    positives = np.flatnonzero(labels > 0.5)
    negatives = np.flatnonzero(labels <= 0.5)
    rows = np.sort(
        np.concatenate(
            [
                rng.choice(positives, size=n_pos, replace=False),
                rng.choice(negatives, size=n_neg, replace=False),
            ]
        )
    ).astype(np.int64)
    if method == "balanced":
        return rows, prior_weights(labels[rows], float((labels > 0.5).mean()))
    return rows, np.ones(k, dtype=np.float32)
