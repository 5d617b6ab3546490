"""Exact duplicates among the candidates, and click probabilities pooled over them.

Where rows have the same encoded values (the same id in every field, numbers in the
same bucket), no model can tell them apart, and the best estimate of their click
probability is the click rate of the group. Data of few fields (survey answers, a
handful of ad attributes) has groups of hundreds or thousands of rows, and there the
group's own rate can be sharper than a teacher that has seen each group for a few
steps. ``pooled_probabilities`` blends the two: the labels of a row's duplicates in
the teacher's other folds, with the teacher's out-of-fold probability counted as
``prior_rows`` more rows. A row without duplicates in other folds keeps the teacher's
probability.
"""

from __future__ import annotations

import numpy as np

# A group of at least this many identical rows is crowded (``crowded_share``): its own
# click rate is known to a few points, whatever the teacher says.
CROWDED_GROUP_ROWS = 100
# Rows read at a time: bounds the (rows, fields) uint64 copy to 0.5 MiB a field.
_HASH_ROWS = 1 << 16
# Fixed multipliers, so that the groups do not depend on a seed.
_HASH_SEED = 20261207


def duplicate_groups(
    features: np.ndarray, rows: np.ndarray, *, verify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Group ``rows`` of ``features`` ((n, F) integer ids) by their exact values.

    Returns (group, size): group (len(rows),) int64, the group of each row, and
    size (groups,) int64, the rows in each group. Rows are grouped by a 64-bit
    hash of their values. With ``verify``, every row of a group of two or more is
    then compared with the group's first row, read once, and one that differs (a
    collision) gets a group of its own, so that rows of different values never
    share a group; without it (one pass over the rows, for counting), two rows
    share a group by chance about once in 2**64 pairs.
    """
    rows = np.asarray(rows, dtype=np.int64)
    multipliers = _multipliers(features.shape[1])
    keys = np.empty(rows.shape[0], dtype=np.uint64)
    for start in range(0, rows.shape[0], _HASH_ROWS):
        block = np.asarray(features[rows[start : start + _HASH_ROWS]]).astype(np.uint64)
        keys[start : start + block.shape[0]] = (block * multipliers).sum(axis=1, dtype=np.uint64)
    _, first, group, size = np.unique(
        keys, return_index=True, return_inverse=True, return_counts=True
    )
    group = group.astype(np.int64, copy=False)
    if not verify:
        return group, size.astype(np.int64)
    # The first row of each group of two or more, read in the order of the rows.
    shared_groups = np.flatnonzero(size > 1)
    leader_of = np.full(size.shape[0], -1, dtype=np.int64)
    leader_of[shared_groups] = np.arange(shared_groups.shape[0])
    leaders = _read(features, rows[first[shared_groups]])
    shared = np.flatnonzero(size[group] > 1)
    split = []
    for start in range(0, shared.shape[0], _HASH_ROWS):
        part = shared[start : start + _HASH_ROWS]
        block = np.asarray(features[rows[part]])
        split.append(part[np.any(block != leaders[leader_of[group[part]]], axis=1)])
    collided = np.concatenate(split) if split else np.zeros(0, dtype=np.int64)
    if collided.size:
        group[collided] = np.arange(first.shape[0], first.shape[0] + collided.size)
        size = np.bincount(group)
    return group, size.astype(np.int64)


def _read(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``features[rows]``, read in ascending order of the rows, in blocks."""
    order = np.argsort(rows, kind="stable")
    values = np.empty((rows.shape[0], features.shape[1]), dtype=features.dtype)
    for start in range(0, rows.shape[0], _HASH_ROWS):
        part = order[start : start + _HASH_ROWS]
        values[part] = np.asarray(features[rows[part]])
    return values


def pooled_probabilities(
    probabilities: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    group: np.ndarray,
    prior_rows: float,
) -> np.ndarray:
    """Each row's click probability from its duplicates in the other folds and the teacher's.

    probabilities: (n,) the teacher's out-of-fold click probabilities; labels: (n,) 0/1;
    folds: (n,) the teacher's fold of each row; group: from ``duplicate_groups``.
    Returns (n,) float64: (clicks among the row's duplicates in other folds + prior_rows
    * p) / (those duplicates + prior_rows), prior_rows > 0. Like the teacher's, a row's
    probability owes nothing to the labels of its own fold: every row of a group and fold
    gets the same one, whatever its label, and a row without duplicates in other folds
    keeps p.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if (
        isinstance(prior_rows, bool)
        or not isinstance(prior_rows, (int, float))
        or not prior_rows > 0
    ):
        raise ValueError(f"prior_rows: expected a number > 0, got {prior_rows!r}")
    if p.size == 0:
        return p
    fold = np.asarray(folds, dtype=np.int64)
    # the rows and clicks of each group, less those of the group's part in the row's fold
    _, part = np.unique(group * (int(fold.max()) + 1) + fold, return_inverse=True)
    others = np.bincount(group)[group] - np.bincount(part)[part]
    other_clicks = np.bincount(group, weights=y)[group] - np.bincount(part, weights=y)[part]
    pooled = (other_clicks + prior_rows * p) / (others + prior_rows)
    return np.where(others > 0, pooled, p)


def _multipliers(n_fields: int) -> np.ndarray:
    """(n_fields,) odd uint64 multipliers of the row hash (a sum of id * multiplier)."""
    rng = np.random.default_rng(_HASH_SEED)
    return rng.integers(0, 2**62, size=n_fields, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
