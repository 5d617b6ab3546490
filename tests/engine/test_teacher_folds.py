"""The teacher fold by fold (as separate jobs run it, each on the threads it gets among the
others) equals the teacher cross-fitted in one call, its folds trained in turn or at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from nacs_engine.config import SelectionConfig
from nacs_engine.data.synthetic import make_synthetic_ctr
from nacs_engine.runtime import one_lane_of
from nacs_engine.teacher import assemble_teacher, cross_fit, fold_assignment, train_fold


class RowsOnly:
    """Features that answer only ``features[rows]``, as a worker's shards do."""

    def __init__(self, features: np.ndarray) -> None:
        self._features = features
        self.shape = features.shape

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        assert isinstance(rows, np.ndarray)
        return self._features[rows].copy()


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_folds_trained_one_by_one_give_the_cross_fitted_teacher(threads: int) -> None:
    data = make_synthetic_ctr(3000, n_fields=6, flip_rate=0.1, seed=2).dataset
    config = SelectionConfig(ratio=0.1, seed=5, teacher_folds=3)
    rows = np.sort(np.random.default_rng(0).choice(data.n_rows, 2700, replace=False))
    device = torch.device("cpu")
    seen: list[float] = []
    with torch_threads(threads):  # with 2, two folds train at once, one thread each
        whole = cross_fit(
            data.features,
            data.labels,
            rows,
            data.field_dims,
            config,
            device=device,
            progress=lambda fraction, message: seen.append(fraction),
        )
    assert seen[-1] == 1.0 and all(b >= a for a, b in zip(seen, seen[1:], strict=False))
    folds = fold_assignment(rows.shape[0], config)
    np.testing.assert_array_equal(folds, whole.folds)
    # each fold as a job of its own, on the threads it gets among the others (a shard job)
    with torch_threads(threads), one_lane_of(device, 3):
        results = [
            train_fold(
                RowsOnly(data.features),
                data.labels,
                rows,
                folds,
                fold,
                data.field_dims,
                config,
                device=device,
            )
            for fold in range(3)
        ]
    joined = assemble_teacher(rows, folds, data.labels, results, seconds=0.0)
    np.testing.assert_array_equal(joined.logits, whole.logits)
    np.testing.assert_array_equal(joined.probabilities, whole.probabilities)
    assert joined.epochs == whole.epochs
    assert joined.summary() == whole.summary() | {"seconds": 0.0}


def test_a_failure_in_one_fold_stops_the_folds_trained_beside_it() -> None:
    data = make_synthetic_ctr(3000, n_fields=6, flip_rate=0.1, seed=2).dataset
    config = SelectionConfig(ratio=0.1, seed=5, teacher_folds=4)
    rows = np.arange(data.n_rows)
    calls: list[str] = []
    guard = threading.Lock()

    def progress(fraction: float, message: str) -> None:
        with guard:
            calls.append(message)
            if len(calls) == 3:
                raise RuntimeError("cancelled by the user")

    with torch_threads(2), pytest.raises(RuntimeError, match="cancelled by the user"):
        cross_fit(
            data.features,
            data.labels,
            rows,
            data.field_dims,
            config,
            device=torch.device("cpu"),
            progress=progress,
        )
    # the other fold stopped at its next report, and the folds not started never ran
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("threads", "lanes", "each"), [(2, 2, 1), (4, 2, 2), (16, 2, 8), (4, 3, 1)]
)
def test_models_trained_at_once_share_the_torch_threads(
    threads: int, lanes: int, each: int
) -> None:
    from nacs_engine.runtime import SharedProgress, train_at_once

    with torch_threads(threads):
        seen = train_at_once([torch.get_num_threads] * 4, lanes, SharedProgress())
        assert torch.get_num_threads() == threads  # given back afterwards
    assert seen == [each] * 4


def test_the_error_that_stopped_the_others_is_the_one_raised() -> None:
    import time

    from nacs_engine.runtime import SharedProgress, train_at_once

    def broken_pipe() -> None:
        raise BrokenPipeError("stderr closed")

    for _ in range(30):
        shared = SharedProgress()

        def failing(shared: SharedProgress = shared) -> None:
            time.sleep(0.001)
            shared.call(broken_pipe)

        def reporting(shared: SharedProgress = shared) -> None:
            while True:  # stops with SelectionCancelled once the other failed
                shared.call(lambda: None)

        with torch_threads(2), pytest.raises(BrokenPipeError):
            train_at_once([failing, reporting], 2, shared)


def test_teacher_epochs_caps_every_fold_and_keys_the_teacher_cache() -> None:
    from nacs_engine.teacher import TeacherCache

    data = make_synthetic_ctr(3000, n_fields=6, flip_rate=0.1, seed=2).dataset
    rows = np.arange(data.n_rows)
    cache = TeacherCache()

    def teacher(**options: int):
        config = SelectionConfig(ratio=0.1, seed=5, teacher_folds=3, **options)
        return cache.get(
            data.features, data.labels, rows, data.field_dims, config, device=torch.device("cpu")
        )

    automatic, capped = teacher(), teacher(teacher_epochs=1)
    # patience 1: a fold not capped at one epoch trains at least two
    assert min(automatic.epochs) >= 2
    assert capped.epochs == [1, 1, 1]
    assert capped.summary()["best_epochs"] == capped.summary()["max_epochs"] == [1, 1, 1]
    summary = automatic.summary()
    assert summary["max_epochs"] == [20, 20, 20]  # 500,000 row visits / 2,000 rows, at most 20
    assert all(
        1 <= best <= epochs < 20
        for best, epochs in zip(summary["best_epochs"], summary["epochs"], strict=True)
    )
    assert teacher(teacher_epochs=1) is capped and teacher() is automatic
