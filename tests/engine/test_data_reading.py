"""Reading Parquet, CSV, TSV, JSON Lines and the Criteo layout in batches; data errors."""

from __future__ import annotations

import datetime
import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nacs_engine.data import load_dataset, open_source
from nacs_engine.data.reading import CRITEO_COLUMNS, format_from_name
from nacs_engine.data.schema import closest_name
from nacs_engine.errors import DataError


def _toy_table(n: int = 40) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "label": rng.integers(0, 2, n),
            "color": rng.choice(["red", "green", "blue"], n),
            "size": rng.integers(0, 4, n),
        }
    )


def _write_csv(path, table: pa.Table, sep: str = ",", header: bool = True) -> None:
    lines = [sep.join(table.column_names)] if header else []
    for row in table.to_pylist():
        lines.append(sep.join(str(v) for v in row.values()))
    path.write_text("\n".join(lines) + "\n")


def _write_jsonl(path, table: pa.Table) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))


def _criteo_lines(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        label = str(int(rng.integers(0, 2)))
        ints = ["" if rng.random() < 0.2 else str(int(rng.integers(-1, 500))) for _ in range(13)]
        cats = ["" if rng.random() < 0.1 else f"{int(rng.integers(0, 6)):08x}" for _ in range(26)]
        lines.append("\t".join([label, *ints, *cats]))
    return lines


@pytest.mark.parametrize(
    "name",
    [
        "t.parquet", "t.pq", "t.csv", "t.tsv", "t.txt", "t.csv.gz",
        "t.jsonl", "t.ndjson", "t.json", "t.jsonl.gz",
    ],
)
def test_every_format_gives_the_same_encoding(tmp_path, name):
    table = _toy_table()
    reference = load_dataset(table, min_count=1)
    path = tmp_path / name
    if name.endswith((".parquet", ".pq")):
        pq.write_table(table, path)
    elif "json" in name:
        plain = tmp_path / "plain.jsonl"
        _write_jsonl(plain, table)
        data = plain.read_bytes()
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    elif name.endswith(".gz"):
        plain = tmp_path / "plain.csv"
        _write_csv(plain, table)
        path.write_bytes(gzip.compress(plain.read_bytes()))
    else:
        _write_csv(path, table, sep="," if name.endswith(".csv") else "\t")
    data = load_dataset(path, min_count=1)
    assert data.n_rows == 40
    assert data.field_names == ("color", "size")
    np.testing.assert_array_equal(data.labels, table.column("label").to_numpy().astype(np.float32))
    np.testing.assert_array_equal(data.features, reference.features)
    assert data.field_dims == reference.field_dims
    assert data.fingerprint == reference.fingerprint


def test_file_uri_and_folder_of_parts(tmp_path):
    table = _toy_table(30)
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(table.slice(0, 10), folder / "part-0.parquet")
    pq.write_table(table.slice(10, 20), folder / "part-1.parquet")
    (folder / "_SUCCESS").write_text("")
    whole = load_dataset(table, min_count=1)
    from_folder = load_dataset(f"file://{folder}", min_count=1)
    np.testing.assert_array_equal(from_folder.features, whole.features)
    assert from_folder.fingerprint == whole.fingerprint


def test_criteo_layout_is_detected_and_numeric_columns_bucketed(tmp_path):
    path = tmp_path / "day.txt"
    path.write_text("\n".join(_criteo_lines(50)) + "\n")
    source = open_source(path)
    assert source.layout == "criteo" and source.format == "criteo"
    assert source.columns == CRITEO_COLUMNS
    data = load_dataset(path, min_count=1)
    assert data.field_names == CRITEO_COLUMNS[1:]
    assert data.metadata["numeric_columns"] == [f"I{i}" for i in range(1, 14)]
    explicit = load_dataset(path, format="criteo", min_count=1)
    np.testing.assert_array_equal(explicit.features, data.features)


def test_headerless_csv_with_column_names(tmp_path):
    table = _toy_table(20)
    path = tmp_path / "dev.csv"
    _write_csv(path, table, header=False)
    data = load_dataset(path, column_names=["label", "color", "size"], min_count=1)
    np.testing.assert_array_equal(data.features, load_dataset(table, min_count=1).features)


@pytest.mark.parametrize("batch_rows", [2, 7, 64])
def test_small_batches_read_the_same_rows(tmp_path, batch_rows):
    path = tmp_path / "day.tsv"
    path.write_text("\n".join(_criteo_lines(120, seed=3)) + "\n")
    one = load_dataset(path, min_count=2)
    batched = load_dataset(path, min_count=2, batch_rows=batch_rows)
    np.testing.assert_array_equal(batched.features, one.features)
    np.testing.assert_array_equal(batched.labels, one.labels)
    assert batched.field_dims == one.field_dims
    assert batched.fingerprint == one.fingerprint
    source = open_source(path, batch_rows=batch_rows)
    sizes = [batch.num_rows for batch, _ in source.batches()]
    assert sum(sizes) == 120 and max(sizes) <= batch_rows


def test_progress_is_called_per_batch_and_may_stop_the_load(tmp_path):
    table = _toy_table(100)
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=10)
    seen: list[float] = []
    load_dataset(path, batch_rows=10, min_count=1, progress=lambda f, m: seen.append(f))
    assert len(seen) == 20
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)

    class Stop(Exception):
        pass

    def stop(fraction: float, message: str) -> None:
        raise Stop

    with pytest.raises(Stop):
        load_dataset(path, batch_rows=10, progress=stop)


