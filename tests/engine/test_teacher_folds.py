"""The teacher fold by fold (as separate jobs run it) equals the teacher cross-fitted at once."""

from __future__ import annotations

import numpy as np
import torch

from nacs_engine.config import SelectionConfig
from nacs_engine.data.synthetic import make_synthetic_ctr
from nacs_engine.teacher import assemble_teacher, cross_fit, fold_assignment, train_fold


class RowsOnly:
    """Features that answer only ``features[rows]``, as a worker's shards do."""

    def __init__(self, features: np.ndarray) -> None:
        self._features = features
        self.shape = features.shape

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        assert isinstance(rows, np.ndarray)
        return self._features[rows].copy()


def test_folds_trained_one_by_one_give_the_cross_fitted_teacher() -> None:
    data = make_synthetic_ctr(3000, n_fields=6, flip_rate=0.1, seed=2).dataset
    config = SelectionConfig(ratio=0.1, seed=5, teacher_folds=3)
    rows = np.sort(np.random.default_rng(0).choice(data.n_rows, 2700, replace=False))
    device = torch.device("cpu")
    whole = cross_fit(data.features, data.labels, rows, data.field_dims, config, device=device)
    folds = fold_assignment(rows.shape[0], config)
    np.testing.assert_array_equal(folds, whole.folds)
    results = [
        train_fold(
            RowsOnly(data.features), data.labels, rows, folds, fold, data.field_dims, config,
            device=device,
        )
        for fold in range(3)
    ]
    joined = assemble_teacher(rows, folds, data.labels, results, seconds=0.0)
    np.testing.assert_array_equal(joined.logits, whole.logits)
    np.testing.assert_array_equal(joined.probabilities, whole.probabilities)
    assert joined.epochs == whole.epochs
