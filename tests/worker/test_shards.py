"""The features of a job spread over workers, read from its shards."""

from __future__ import annotations

import numpy as np
import pytest

from worker.shards import ShardedFeatures, ShardPlan


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


def _plan(encoding: str) -> ShardPlan:
    return ShardPlan(
        rows=4, clicks=1, shard_rows=4, bounds=[(0, 4)], teacher_folds=2, field_names=["a"],
        field_dims=[3], fingerprint="f", encoding=encoding, metadata={}, loading_seconds=0.0,
        shard_seconds=[0.0], planned_at=0.0,
    )


@pytest.mark.parametrize(
    "later, reused",
    [
        ({"a": ["x", "y", "y", "z"], "label": [0, 1, 0, 0]}, True),
        ({"a": ["x", "y", "y", "z", "z"], "label": [0, 1, 0, 0, 0]}, False),  # a row more
        ({"a": ["x", "w", "w", "z"], "label": [0, 1, 0, 0]}, False),  # same sizes, other values
        ({"a": ["x", "y", "y", "z"], "label": [0, 1, 1, 0]}, False),  # another click
    ],
)
def test_a_later_run_reuses_the_shards_only_of_the_same_data(
    tmp_path, later: dict[str, list], reused: bool, monkeypatch
) -> None:
    from types import SimpleNamespace

    import pyarrow as pa

    from nacs_engine.data.encoding import Encoder
    from worker import shards
    from worker.settings import SharedSettings
    from worker.storage import join_uri, write_bytes

    def fitted(columns: dict[str, list]) -> Encoder:
        return Encoder(min_count=1).fit(pa.table(columns))

    settings = SharedSettings(storage_uri=str(tmp_path / "storage"))
    store = SimpleNamespace(settings=settings)
    sharding = shards.Sharding(store, None, "job1", 2)  # type: ignore[arg-type]
    earlier = _plan(fitted({"a": ["x", "y", "y", "z"], "label": [0, 1, 0, 0]}).fitted_digest())
    plan_uri = join_uri(shards.scratch_uri(settings, "job1"), shards.PLAN_FILE)
    write_bytes(plan_uri, earlier.model_dump_json().encode(), settings)
    fresh = _plan("fresh")
    encoded, enqueued = [], []
    monkeypatch.setattr(sharding, "_encode", lambda *args: encoded.append(1) or fresh)
    monkeypatch.setattr(sharding, "_enqueue", enqueued.append)
    sharding.hand_over(
        None, fitted(later), None, report=lambda *args: None,
        retried=lambda what, phase, step: step(), workdir=str(tmp_path),
    )
    assert enqueued == [earlier if reused else fresh]
    assert encoded == ([] if reused else [1])
