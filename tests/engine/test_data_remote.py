"""Reading from S3 (a moto server on a free port) and over HTTP."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nacs_engine.data import load_dataset, open_source
from nacs_engine.errors import DataError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _table(n: int = 60) -> pa.Table:
    rng = np.random.default_rng(5)
    return pa.table({"label": rng.integers(0, 2, n), "ad": rng.choice(["a", "b", "c", "d"], n)})


@pytest.fixture(scope="module")
def s3_endpoint():
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_options(s3_endpoint, monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    return {"endpoint_url": s3_endpoint, "skip_instance_cache": True}


def test_parquet_and_csv_from_s3(tmp_path, s3_options):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    bucket = f"nacs-test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    table = _table()
    local = tmp_path / "t.parquet"
    pq.write_table(table, local)
    fs.put(str(local), f"{bucket}/data/t.parquet")
    fs.pipe(
        f"{bucket}/data/t.csv",
        b"label,ad\n" + b"".join(f"{r['label']},{r['ad']}\n".encode() for r in table.to_pylist()),
    )
    reference = load_dataset(table, min_count=1)
    for key in ("data/t.parquet", "data/t.csv"):
        data = load_dataset(
            f"s3://{bucket}/{key}", storage_options=s3_options, min_count=1, batch_rows=16
        )
        np.testing.assert_array_equal(data.features, reference.features)
        assert data.fingerprint == reference.fingerprint

    with pytest.raises(DataError) as info:
        load_dataset(f"s3://{bucket}/data/missing.parquet", storage_options=s3_options)
    assert info.value.code == "dataset_not_found"
    with pytest.raises(DataError) as info:
        load_dataset(f"s3://{bucket}-absent/t.parquet", storage_options=s3_options)
    assert info.value.code == "dataset_not_found"


def test_a_partitioned_folder_on_s3(tmp_path, s3_options):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    bucket = f"nacs-test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    table = _table()
    halves = {"dt=2024-05-01": table.slice(0, 25), "dt=2024-05-02": table.slice(25)}
    for folder, part in halves.items():
        pq.write_table(part, tmp_path / "part.parquet")
        fs.put(str(tmp_path / "part.parquet"), f"{bucket}/clicks/{folder}/part-0.parquet")
    fs.pipe(f"{bucket}/clicks/_SUCCESS", b"")
    source = open_source(f"s3://{bucket}/clicks", storage_options=s3_options)
    assert source.columns == ("label", "ad", "dt")
    read = pa.Table.from_batches([batch for batch, _ in source.batches()])
    assert read.column("dt").to_pylist() == ["2024-05-01"] * 25 + ["2024-05-02"] * 35
    assert read.select(["label", "ad"]).equals(table)


@pytest.fixture
def http_folder(tmp_path):
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def test_parquet_over_http(http_folder):
    pytest.importorskip("aiohttp")
    folder, base = http_folder
    table = _table()
    pq.write_table(table, folder / "t.parquet")
    data = load_dataset(f"{base}/t.parquet", min_count=1)
    np.testing.assert_array_equal(data.features, load_dataset(table, min_count=1).features)
    with pytest.raises(DataError) as info:
        load_dataset(f"{base}/missing.parquet")
    assert info.value.code == "dataset_not_found"


def test_a_server_that_does_not_answer_is_not_a_missing_dataset():
    pytest.importorskip("aiohttp")
    with pytest.raises(DataError) as info:
        load_dataset(f"http://127.0.0.1:{_free_port()}/t.parquet")
    assert info.value.code == "storage_unavailable"
    assert "the server did not answer" in info.value.message
    assert isinstance(info.value.__cause__, FileNotFoundError)  # the chain the worker reads


def test_a_server_without_range_requests_is_named_as_such(http_folder):
    pytest.importorskip("aiohttp")
    folder, base = http_folder  # Python's http.server answers whole files only
    rng = np.random.default_rng(0)
    n = 300_000  # more than one block of fsspec's HTTP file
    table = pa.table({"label": rng.integers(0, 2, n), "a": rng.integers(0, 10**6, n)})
    pq.write_table(table, folder / "big.parquet", compression="none")
    with pytest.raises(DataError) as info:
        load_dataset(f"{base}/big.parquet")
    assert info.value.code == "unreadable_data"
    assert "range requests" in info.value.message and "download it first" in info.value.message


def test_unknown_scheme_is_a_data_error():
    with pytest.raises(DataError) as info:
        load_dataset("nosuchscheme://bucket/t.parquet")
    assert info.value.code == "unsupported_format"


def test_query_strings_stay_out_of_messages_and_metadata(http_folder):
    pytest.importorskip("aiohttp")
    folder, base = http_folder
    pq.write_table(_table(), folder / "t.parquet")
    data = load_dataset(f"{base}/t.parquet?X-Amz-Signature=secret123", min_count=1)
    assert data.n_rows == 60
    assert "secret123" not in str(data.metadata)
    with pytest.raises(DataError) as info:
        load_dataset(f"{base}/missing.csv?X-Amz-Signature=secret123")
    assert info.value.code == "dataset_not_found"
    assert "secret123" not in info.value.message
