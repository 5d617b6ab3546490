"""JSON Lines: values read as the text CSV would hold, keys as columns, and the errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nacs_engine.data import load_dataset, open_source, reading
from nacs_engine.errors import DataError


def _rows(path) -> list[dict]:
    source = open_source(path)
    return [row for batch, _ in source.batches() for row in batch.to_pylist()]


def _write(path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_values_read_as_text_whatever_their_json_type(tmp_path):
    path = tmp_path / "clicks.jsonl"
    _write(
        path,
        [
            '{"click": 1, "user": "u1", "price": 2.5, "seen": "2024-05-01T12:30:00"}',
            # a key's values of two kinds in one block; an integer past float64's exact ones
            '{"click": true, "user": 7, "price": 3.0, "id": 10001868339616595934}',
            '{"user": null, "click": 0, "price": 1e-7, "id": 10001868339616595935}',
        ],
    )
    source = open_source(path)
    assert source.format == "jsonl"
    assert source.columns == ("click", "user", "price", "seen", "id")
    assert _rows(path) == [
        {"click": "1", "user": "u1", "price": "2.5", "seen": "2024-05-01T12:30:00", "id": None},
        {"click": "true", "user": "7", "price": "3", "seen": None, "id": "10001868339616595934"},
        {"click": "0", "user": None, "price": "1e-7", "seen": None, "id": "10001868339616595935"},
    ]


def test_pyarrow_typed_blocks_give_the_same_text(tmp_path):
    # one type per key: pyarrow reads the block; its text matches Python's reading above
    path = tmp_path / "typed.jsonl"
    _write(
        path,
        [
            '{"click": 1, "price": 3.0, "day": "2024-05-01", "score": NaN}',
            '{"click": 0, "price": 1e-7, "score": 0.5}',
        ],
    )
    assert open_source(path).columns == ("click", "price", "day", "score")
    assert _rows(path) == [
        {"click": "1", "price": "3", "day": "2024-05-01", "score": None},
        {"click": "0", "price": "1e-7", "day": None, "score": "0.5"},
    ]


def test_integers_past_float64s_exact_ones_stay_exact(tmp_path):
    # one type per key, so pyarrow reads the block first, and reads the ids as floats
    path = tmp_path / "ids.jsonl"
    _write(
        path,
        [
            '{"click": 1, "id": 18446744073709551615}',
            '{"click": 0, "id": 9007199254740993}',
            '{"click": 0, "id": 18446744073709551614}',
        ],
    )
    assert [row["id"] for row in _rows(path)] == [
        "18446744073709551615",
        "9007199254740993",
        "18446744073709551614",
    ]


def test_integers_past_int64_are_read_by_pyarrow(tmp_path, monkeypatch):
    # 64-bit ids in every block (Avazu's) would otherwise send each block to Python's json
    path = tmp_path / "ids.jsonl"
    _write(path, ['{"click": 1, "id": 18446744073709551615}', '{"click": 0, "id": 7}'])

    def no_python(lines, uri, first_line):
        raise AssertionError("read by Python's json module")

    monkeypatch.setattr(reading, "_python_json_table", no_python)
    assert [row["id"] for row in _rows(path)] == ["18446744073709551615", "7"]


@pytest.mark.parametrize(
    "line, expected",
    [
        # whole numbers past float64's exact integers, however written: the same text on both
        ('{"click": 1, "id": 1e20}', "100000000000000000000"),
        ('{"click": 1, "id": 12345678901234567890.0}', "12345678901234567890"),
        ('{"click": 1, "id": -2.5e19}', "-25000000000000000000"),
        # past 38 digits pyarrow cannot hold them: Python's json reads both blocks
        ('{"click": 1, "id": 1e40}', "1" + "0" * 40),
        # whole numbers written as floats, below 2^53: digits too, on every path
        ('{"click": 1, "id": 12345678901.0}', "12345678901"),
        ('{"click": 1, "id": 5e15}', "5000000000000000"),
        ('{"click": 1, "id": -0.0}', "0"),
    ],
)
def test_large_whole_numbers_read_alike_by_pyarrow_and_by_python(
    tmp_path, monkeypatch, line, expected
):
    path = tmp_path / "ids.jsonl"
    # the first block one object per line (pyarrow), the later ones with blank lines (Python)
    padded = line[:-1] + ', "pad": "' + "x" * 400 + '"}'
    _write(path, [padded] * 3000 + ['{"click": 0, "id": 3}'] + [padded, ""] * 3000)
    python_blocks: list[int] = []
    python_json_table = reading._python_json_table

    def python(lines, uri, first_line):
        python_blocks.append(first_line)
        return python_json_table(lines, uri, first_line)

    monkeypatch.setattr(reading, "_python_json_table", python)
    source = open_source(path, batch_rows=64)  # blocks of 1 MiB
    ids = [row["id"] for batch, _ in source.batches() for row in batch.to_pylist()]
    assert len(ids) == 6001 and set(ids) == {expected, "3"}
    assert python_blocks and (1 in python_blocks) == (len(expected) > 38)


def test_whole_numbers_read_alike_in_a_key_read_as_decimals_and_as_floats(tmp_path):
    # the first block reads the key as whole decimals (for its 64-bit id), the later ones as
    # floats: 12345678901.0 is one value, one text
    path = tmp_path / "ids.jsonl"
    lines = ['{"click": 1, "id": 18446744073709551615}']
    lines += ['{"click": 0, "id": 12345678901.0, "pad": "' + "x" * 400 + '"}'] * 5000
    _write(path, lines)
    source = open_source(path, batch_rows=64)  # blocks of 1 MiB
    ids = [row["id"] for batch, _ in source.batches() for row in batch.to_pylist()]
    assert set(ids) == {"18446744073709551615", "12345678901"}


def test_a_fraction_among_large_whole_numbers(tmp_path):
    path = tmp_path / "ids.jsonl"
    _write(path, ['{"click": 1, "id": 18446744073709551615}', '{"click": 0, "id": 1.5}'])
    assert [row["id"] for row in _rows(path)] == ["18446744073709551615", "1.5"]


def test_a_bad_line_in_a_later_block_is_named_by_its_line_in_the_file(tmp_path):
    path = tmp_path / "long.jsonl"
    lines = [json.dumps({"click": i % 2, "pad": "x" * 200}) for i in range(6000)]
    lines[5000] = '{"click": 1, "pad": "x",}'
    _write(path, lines)
    source = open_source(path, batch_rows=64)  # blocks of 1 MiB: the bad line is in the second
    with pytest.raises(DataError, match="line 5001 is not JSON") as caught:
        list(source.batches())
    assert '{"click": 1, "pad": "x",}' in str(caught.value)


def test_a_key_typed_differently_in_a_later_block(tmp_path):
    path = tmp_path / "drift.jsonl"
    first = [json.dumps({"click": i % 2, "shop": i % 7, "pad": "x" * 200}) for i in range(6000)]
    later = [json.dumps({"click": i % 2, "shop": f"s{i % 3}", "pad": "y"}) for i in range(50)]
    _write(path, first + later)
    assert path.stat().st_size > 1 << 20  # more than one block
    rows = _rows(path)
    assert len(rows) == 6050
    assert rows[0]["shop"] == "0" and rows[-1]["shop"] == "s1"
    data = load_dataset(path, label_column="click", feature_columns=["shop"], min_count=1)
    assert data.n_rows == 6050 and data.field_dims == (11,)  # 7 + 3 values and OOV


def test_keys_with_lists_or_objects_are_left_out(tmp_path):
    path = tmp_path / "nested.jsonl"
    _write(path, ['{"click": 1, "tags": ["a", "b"], "ad": "a1"}', '{"click": 0, "ad": "a2"}'])
    assert open_source(path).columns == ("click", "ad")
    data = load_dataset(path, label_column="click", min_count=1)
    assert data.field_names == ("ad",)
    np.testing.assert_array_equal(data.labels, [1.0, 0.0])


def test_a_list_in_a_later_block_of_a_key_read_is_named(tmp_path):
    path = tmp_path / "late-list.jsonl"
    first = [json.dumps({"click": 1, "ad": "a", "pad": "x" * 200}) for _ in range(6000)]
    _write(path, [*first, '{"click": 0, "ad": ["a", "b"]}'])
    with pytest.raises(DataError) as caught:
        _rows(path)
    assert caught.value.code == "unreadable_data"
    assert "'ad'" in str(caught.value) and "lists or objects" in str(caught.value)


@pytest.mark.parametrize(
    "text, code, words",
    [
        ('[{"click": 1}]\n', "unreadable_data", "a JSON array"),
        ('"click"\n', "unreadable_data", "not a JSON object"),
        ("", "empty_dataset", "empty"),
        ('{"click": 1}\n{"click": 0\n', "unreadable_data", "line 2 is not JSON"),
        ('{"click": {"a": 1}}\n', "unreadable_data", "every key of the first objects holds"),
    ],
)
def test_data_that_is_not_json_lines_is_named(tmp_path, text, code, words):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(DataError) as caught:
        _rows(path)
    assert caught.value.code == code
    assert words in str(caught.value)


def test_a_line_that_is_not_an_object_among_mixed_types(tmp_path):
    path = tmp_path / "mixed.jsonl"
    _write(path, ['{"click": 1, "ad": "a"}', '"text"', '{"click": 0, "ad": 3}'])
    with pytest.raises(DataError, match="line 2 holds str '\"text\"', not a JSON object"):
        _rows(path)


def test_column_names_are_the_keys_to_read_wherever_they_first_appear(tmp_path):
    path = tmp_path / "t.jsonl"
    first = [json.dumps({"click": i % 2, "pad": "x" * 200}) for i in range(6000)]
    later = [json.dumps({"click": 1, "coupon": 7, "tags": [1]}), '{"click": 0, "coupon": "c"}']
    _write(path, first + later)
    source = open_source(path, column_names=["coupon", "click"])
    assert source.columns == ("coupon", "click")
    rows = [row for batch, _ in source.batches() for row in batch.to_pylist()]
    assert len(rows) == 6002 and rows[0] == {"coupon": None, "click": "0"}
    assert rows[-2:] == [{"coupon": "7", "click": "1"}, {"coupon": "c", "click": "0"}]
    # keys left out are not read, and not named as keys that were not read
    assert source.unread_keys == {} and source.keys_without_values == ()
    data = load_dataset(path, label_column="click", column_names=["click", "coupon"])
    assert data.field_names == ("coupon",) and data.metadata["unread_keys"] == {}
    # a named key that no object holds: a typo, named once the data is read
    missing = open_source(path, column_names=["click", "cupon"])
    assert sum(batch.num_rows for batch, _ in missing.batches(["click", "cupon"])) == 6002
    assert missing.keys_without_values == ("cupon",)
    with pytest.raises(DataError, match=r"no object of .* holds a value for 'cupon' \(did you "
                       r"mean 'coupon'\?\); check the spelling, or leave the key out") as caught:
        load_dataset(path, label_column="click", column_names=["click", "cupon"])
    assert caught.value.code == "column_missing"
    with pytest.raises(DataError, match="'tags' holds lists or objects, which are not read; "
                       "flatten them, or leave the key out of column_names"):
        _ = [b for b in open_source(path, column_names=["click", "tags"]).batches()]
    # a label left out of the keys named: the message says to name it there
    with pytest.raises(DataError, match="the columns read are those named in column_names") as c:
        load_dataset(path, label_column="click", column_names=["coupon"])
    assert c.value.code == "label_column_missing"
    with pytest.raises(DataError, match="named in column_names: name these there too"):
        load_dataset(path, label_column="click", column_names=["click"], feature_columns=["pad"])
    # a label key that no object holds says so, not that a row has no label
    with pytest.raises(DataError, match=r"holds the label key 'clicked' \(did you mean "
                       r"'click'\?\); check the spelling") as caught:
        load_dataset(path, label_column="clicked", column_names=["clicked", "coupon"])
    assert caught.value.code == "column_missing"
    # a key of key=value folders named among the keys is read from the folders
    for day in (1, 2):
        (tmp_path / "days" / f"day={day}").mkdir(parents=True)
        lines = [json.dumps({"click": i % 2, "ad": f"a{i % 3}"}) for i in range(6)]
        _write(tmp_path / "days" / f"day={day}" / "part.jsonl", lines)
    days = open_source(tmp_path / "days", column_names=["click", "day", "ad"])
    assert days.columns == ("click", "ad", "day")
    rows = [row for batch, _ in days.batches() for row in batch.to_pylist()]
    assert rows[0] == {"click": "0", "ad": "a0", "day": "1"} and rows[-1]["day"] == "2"
    assert days.keys_without_values == ()
    for wrong in ([], ["click", ""]):
        with pytest.raises(ValueError, match="column_names: give at least one key"):
            open_source(path, column_names=wrong)
    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.table({"click": [1, 0]}), parquet)
    with pytest.raises(ValueError, match="column_names: only for headerless CSV or TSV files or "
                       "JSON Lines, not Parquet"):
        open_source(parquet, column_names=["a"])


def test_a_folder_of_json_lines_parts(tmp_path):
    folder = tmp_path / "day=3"
    folder.mkdir()
    _write(folder / "part-0.jsonl", ['{"click": 1, "ad": "a"}'])
    _write(folder / "part-1.jsonl", ['{"click": 0, "ad": "b"}'])
    (folder / "dataset_info.json").write_text('{"description": "not data"}\n')
    assert _rows(tmp_path) == [
        {"click": "1", "ad": "a", "day": "3"},
        {"click": "0", "ad": "b", "day": "3"},
    ]
    # the partition key alone: every row is still read
    batches = open_source(tmp_path).batches(["day"])
    assert [row for batch, _ in batches for row in batch.to_pylist()] == [{"day": "3"}] * 2


def test_json_files_beside_other_data_are_not_read(tmp_path):
    # a schema or a manifest beside the data files, as many writers leave them
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "part-0.csv").write_text("click,ad\n1,a\n0,b\n")
    (folder / "schema.json").write_text('{"fields": ["click", "ad"]}\n')
    assert open_source(folder).format == "csv"
    assert len(_rows(folder)) == 2
    (folder / "more.jsonl").write_text('{"click": 1, "ad": "c"}\n')
    with pytest.raises(DataError, match="the folder mixes formats"):
        open_source(folder)


@pytest.mark.parametrize(
    "line, words",
    [
        ("null", "line 1025 holds NoneType 'null', not a JSON object"),  # pyarrow crashes on it
        ('{"click": 1} {"click": 0}', "line 1025 is not JSON (Extra data)"),
        # a key typed otherwise below sends the block to Python's json module
        ('{"click": "1", "ad": ' + "[" * 5000 + "]" * 5000 + "}", "line 1025 nests"),
    ],
)
def test_a_line_that_is_not_one_object_is_named_at_the_start_of_a_block(tmp_path, line, words):
    path = tmp_path / "t.jsonl"
    # 1,024 lines of 1,024 bytes: the first block of 1 MiB ends just before ``line``
    first = [json.dumps({"click": i % 2, "pad": ""}) for i in range(1024)]
    first = [text.replace('""', '"' + "x" * (1023 - len(text)) + '"') for text in first]
    assert {len(text) for text in first} == {1023}
    _write(path, [*first, line, '{"click": 1, "pad": "y"}'])
    source = open_source(path, batch_rows=64)  # blocks of 1 MiB
    with pytest.raises(DataError, match=words.replace("(", r"\(").replace(")", r"\)")):
        list(source.batches())


def test_bytes_that_are_not_utf8_and_an_empty_key(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"click": 1, "": "x"}\n{"click": 0, "": "\xff"}\n')
    with pytest.raises(DataError, match="cannot read the data .*UTF8") as caught:
        _rows(path)
    assert caught.value.code == "unreadable_data"
    path.write_bytes(b'\xef\xbb\xbf{"click": 1, "": "x"}\n{"click": 0, "": "y"}\n')
    assert open_source(path).columns == ("click", "")
    assert _rows(path) == [{"click": "1", "": "x"}, {"click": "0", "": "y"}]


def test_blank_lines_indented_objects_and_crlf_read_as_rows(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"click": 1, "ad": "a"}\r\n\r\n   {"click": 0, "ad": "b"}\r\n\n')
    assert _rows(path) == [{"click": "1", "ad": "a"}, {"click": "0", "ad": "b"}]


def test_keys_that_first_appear_after_the_first_block_are_named_with_their_line(tmp_path):
    path = tmp_path / "late.jsonl"
    first = [json.dumps({"click": i % 2, "shop": i % 7, "pad": "x" * 200}) for i in range(6000)]
    later = [json.dumps({"click": i % 2, "shop": i % 7, "pad": "y"}) for i in range(50)]
    later[10] = json.dumps({"click": 1, "shop": 1, "pad": "y", "coupon": None})  # no value yet
    later[20] = json.dumps({"click": 1, "shop": 2, "pad": "y", "coupon": "c1", "tags": [1]})
    later[30] = json.dumps({"click": 0, "shop": 3, "pad": "y", "shop_region": "north"})
    # blank lines hold no row but count as lines
    _write(path, first + later[:25] + ["", "  "] + later[25:])
    data = load_dataset(path, label_column="click", min_count=1)
    assert data.field_names == ("shop", "pad")
    # where each first holds a value (lists are left out whenever they appear)
    assert data.metadata["unread_keys"] == {"coupon": {"line": 6021}, "shop_region": {"line": 6033}}
    assert data.metadata["unread_key_count"] == 2
    # a folder names the file too, by its path within the folder; data whose keys all come
    # first has none
    for day in (1, 2):
        (tmp_path / "parts" / f"day={day}").mkdir(parents=True)
    _write(tmp_path / "parts" / "day=1" / "part-0.jsonl", first[:10])
    _write(tmp_path / "parts" / "day=2" / "part-0.jsonl", [first[0], later[30]])
    parts = load_dataset(tmp_path / "parts", label_column="click", min_count=1)
    assert parts.metadata["unread_keys"] == {
        "shop_region": {"line": 2, "file": "day=2/part-0.jsonl"}
    }
    alone = load_dataset(tmp_path / "parts" / "day=1" / "part-0.jsonl", label_column="click")
    assert alone.metadata["unread_keys"] == {} and alone.metadata["unread_key_count"] == 0


def test_past_twenty_keys_that_are_not_read_are_counted(tmp_path):
    path = tmp_path / "wide.jsonl"
    first = [json.dumps({"click": i % 2, "pad": "x" * 200}) for i in range(6000)]
    later = [json.dumps({"click": 1, "pad": "y", f"k{i}": i}) for i in range(25)]
    _write(path, first + later + later[:3])
    data = load_dataset(path, label_column="click", min_count=1)
    assert list(data.metadata["unread_keys"]) == [f"k{i}" for i in range(20)]
    assert data.metadata["unread_keys"]["k19"] == {"line": 6020}
    assert data.metadata["unread_key_count"] == 25