def test_format_from_name():
    assert format_from_name("a/b.PARQUET") == "parquet"
    assert format_from_name("x.tsv.gz") == "tsv"
    assert format_from_name("x.ndjson.gz") == "jsonl"
    assert format_from_name("x.xlsx") is None


def _error_code(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(path, **kwargs)
    assert isinstance(info.value, ValueError)
    return info.value.code


def test_missing_file(tmp_path):
    assert _error_code(tmp_path / "nope.parquet") == "dataset_not_found"
    assert _error_code(f"file://{tmp_path}/nope.csv") == "dataset_not_found"


def test_corrupt_parquet_and_garbage(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet at all" * 10)
    assert _error_code(bad) == "unreadable_data"
    table = _toy_table()
    good = tmp_path / "good.parquet"
    pq.write_table(table, good)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    assert _error_code(truncated) == "unreadable_data"
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    assert _error_code(binary) == "unreadable_data"
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("label,a,b\n1,x,y\n0,x\n")
    assert _error_code(ragged) == "unreadable_data"


def test_unsupported_format(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("{}")
    assert _error_code(path) == "unsupported_format"
    csv = tmp_path / "data.csv"
    _write_csv(csv, _toy_table())
    assert _error_code(csv, format="excel") == "unsupported_format"


def test_label_column_missing_names_it_and_lists_columns(tmp_path):
    path = tmp_path / "t.csv"
    _write_csv(path, _toy_table())
    with pytest.raises(DataError) as info:
        load_dataset(path, label_column="clicked")
    assert info.value.code == "label_column_missing"
    assert "'clicked'" in info.value.message and "'color'" in info.value.message


def test_named_columns_must_exist(tmp_path):
    path = tmp_path / "t.csv"
    _write_csv(path, _toy_table())
    assert _error_code(path, feature_columns=["color", "shape"]) == "column_missing"
    assert _error_code(path, numeric_columns=["weight"]) == "column_missing"


def test_a_misspelt_column_gets_the_closest_name(tmp_path):
    path = tmp_path / "t.csv"
    _write_csv(path, _toy_table())

    def message(**kwargs) -> str:
        with pytest.raises(DataError) as info:
            load_dataset(path, **kwargs)
        return info.value.message

    assert "no column 'lable' (did you mean 'label'? label_column='label'" in message(
        label_column="lable"
    )
    assert "did you mean 'label'" in message(label_column="LABEL ")
    assert "(did you mean 'color' for 'colour', 'size' for 'sizes'?); available" in message(
        feature_columns=["colour", "sizes", "shape"]
    )
    assert "did you mean" not in message(numeric_columns=["weight"])
    # columns of a numbered series that differ in their digits only are other columns
    assert closest_name("I14", ["I4", "I1", "label"]) is None
    assert closest_name("C27", ["C7"]) is None and closest_name("clik", ["click"]) == "click"
    assert "no column(s) ['Size'] (did you mean 'size'?); available" in message(
        numeric_columns=["Size"]
    )
    # the label column is never offered for a feature: it cannot be one
    assert "did you mean" not in message(feature_columns=["lable", "color"])


@pytest.mark.parametrize(
    ("labels", "offending"),
    [
        (["0", "2", "1"], "2"),
        (["1", "maybe", "0"], "maybe"),
        (["0.5", "1", "0"], "0.5"),
        (["1", "", "0"], None),
    ],
)
def test_labels_not_binary_in_text(tmp_path, labels, offending):
    path = tmp_path / "t.csv"
    path.write_text("label,a\n" + "".join(f"{v},x\n" for v in labels))
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert info.value.code == "labels_not_binary"
    assert "'label'" in info.value.message
    if offending is not None:
        assert repr(offending) in info.value.message


@pytest.mark.parametrize(
    "labels",
    [
        pa.array([0, 2, 1]),
        pa.array([0.0, 0.5, 1.0]),
        pa.array([1, None, 0]),
        pa.array(["0", "clicked", "1"]),
    ],
)
def test_labels_not_binary_in_parquet(tmp_path, labels):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"label": labels, "a": ["x", "y", "z"]}), path)
    assert _error_code(path) == "labels_not_binary"


