"""Coreset: reading, take() on pandas/arrow/numpy, torch Subset and WeightedRandomSampler."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nacs_client import Coreset, Manifest
from nacs_client.coreset import open_uri

N_ROWS = 50
ROWS = np.array([2, 3, 11, 17, 30, 49], dtype=np.int64)


def original() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(
        {
            "label": rng.integers(0, 2, N_ROWS).astype(np.float32),
            "user": rng.integers(0, 1000, N_ROWS),
            "item": [f"item-{i}" for i in range(N_ROWS)],
            "price": rng.random(N_ROWS),
        },
        index=pd.RangeIndex(100, 100 + N_ROWS),
    )


def make_coreset(manifest: dict | None = None) -> Coreset:
    frame = original()
    labels = frame["label"].to_numpy()[ROWS]
    return Coreset(
        ROWS,
        labels,
        soft_labels=np.linspace(0.1, 0.9, len(ROWS)).astype(np.float32),
        weights=np.array([1, 2, 1, 4, 1, 1], dtype=np.float32),
        uncertainty=np.full(len(ROWS), 0.25, dtype=np.float32),
        manifest=Manifest.model_validate(manifest or {"dataset": {"rows": N_ROWS}}),
    )


def test_read_from_a_local_parquet(tmp_path):
    path = tmp_path / "coreset.parquet"
    pq.write_table(make_coreset().to_arrow(), path)
    for uri in (str(path), path.as_uri()):
        coreset = Coreset.read(uri, manifest={"dataset": {"rows": N_ROWS, "clicks": 3}})
        np.testing.assert_array_equal(coreset.rows, ROWS)
        assert coreset.rows.dtype == np.int64
        assert coreset.soft_labels.dtype == np.float32
        assert all(
            array.flags.writeable for array in (coreset.rows, coreset.labels, coreset.soft_labels)
        )
        assert coreset.manifest.data_rows == N_ROWS
        assert len(coreset) == len(ROWS)
        assert coreset.uri == uri


def test_read_names_missing_columns(tmp_path):
    path = tmp_path / "coreset.parquet"
    pq.write_table(pa.table({"row": [1, 2], "label": [0, 1]}), path)
    with pytest.raises(ValueError, match="soft_label, weight, uncertainty"):
        Coreset.read(str(path))


def test_arrays_must_have_one_length():
    with pytest.raises(ValueError, match="^labels:"):
        Coreset([1, 2], [0], [0.1, 0.2], [1, 1], [0, 0])


def test_to_pandas_and_to_arrow_round_trip():
    coreset = make_coreset()
    frame = coreset.to_pandas()
    assert list(frame.columns) == ["row", "label", "soft_label", "weight", "uncertainty"]
    np.testing.assert_array_equal(frame["row"].to_numpy(), ROWS)
    again = Coreset.from_arrow(coreset.to_arrow())
    np.testing.assert_array_equal(again.weights, coreset.weights)


def test_take_from_pandas_gives_exactly_the_selected_rows_in_order():
    frame = original()
    picked = make_coreset().take(frame)
    assert isinstance(picked, pd.DataFrame)
    assert list(picked.index) == [100 + int(r) for r in ROWS]
    assert picked["item"].tolist() == [f"item-{r}" for r in ROWS]
    pd.testing.assert_frame_equal(picked, frame.iloc[ROWS])
    series = make_coreset().take(frame["price"])
    np.testing.assert_array_equal(series.to_numpy(), frame["price"].to_numpy()[ROWS])


def test_take_from_arrow():
    table = pa.Table.from_pandas(original(), preserve_index=False)
    picked = make_coreset().take(table)
    assert isinstance(picked, pa.Table)
    assert picked.column("item").to_pylist() == [f"item-{r}" for r in ROWS]
    batch = table.to_batches()[0]
    assert make_coreset().take(batch).num_rows == len(ROWS)
    chunked = pa.chunked_array(
        [table.column("user").chunk(0)[:20], table.column("user").chunk(0)[20:]]
    )
    assert make_coreset().take(chunked).to_pylist() == [
        table.column("user")[int(r)].as_py() for r in ROWS
    ]


def test_take_from_numpy():
    features = np.arange(N_ROWS * 3).reshape(N_ROWS, 3)
    picked = make_coreset().take(features)
    np.testing.assert_array_equal(picked, features[ROWS])
    np.testing.assert_array_equal(picked[:, 0], ROWS * 3)


@pytest.mark.parametrize("length", [N_ROWS - 1, N_ROWS + 1])
def test_take_refuses_a_table_of_another_length(length):
    coreset = make_coreset()
    with pytest.raises(ValueError, match=rf"table: has {length} rows, .* had {N_ROWS}"):
        coreset.take(np.zeros((length, 2)))
    with pytest.raises(ValueError, match="table: has"):
        coreset.take(
            original().iloc[:length]
            if length < N_ROWS
            else pd.concat([original(), original()]).iloc[:length]
        )


def test_take_without_a_manifest_still_refuses_rows_out_of_range():
    coreset = make_coreset()
    coreset.manifest = None
    np.testing.assert_array_equal(coreset.take(np.arange(60)), ROWS)
    with pytest.raises(ValueError, match="selects row 49"):
        coreset.take(np.arange(40))


def test_take_refuses_other_types():
    with pytest.raises(TypeError, match="table: expected"):
        make_coreset().take([[1, 2]] * N_ROWS)


def test_torch_subset_and_weighted_sampler():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, Subset, TensorDataset, WeightedRandomSampler

    features = torch.arange(N_ROWS, dtype=torch.float32).unsqueeze(1)  # (N, 1)
    dataset = TensorDataset(features)
    coreset = make_coreset()
    subset = coreset.torch_subset(dataset)
    assert isinstance(subset, Subset)
    assert [int(subset[i][0].item()) for i in range(len(subset))] == ROWS.tolist()

    sampler = coreset.weighted_sampler(num_samples=4000, generator=torch.Generator().manual_seed(0))
    assert isinstance(sampler, WeightedRandomSampler)
    draws = np.bincount(np.fromiter(iter(sampler), dtype=np.int64), minlength=len(ROWS))
    assert draws.sum() == 4000
    # Weights 1, 2, 1, 4, 1, 1 (sum 10): position 3 drawn ~40% of the time, position 1 ~20%.
    assert 0.36 < draws[3] / 4000 < 0.44
    assert 0.16 < draws[1] / 4000 < 0.24
    batches = list(DataLoader(subset, batch_size=3, sampler=coreset.weighted_sampler()))
    assert sum(len(batch[0]) for batch in batches) == len(ROWS)

    without = coreset.weighted_sampler(
        replacement=False, generator=torch.Generator().manual_seed(1)
    )
    assert sorted(iter(without)) == list(range(len(ROWS)))
    with pytest.raises(ValueError, match="num_samples"):
        coreset.weighted_sampler(num_samples=0)
    with pytest.raises(ValueError, match="dataset: has 10 rows"):
        coreset.torch_subset(TensorDataset(features[:10]))


def test_s3_endpoint_defaults_from_the_environment(monkeypatch):
    monkeypatch.setenv("NACS_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    pytest.importorskip("s3fs")
    handle = open_uri("s3://bucket/coreset.parquet", {"anon": True})
    assert handle.fs.storage_options["endpoint_url"] == "http://127.0.0.1:9"
    handle = open_uri(
        "s3://bucket/coreset.parquet", {"anon": True, "endpoint_url": "http://other:1"}
    )
    assert handle.fs.storage_options["endpoint_url"] == "http://other:1"
    kwargs = {"anon": True, "client_kwargs": {"endpoint_url": "http://third:2"}}
    handle = open_uri("s3://bucket/coreset.parquet", kwargs)
    assert "endpoint_url" not in handle.fs.storage_options


def test_a_missing_backend_is_a_clear_import_error(monkeypatch):
    import fsspec

    def missing(*args, **kwargs):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec, "open", missing)
    with pytest.raises(ImportError, match=r"nacs\[s3\]"):
        open_uri("s3://bucket/coreset.parquet")


@pytest.fixture
def http_folder(tmp_path):
    """A folder served over HTTP on loopback (http.server in a thread)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_read_over_http_needs_no_extra_package(http_folder):
    folder, url = http_folder
    pq.write_table(make_coreset().to_arrow(), folder / "coreset.parquet")
    coreset = Coreset.read(f"{url}/coreset.parquet", storage_options={"headers": {"X-Test": "1"}})
    np.testing.assert_array_equal(coreset.rows, ROWS)
    with pytest.raises(FileNotFoundError, match="404"):
        Coreset.read(f"{url}/missing.parquet")
    with pytest.raises(ValueError, match="storage_options: anon"):
        Coreset.read(f"{url}/coreset.parquet", storage_options={"anon": True})
