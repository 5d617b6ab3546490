"""The features of a job spread over workers, read from its shards."""

from __future__ import annotations

import numpy as np
import pytest

from worker.shards import ShardedFeatures


def test_rows_read_from_shards_equal_the_whole_array() -> None:
    whole = np.random.default_rng(0).integers(0, 1000, (1000, 5)).astype(np.int32)
    bounds = [(0, 300), (300, 600), (600, 900), (900, 1000)]
    loads: list[int] = []

    def load(index: int) -> np.ndarray:
        loads.append(index)
        start, stop = bounds[index]
        return whole[start:stop].copy()

    features = ShardedFeatures(load, bounds, 5)
    assert features.shape == (1000, 5) and features.ndim == 2
    rows = np.array([999, 0, 450, 301, 299, 600])
    np.testing.assert_array_equal(features[rows], whole[rows])
    np.testing.assert_array_equal(features[10:20], whole[10:20])
    assert features[np.array([], dtype=np.int64)].shape == (0, 5)
    loads.clear()
    for start in range(0, 1000, 128):  # ascending pieces read each shard once
        piece = np.arange(start, min(1000, start + 128))
        np.testing.assert_array_equal(features[piece], whole[piece])
    assert len(loads) == len(set(loads)), "no shard read twice"
    features[rows]
    loads.clear()
    again = features[rows]  # a set just read is kept
    np.testing.assert_array_equal(again, whole[rows])
    assert loads == []
    with pytest.raises(IndexError):
        features[np.array([1000])]