@pytest.mark.parametrize(
    "labels",
    [
        pa.array([1, -1, 1, -1]),
        pa.array([1.0, -1.0, 1.0, -1.0]),
        pa.array(["1", "-1", "1", "-1.0"]),
    ],
)
def test_labels_written_minus_one_and_one_read_minus_one_as_a_non_click(tmp_path, labels):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"label": labels, "a": ["x", "y", "z", "x"]}), path)
    data = load_dataset(path, min_count=1)
    np.testing.assert_array_equal(data.labels, np.array([1, 0, 1, 0], dtype=np.float32))
    assert data.n_clicks == 2
    assert data.metadata["label_values"] == "-1/1"


def test_labels_written_zero_and_one_say_so(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"label": [1, 0, 1], "a": ["x", "y", "z"]}), path)
    assert load_dataset(path, min_count=1).metadata["label_values"] == "0/1"


@pytest.mark.parametrize("labels", [[0, 1, -1, 1], ["-1", "1", "no", "1"]])
def test_labels_with_both_minus_one_and_zero_are_refused(tmp_path, labels):
    path = tmp_path / "t.csv"
    path.write_text("label,a\n" + "".join(f"{v},x\n" for v in labels))
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert info.value.code == "labels_not_binary"
    first_minus, first_zero = (2, 0) if labels[0] == 0 else (0, 2)
    assert f"-1 (row {first_minus}" in info.value.message
    assert f"0 (row {first_zero})" in info.value.message


def test_minus_one_and_zero_in_different_batches_are_refused(tmp_path):
    """The convention holds for the whole data, not batch by batch."""
    path = tmp_path / "t.parquet"
    labels = [1, 0] * 50 + [1, -1] * 50
    pq.write_table(pa.table({"label": labels, "a": ["x"] * 200}), path)
    with pytest.raises(DataError) as info:
        load_dataset(path, batch_rows=64)
    assert info.value.code == "labels_not_binary"
    assert "-1 (row 101" in info.value.message and "0 (row 1)" in info.value.message


@pytest.mark.parametrize(
    "labels",
    [
        pa.array([True, False, True]),
        pa.array([1.0, 0.0, 1.0]),
        pa.array(["1", "0", "1"]),
        pa.array(["Yes", "no", " YES "]),
        pa.array(["y", "N", "t"]),
        pa.array(["TRUE", "F", "true"]),
    ],
)
def test_binary_label_spellings(tmp_path, labels):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"label": labels, "a": ["x", "y", "z"]}), path)
    np.testing.assert_array_equal(load_dataset(path, min_count=1).labels, [1.0, 0.0, 1.0])


