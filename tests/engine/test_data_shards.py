"""Shards of consecutive rows: the plan, batches cut at shard boundaries, encoding shard by
shard, and errors that name their shard."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from nacs_engine.data import Encoder
from nacs_engine.data.reading import ArrowSource, open_source
from nacs_engine.data.shards import ShardedSource, encode_shards, shard_bounds
from nacs_engine.errors import DataError


def table(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "label": (rng.random(rows) < 0.3).astype(np.int64),
            "city": rng.integers(0, 30, rows),
            "device": [f"d{value}" for value in rng.integers(0, 7, rows)],
        }
    )


def test_shard_bounds_cover_every_row_once() -> None:
    assert shard_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_bounds(8, 4) == [(0, 4), (4, 8)]
    assert shard_bounds(0, 4) == []
    with pytest.raises(ValueError, match="shard_rows"):
        shard_bounds(10, 0)


def test_batches_are_cut_at_shard_boundaries() -> None:
    source = ShardedSource(ArrowSource(table(1000), batch_rows=300), 250)
    sizes, shards = [], []
    for batch, _ in source.batches():
        sizes.append(batch.num_rows)
        shards.append(source.shard)
    assert sum(sizes) == 1000
    assert sizes == [250, 50, 200, 100, 150, 150, 100]
    assert shards == [0, 1, 1, 2, 2, 3, 3]


def test_shards_encode_as_the_whole_does() -> None:
    data = table(1000, seed=3)
    whole = Encoder(min_count=2).fit(data).transform(data)
    source = ShardedSource(ArrowSource(data, batch_rows=128), 300)
    encoder = Encoder(min_count=2).fit(source)
    shards = list(encode_shards(encoder, source, encoder.fitted_rows))
    assert [shard.n_rows for shard in shards] == [300, 300, 300, 100]
    np.testing.assert_array_equal(np.concatenate([s.features for s in shards]), whole.features)
    np.testing.assert_array_equal(np.concatenate([s.labels for s in shards]), whole.labels)
    assert all(shard.field_dims == whole.field_dims for shard in shards)


def _fit_error(source: ShardedSource, **encoder) -> DataError:
    """The error of fitting an encoder on ``source`` in shards, as a shard job raises it."""
    with pytest.raises(DataError) as raised, source.naming_shard():
        Encoder(**encoder).fit(source)
    return raised.value


def _sharded(data: dict) -> ShardedSource:
    return ShardedSource(ArrowSource(pa.table(data), batch_rows=128), 300)


def test_a_bad_label_names_its_shard() -> None:
    data = table(1000).to_pydict()
    data["label"][620] = 2
    error = _fit_error(_sharded(data))
    assert error.code == "labels_not_binary"
    assert error.message.startswith("shard 2 (from row 600)")
    # in the first shard (where a missing column is found too), no shard is named
    data["label"][620], data["label"][10] = 1, 2
    assert "shard" not in _fit_error(_sharded(data)).message
    assert _fit_error(_sharded(data), label_column="click").message.startswith("label_column:")


def test_labels_written_minus_one_and_one_hold_across_shards() -> None:
    """The fit over every shard reads the -1/1 convention, and a 0 in a later shard of such
    data is refused, naming the shard."""
    data = table(1000).to_pydict()
    data["label"] = [1 if label else -1 for label in data["label"]]
    source = _sharded(data)
    encoder = Encoder(min_count=2).fit(source)
    assert encoder.fitted_labels == "-1/1"
    shards = list(encode_shards(encoder, source, encoder.fitted_rows))
    labels = np.concatenate([shard.labels for shard in shards])
    np.testing.assert_array_equal(labels, (np.array(data["label"]) > 0).astype(np.float32))
    data["label"][700] = 0
    error = _fit_error(_sharded(data))
    assert error.code == "labels_not_binary"
    assert error.message.startswith("shard 2 (from row 600)")
    assert "0 (row 700)" in error.message


def test_a_json_lines_key_that_no_object_holds_is_the_whole_datas_error(tmp_path) -> None:
    """Found once every shard is read, it names no shard."""
    path = tmp_path / "clicks.jsonl"
    rows = table(1000).to_pylist()
    path.write_text("".join(f'{{"label": {r["label"]}, "city": {r["city"]}}}\n' for r in rows))
    source = ShardedSource(open_source(path, column_names=["label", "cty"], batch_rows=128), 300)
    error = _fit_error(source)
    assert error.code == "column_missing"
    assert error.message.startswith("column_names: no object of")
    assert source.keys_without_values == ("cty",)