def test_empty_data(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert _error_code(empty) == "empty_dataset"
    header_only = tmp_path / "header.csv"
    header_only.write_text("label,a\n")
    assert _error_code(header_only) == "empty_dataset"
    no_rows = tmp_path / "none.parquet"
    pq.write_table(_toy_table().slice(0, 0), no_rows)
    assert _error_code(no_rows) == "empty_dataset"


def test_label_hint_names_a_likely_label(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,click,site\n1,0,a\n2,1,b\n")
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert info.value.code == "label_column_missing"
    assert "label_column='click'" in info.value.message


def test_text_progress_follows_the_bytes_read(tmp_path):
    path = tmp_path / "day.tsv.gz"
    path.write_bytes(gzip.compress(("\n".join(_criteo_lines(300, seed=8)) + "\n").encode()))
    source = open_source(path, batch_rows=50)
    fractions = [fraction for _, fraction in source.batches()]
    assert len(fractions) == 6
    assert all(0.0 < f <= 1.0 for f in fractions) and fractions == sorted(fractions)
    assert fractions[-1] == 1.0


def test_quotes_in_tsv_are_plain_characters_and_quoted_csv_fields_work(tmp_path):
    tsv = tmp_path / "t.tsv"
    tsv.write_text('label\ttitle\n1\t"Great Day in Harlem, A" (1994)\n0\tSay "hi"\n')
    data = load_dataset(tsv, min_count=1)
    assert data.n_rows == 2 and data.field_dims == (3,)
    csv_path = tmp_path / "t.csv"
    csv_path.write_text('label,title\n1,"Harlem, A"\n0,"Harlem, A"\n')
    assert load_dataset(csv_path, min_count=1).field_dims == (2,)


@pytest.mark.parametrize(("pack", "ending"), [("gzip", "gz"), ("bz2", "bz2")])
def test_a_compressed_file_without_its_ending_is_named_as_such(tmp_path, pack, ending):
    import bz2

    text = b"label,item\n1,a\n0,b\n"
    path = tmp_path / "clicks.csv"
    path.write_bytes(gzip.compress(text) if pack == "gzip" else bz2.compress(text))
    with pytest.raises(DataError, match=rf"{ending}-compressed: .*\.csv\.{ending}"):
        load_dataset(str(path))
    # text that only starts like a bzip2 header is text
    plain = tmp_path / "plain.csv"
    plain.write_bytes(b"BZh9,label\nx,1\ny,0\n")
    assert load_dataset(str(plain), min_count=1).n_rows == 2


def test_a_header_of_one_column_with_semicolons_says_commas_are_read(tmp_path):
    path = tmp_path / "semi.csv"
    path.write_text("label;item\n1;a\n0;b\n")
    with pytest.raises(DataError, match="holds ';': the file is read as comma-separated"):
        load_dataset(str(path))


def _hive(table: pa.Table, folder, keys: list[str], format: str = "parquet") -> None:
    import pyarrow.dataset as ds

    ds.write_dataset(table, folder, format=format, partitioning=keys, partitioning_flavor="hive")


def _rows(source, columns: list[str]) -> list[tuple]:
    batches = [batch for batch, _ in source.batches(columns)]
    assert all(batch.schema.names == columns for batch in batches)
    return sorted((tuple(row.values()) for b in batches for row in b.to_pylist()), key=repr)


@pytest.mark.parametrize("format", ["parquet", "csv"])
def test_a_partitioned_folder_reads_its_keys_as_text_columns(tmp_path, format):
    rng = np.random.default_rng(0)
    n = 300
    table = pa.table(
        {
            "label": rng.integers(0, 2, n),
            "item": rng.choice(["a", "b", "c"], n),
            "day": rng.choice(["2024-01-01", "2024-01-02"], n),
            "hour": rng.integers(0, 3, n),
        }
    )
    _hive(table, tmp_path / "data", ["day", "hour"], format)
    (tmp_path / "data" / "_SUCCESS").write_text("")
    (tmp_path / "data" / "day=2024-01-01" / ".part.crc").write_text("")
    source = open_source(str(tmp_path / "data"))
    assert source.columns[-2:] == ("day", "hour")
    assert len(source.paths) == 6
    assert source.paths == sorted(source.paths)
    # any order of the columns asked for; the keys read as text (and CSV's values too)
    columns = ["hour", "label", "item", "day"]
    as_read = int if format == "parquet" else str
    expected = sorted(
        ((str(r["hour"]), as_read(r["label"]), r["item"], r["day"]) for r in table.to_pylist()),
        key=repr,
    )
    assert _rows(source, columns) == expected
    if format == "parquet":  # rows in the order pyarrow.dataset reads them (docs/CLIENT.md)
        import pyarrow.dataset as ds

        theirs = ds.dataset(tmp_path / "data", partitioning="hive").to_table()
        ours = pa.Table.from_batches([batch for batch, _ in source.batches()])
        assert ours.column("item").to_pylist() == theirs.column("item").to_pylist()
        assert ours.column("label").to_pylist() == theirs.column("label").to_pylist()
    data = load_dataset(str(tmp_path / "data"), min_count=1)
    assert data.n_rows == n
    assert {"day", "hour"} <= set(data.field_names)


def test_a_partition_keys_missing_value_and_escapes_are_read(tmp_path):
    folder = tmp_path / "data"
    for name, rows in (("city=__HIVE_DEFAULT_PARTITION__", [0, 1]), ("city=New%20York", [1, 1])):
        (folder / name).mkdir(parents=True)
        pq.write_table(pa.table({"label": rows}), folder / name / "part-0.parquet")
    assert _rows(open_source(str(folder)), ["label", "city"]) == sorted(
        [(0, None), (1, None), (1, "New York"), (1, "New York")], key=repr
    )


def test_a_folder_with_files_under_uneven_keys_is_refused(tmp_path):
    uneven = tmp_path / "uneven"
    for name in ("day=1/hour=0", "day=2"):
        (uneven / name).mkdir(parents=True)
        pq.write_table(pa.table({"label": [0, 1]}), uneven / name / "part-0.parquet")
    with pytest.raises(
        DataError,
        match=r"different partition keys \(day=2/part-0.parquet under "
        r"day=\.\.\.; day=1/hour=0/part-0.parquet under day=\.\.\./hour=\.\.\.\)",
    ):
        open_source(str(uneven))
    # a file beside key=value folders is not dropped in silence either
    beside = tmp_path / "beside"
    (beside / "src=new").mkdir(parents=True)
    pq.write_table(pa.table({"label": [0, 1]}), beside / "old.parquet")
    pq.write_table(pa.table({"label": [1, 1]}), beside / "src=new" / "part-0.parquet")
    with pytest.raises(DataError, match=r"old.parquet under no key=value folder"):
        open_source(str(beside))
    empty = tmp_path / "empty"
    (empty / "day=1").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no .parquet") as missing:
        open_source(str(empty))
    assert missing.value.code == "dataset_not_found"


def test_a_folders_subfolders_are_read_too(tmp_path):
    folder = tmp_path / "data"
    (folder / "sub" / "deeper").mkdir(parents=True)
    pq.write_table(pa.table({"label": [0, 1], "x": [1, 2]}), folder / "a.parquet")
    pq.write_table(pa.table({"label": [1, 1], "x": [3, 4]}), folder / "sub" / "b.parquet")
    pq.write_table(pa.table({"label": [0, 0], "x": [5, 6]}), folder / "sub" / "deeper" / "c.pq")
    (folder / "_temporary").mkdir()
    pq.write_table(pa.table({"label": [1], "x": [9]}), folder / "_temporary" / "d.parquet")
    source = open_source(str(folder))
    assert source.total_rows == 6 and source.columns == ("label", "x")
    read = pa.Table.from_batches([batch for batch, _ in source.batches()])
    assert read.column("x").to_pylist() == [1, 2, 3, 4, 5, 6]


def test_a_partition_key_that_is_also_a_column_is_read_from_the_files(tmp_path):
    folder = tmp_path / "data"
    (folder / "day=1").mkdir(parents=True)
    table = pa.table({"label": [0, 1], "day": ["1", "1"], "x": ["a", "b"]})
    pq.write_table(table, folder / "day=1" / "part-0.parquet")
    source = open_source(str(folder))
    assert source.columns == ("label", "day", "x")
    assert _rows(source, ["x", "day"]) == [("a", "1"), ("b", "1")]


@pytest.mark.parametrize(
    "folder_name, values, found",
    [
        ("day=2", ["2", "3"], "'3'"),
        ("day=07", [7, None], "None"),
        ("day=x", [1, 1], "1"),
        ("day=__HIVE_DEFAULT_PARTITION__", [None, 4], "4"),
    ],
)
def test_a_partition_key_whose_files_hold_other_values_is_refused(
    tmp_path, folder_name, values, found
):
    folder = tmp_path / "data"
    (folder / folder_name).mkdir(parents=True)
    table = pa.table({"label": [0, 1], "day": values})
    pq.write_table(table, folder / folder_name / "part-0.parquet")
    source = open_source(str(folder))
    with pytest.raises(DataError, match=rf"under the folder {folder_name} but its column "
                       rf"'day' holds {found}; drop the column") as refused:
        _rows(source, ["label", "day"])
    assert refused.value.code == "unreadable_data"
    assert _rows(source, ["label"]) == [(0,), (1,)]  # the column not read: nothing to check


@pytest.mark.parametrize(
    "folder_name, values",
    [("day=07", [7, 7]), ("day=2024-01-02", ["2024-01-02"] * 2),
     ("day=2024-01-02", [datetime.date(2024, 1, 2)] * 2),
     ("day=2024-01-02 00%3A00%3A00",
      [datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc)] * 2),
     ("day=__HIVE_DEFAULT_PARTITION__", [None, None])],
)
def test_a_partition_key_agreeing_with_its_files_in_their_type_is_read(
    tmp_path, folder_name, values
):
    folder = tmp_path / "data"
    (folder / folder_name).mkdir(parents=True)
    pq.write_table(pa.table({"label": [0, 1], "day": values}), folder / folder_name / "p.parquet")
    assert [day for _, day in _rows(open_source(str(folder)), ["label", "day"])] == values


def test_a_linked_partition_folder_is_named_not_followed(tmp_path):
    folder = tmp_path / "data"
    (folder / "day=1").mkdir(parents=True)
    pq.write_table(pa.table({"label": [0, 1]}), folder / "day=1" / "part-0.parquet")
    (tmp_path / "elsewhere").mkdir()
    pq.write_table(pa.table({"label": [1, 1]}), tmp_path / "elsewhere" / "part-0.parquet")
    (folder / "day=2").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(DataError, match=r"\['day=2'\] in the folder are symbolic links"):
        open_source(str(folder))


def test_a_folder_whose_data_lies_under_skipped_names_says_so(tmp_path):
    folder = tmp_path / "data"
    (folder / "_staging").mkdir(parents=True)
    pq.write_table(pa.table({"label": [0, 1]}), folder / "_staging" / "part-0.parquet")
    with pytest.raises(
        DataError,
        match=r"holds no .* \(names starting with . or _ are skipped: "
        r"_staging\)",
    ):
        open_source(str(folder))


def test_column_names_that_do_not_fit_the_first_line_say_so(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("label,color,size\n1,red,2\n0,blue,3\n")
    with pytest.raises(ValueError, match="it is a header line; leave column_names out"):
        open_source(path, column_names=["label", "color", "size"])
    with pytest.raises(ValueError, match="column_names: 2 names given, and .* has 3 fields"):
        open_source(path, column_names=["label", "color"])
    source = open_source(path, column_names=["y", "a", "b"])
    assert [row for batch, _ in source.batches() for row in batch.to_pylist()][0] == {
        "y": "label", "a": "color", "b": "size"
    }


def test_a_first_line_of_data_read_as_the_header_is_pointed_out(tmp_path):
    path = tmp_path / "no-header.csv"
    path.write_text('"1","6264","minneapolis",0\n"2","17","paris",1\n')
    with pytest.raises(DataError) as caught:
        load_dataset(path)
    assert caught.value.code == "label_column_missing"
    assert "the first line, read as the header, holds numbers ('1', '6264', '0')" in str(
        caught.value
    )
    # a Parquet file's names are not a line of data: no such hint
    named = tmp_path / "t.parquet"
    pq.write_table(pa.table({"0": [1, 0], "1": ["a", "b"]}), named)
    with pytest.raises(DataError) as caught:
        load_dataset(named)
    assert "holds numbers" not in str(caught.value)


def test_data_encoded_with_an_encoding_fitted_on_other_data_keeps_its_convention(tmp_path):
    from nacs_engine.data import Encoder

    def table(labels):
        return pa.table({"label": labels, "a": ["x", "y"] * (len(labels) // 2)})

    minus = Encoder(min_count=1).fit(table([1, -1, 1, -1]))
    assert minus.transform(table([1, 1])).metadata["label_values"] == "-1/1"  # no -1 needed
    with pytest.raises(DataError, match=r"holds 0 \(row 1, .* fitted on wrote its labels -1/1"):
        minus.transform(table([1, 0]))
    zero = Encoder(min_count=1).fit(table([1, 0, 1, 0]))
    with pytest.raises(DataError, match=r"holds -1 \(row 1, .* fitted on wrote its labels 0/1"):
        zero.transform(table([1, -1]))
    assert zero.transform(table(["+1", "0"])).labels.tolist() == [1.0, 0.0]
    # an encoding fitted on clicks alone takes either convention
    clicks = Encoder(min_count=1).fit(table([1, 1]))
    assert clicks.transform(table([1, -1])).metadata["label_values"] == "-1/1"
    assert clicks.transform(table([1, 0])).metadata["label_values"] == "0/1"
