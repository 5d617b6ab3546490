"""Vocabularies, OOV mapping, numeric buckets, memory mapping and fingerprints."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nacs_engine.data import Encoder, bucketize, load_dataset
from nacs_engine.data.encoding import MISSING_CODE
from nacs_engine.errors import DataError


def test_bucketize_follows_the_criteo_rule():
    values = np.array([0, 1, 2, 3, 10, 100, -1, 1.5, np.nan, np.inf])
    expected = [0, 1, 2, 1, 5, 21, -1, 1, MISSING_CODE, MISSING_CODE]
    np.testing.assert_array_equal(bucketize(values), expected)


def test_min_count_maps_rare_values_to_oov():
    table = pa.table(
        {
            "label": [1, 0, 1, 0, 1, 0, 1, 0],
            "city": ["a", "a", "a", "b", "b", "c", None, None],
        }
    )
    data = load_dataset(table, min_count=2)
    # counts: a 3, b 2, missing 2, c 1 -> a=1, then ties (b, missing) in text order
    # (the missing token sorts first), c is rare -> 0
    assert data.field_dims == (4,)
    np.testing.assert_array_equal(data.features[:, 0], [1, 1, 1, 3, 3, 0, 2, 2])
    assert data.metadata["oov_share"] == {"city": 1 / 8}
    everything = load_dataset(table, min_count=1)
    assert everything.field_dims == (5,)
    assert np.all(everything.features > 0)


def test_numeric_column_is_bucketed_before_counting():
    table = pa.table({"label": [0, 1, 0, 1, 0], "clicks": [3.0, 1.0, 100.0, None, 120.0]})
    data = load_dataset(table, numeric_columns=["clicks"], min_count=1)
    # buckets: 3 -> 1, 1 -> 1, 100 -> 21, 120 -> 22, missing -> its own token
    ids = data.features[:, 0]
    assert ids[0] == ids[1]
    assert len({ids[0], ids[2], ids[3], ids[4]}) == 4
    assert data.field_dims == (5,)


def _scores_table(n: int, seed: int = 0) -> pa.Table:
    """A click that follows a score in [0, 1), a z-score and a count."""
    rng = np.random.default_rng(seed)
    score = rng.random(n)
    return pa.table(
        {
            "label": (rng.random(n) < score).astype(np.int8),
            "score": score,
            "z": rng.normal(size=n),
            "count": rng.integers(0, 1000, n).astype(np.float64),
        }
    )


def test_a_numeric_column_the_criteo_rule_squeezes_gets_quantile_buckets():
    table = _scores_table(4_000)
    data = load_dataset(table, numeric_columns=["score", "z", "count"], min_count=1)
    # The rule puts all of [0, 1) into bucket 0 and the z-scores into about 7; the counts
    # (0-999) get 48 buckets from it and keep it.
    assert data.metadata["numeric_buckets"] == {
        "score": "32 quantile buckets",
        "z": "32 quantile buckets",
        "count": "criteo rule",
    }
    assert data.field_dims[:2] == (33, 33)
    # equal-frequency buckets: each holds about 1/32 of the rows, and they follow the score
    ids = data.features[:, 0]
    shares = np.bincount(ids, minlength=33)[1:] / ids.shape[0]
    assert shares.min() > 0.02 and shares.max() < 0.045
    # each bucket is an interval of the score: in score order the id changes 31 times
    in_order = ids[np.argsort(table.column("score").to_numpy())]
    assert np.count_nonzero(np.diff(in_order)) == 31


def test_quantile_buckets_carry_over_to_another_split_and_ignore_the_batching(monkeypatch):
    import nacs_engine.data.encoding as encoding

    monkeypatch.setattr(encoding, "SAMPLE_VALUES", 300)
    table = _scores_table(3_000, seed=1)
    whole = Encoder(numeric_columns=["score"], min_count=1).fit(table)
    edges = whole.bucket_edges[0]
    assert edges is not None and edges.shape == (31,)
    batched = Encoder(numeric_columns=["score"], min_count=1).fit(
        encoding.as_source(table, batch_rows=128)
    )
    np.testing.assert_array_equal(batched.bucket_edges[0], edges)
    other = _scores_table(500, seed=2)
    encoded = whole.transform(other)
    expected = np.searchsorted(edges, other.column("score").to_numpy(), side="right")
    lookup = whole.vocabularies[0].lookup(expected.astype(np.int64))
    np.testing.assert_array_equal(encoded.features[:, 0], lookup)
    # a missing value is a token of its own; beyond the fitted range, the outer buckets
    assert encoding.numeric_tokens(np.array([np.nan, -5.0, 5.0]), edges).tolist() == [
        MISSING_CODE,
        0,
        31,
    ]


def test_a_mass_of_one_value_gets_its_own_bucket_and_the_rest_share_the_others():
    from nacs_engine.data.encoding import numeric_edges, numeric_tokens

    rng = np.random.default_rng(4)
    sample = np.where(rng.random(20_000) < 0.9, 0.0, rng.random(20_000))
    edges = numeric_edges(sample, rule_buckets=1)
    assert edges is not None
    tokens = numeric_tokens(sample, edges)
    zeros = tokens[sample == 0.0]
    assert np.unique(zeros).size == 1
    others = tokens[sample != 0.0]
    assert not np.isin(zeros[0], others)
    # the continuous tenth is cut into the other 31 buckets, of about equal size
    counts = np.bincount(others)[np.unique(others)]
    assert np.unique(others).size == 31 and counts.min() > 0.6 * counts.mean()


def test_float_columns_are_numeric_when_any_value_has_a_fraction_whatever_the_batching():
    from nacs_engine.data.reading import as_source

    n = 3_000
    price = np.arange(n, dtype=np.float64)  # whole numbers in the first rows,
    price[2_000:] += 0.5  # fractions after them
    table = pa.table({"label": (np.arange(n) % 3 == 0).astype(np.int8), "price": price})
    fingerprints = set()
    for rows in (100, 1_000, 65_536):
        data = load_dataset(as_source(table, batch_rows=rows), min_count=1)
        assert data.metadata["numeric_columns"] == ["price"]
        fingerprints.add(data.fingerprint)
    assert len(fingerprints) == 1


def test_float_columns_with_fractions_are_numeric_unless_the_columns_are_named():
    table = _scores_table(2_000).append_column(
        "item", pa.array(np.arange(2_000) % 50, type=pa.float64())
    )
    data = load_dataset(table, min_count=1)
    # whole numbers stored as floats (ids with missing values, from pandas) stay categories
    assert data.metadata["numeric_columns"] == ["score", "z"]
    assert data.field_dims[3] == 51
    named = load_dataset(table, numeric_columns=["z"], min_count=1)
    assert named.metadata["numeric_columns"] == ["z"]
    assert named.metadata["oov_share"]["score"] == 0.0 and named.field_dims[0] == 2_001


def test_encoder_transform_maps_unseen_values_to_oov():
    train = pa.table({"label": [1, 0, 1, 0], "item": ["x", "x", "y", "y"], "n": [1, 2, 1, 2]})
    test = pa.table({"label": [0, 1, 1], "item": ["y", "z", "x"], "n": [2, 7, 1]})
    encoder = Encoder(min_count=1).fit(train)
    encoded = encoder.transform(test)
    assert encoded.field_dims == encoder.field_dims == (3, 3)
    x, y = (encoder.vocabularies[0].lookup(np.array(v, dtype=object))[0] for v in (["x"], ["y"]))
    np.testing.assert_array_equal(encoded.features[:, 0], [y, 0, x])
    assert encoded.features[1, 1] == 0
    np.testing.assert_array_equal(encoded.labels, [0, 1, 1])


def test_transform_checks_columns_and_fit_state():
    train = pa.table({"label": [1, 0], "item": ["x", "y"]})
    with pytest.raises(ValueError, match="encoder"):
        Encoder().transform(train)
    encoder = Encoder(min_count=1).fit(train)
    with pytest.raises(DataError) as info:
        encoder.transform(pa.table({"label": [1], "other": ["x"]}))
    assert info.value.code == "column_missing"
    with pytest.raises(DataError) as info:
        encoder.transform(pa.table({"y": [1], "item": ["x"]}))
    assert info.value.code == "label_column_missing"


def test_memmap_storage_gives_the_same_features(tmp_path):
    rng = np.random.default_rng(1)
    n = 500
    table = pa.table(
        {
            "label": rng.integers(0, 2, n),
            "a": rng.integers(0, 30, n),
            "b": rng.choice(list("pqrs"), n),
        }
    )
    in_memory = load_dataset(table, min_count=3)
    assert in_memory.metadata["storage"] == "memory"
    mapped = load_dataset(
        table, min_count=3, workdir=tmp_path, memmap_threshold_bytes=64, batch_rows=50
    )
    assert isinstance(mapped.features, np.memmap)
    assert mapped.metadata["storage"] == "memmap"
    np.testing.assert_array_equal(mapped.features, in_memory.features)
    assert mapped.fingerprint == in_memory.fingerprint
    assert list(tmp_path.iterdir()) == []  # the mapped file is unlinked once open


def test_fingerprint_tracks_labels_values_and_options():
    rng = np.random.default_rng(2)
    n = 200
    labels = rng.integers(0, 2, n)
    values = rng.integers(0, 50, n)
    base = load_dataset(pa.table({"label": labels, "v": values}), min_count=3)
    again = load_dataset(pa.table({"label": labels, "v": values}), min_count=3, batch_rows=17)
    assert base.fingerprint == again.fingerprint and len(base.fingerprint) == 64

    flipped = labels.copy()
    flipped[37] = 1 - flipped[37]
    assert (
        load_dataset(pa.table({"label": flipped, "v": values}), min_count=3).fingerprint
        != base.fingerprint
    )

    counts = np.bincount(values)
    rare = np.flatnonzero(values == np.flatnonzero((counts > 0) & (counts < 3))[0])[0]
    changed = values.copy()
    changed[rare] = 1000  # still out of vocabulary: the ids do not change, the data does
    other = load_dataset(pa.table({"label": labels, "v": changed}), min_count=3)
    np.testing.assert_array_equal(other.features, base.features)
    assert other.fingerprint != base.fingerprint

    assert (
        load_dataset(pa.table({"label": labels, "v": values}), min_count=4).fingerprint
        != base.fingerprint
    )


def test_min_count_must_be_positive():
    with pytest.raises(ValueError, match="min_count"):
        Encoder(min_count=0)


@pytest.mark.parametrize("spread", [1, 10**12])
def test_integer_lookup_dense_and_sparse(spread):
    rng = np.random.default_rng(4)
    base = rng.integers(0, 40, 400) * spread
    values = pa.array(base.tolist() + [None] * 30, pa.int64())
    labels = rng.integers(0, 2, len(values))
    data = load_dataset(pa.table({"label": labels, "v": values}), min_count=5)
    as_text = load_dataset(
        pa.table(
            {
                "label": labels,
                "v": pa.array([None if v is None else str(v) for v in values.to_pylist()]),
            }
        ),
        min_count=5,
    )
    # integer and text columns give the same ids (ties are broken in text order)
    np.testing.assert_array_equal(data.features, as_text.features)
    tokens = values.to_pylist()
    counts = {t: tokens.count(t) for t in set(tokens)}
    kept = sorted(
        (t for t in counts if counts[t] >= 5),
        key=lambda t: (-counts[t], "" if t is None else str(t)),
    )
    expected = [kept.index(t) + 1 if t in kept else 0 for t in tokens]
    np.testing.assert_array_equal(data.features[:, 0], expected)


def test_numeric_column_with_text_is_a_data_error():
    table = pa.table({"label": [0, 1], "n": ["3", "many"]})
    with pytest.raises(DataError) as info:
        load_dataset(table, numeric_columns=["n"])
    assert info.value.code == "unreadable_data" and "'n'" in info.value.message


def test_argument_errors_name_the_argument():
    table = pa.table({"label": [0, 1], "a": ["x", "y"]})
    with pytest.raises(ValueError, match="feature_columns"):
        load_dataset(table, feature_columns=["label", "a"])
    with pytest.raises(ValueError, match="numeric_columns"):
        load_dataset(table, feature_columns=["a"], numeric_columns=["label"])
    with pytest.raises(ValueError, match="batch_rows"):
        load_dataset(table, batch_rows=0)
    with pytest.raises(ValueError, match="source"):
        load_dataset(42)


def test_spill_to_a_file_when_the_row_count_is_unknown(tmp_path):
    rng = np.random.default_rng(6)
    n = 300
    path = tmp_path / "t.csv"
    path.write_text(
        "label,a\n"
        + "".join(
            f"{int(y)},{int(v)}\n"
            for y, v in zip(rng.integers(0, 2, n), rng.integers(0, 9, n), strict=True)
        )
    )
    from nacs_engine.data import open_source

    source = open_source(path, batch_rows=32)
    assert source.total_rows is None
    encoder = Encoder(min_count=1).fit(source)
    in_memory = encoder.transform(source)
    spilled = encoder.transform(source, workdir=tmp_path / "..", memmap_threshold_bytes=100)
    assert in_memory.metadata["storage"] == "memory" and spilled.metadata["storage"] == "memmap"
    np.testing.assert_array_equal(spilled.features, in_memory.features)
    assert spilled.fingerprint == in_memory.fingerprint
    with pytest.raises(ValueError, match="workdir"):
        encoder.transform(source, workdir=tmp_path / "absent", memmap_threshold_bytes=100)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "e", "10", "9"])),
        min_size=1,
        max_size=60,
    ),
    min_count=st.integers(1, 4),
    batch_rows=st.integers(1, 12),
)
def test_encoding_matches_a_plain_python_reference(values, min_count, batch_rows):
    labels = [i % 2 for i in range(len(values))]
    table = pa.table({"label": labels, "v": pa.array(values, pa.string())})
    data = load_dataset(table, min_count=min_count, batch_rows=batch_rows)
    counts = {v: values.count(v) for v in set(values)}
    kept = sorted(
        (v for v in counts if counts[v] >= min_count),
        key=lambda v: (-counts[v], "" if v is None else v),
    )
    expected = [kept.index(v) + 1 if v in kept else 0 for v in values]
    np.testing.assert_array_equal(data.features[:, 0], expected)
    assert data.field_dims == (len(kept) + 1,)
    assert data.fingerprint == load_dataset(table, min_count=min_count).fingerprint


def test_uint64_ids_beyond_the_int64_range_are_categories():
    big = np.array([10000169349117863715, 10000169349117863715, 5, 7], dtype=np.uint64)
    table = pa.table({"label": [1, 0, 1, 0], "id": pa.array(big, type=pa.uint64())})
    data = load_dataset(table, min_count=1)
    assert data.field_dims == (4,)
    ids = data.features[:, 0]
    assert ids[0] == ids[1] and len(set(ids.tolist())) == 3
    as_text = load_dataset(
        pa.table({"label": [1, 0, 1, 0], "id": [str(v) for v in big.tolist()]}), min_count=1
    )
    np.testing.assert_array_equal(as_text.features, data.features)
    assert as_text.fingerprint == data.fingerprint


def test_a_missing_label_is_named_by_its_row_in_the_data_not_in_its_batch():
    from nacs_engine.data.reading import as_source

    labels = [0, 1] * 150
    labels[205] = None
    table = pa.table({"label": labels, "item": ["a", "b", "c"] * 100})
    with pytest.raises(DataError, match=r"missing value \(row 205,"):
        load_dataset(as_source(table, batch_rows=64), min_count=1)


def test_text_that_says_a_number_is_missing_reads_as_missing():
    table = pa.table(
        {
            "label": [0, 1, 0, 1, 0, 1, 0, 1],
            "n": ["3", " NA ", "N/A", "null", "None", "?", "-", "100"],
        }
    )
    data = load_dataset(table, numeric_columns=["n"], min_count=1)
    ids = data.features[:, 0]
    assert len(set(ids[1:7].tolist())) == 1 and ids[0] != ids[1] and ids[7] != ids[1]
    with pytest.raises(DataError, match="not a number"):
        load_dataset(pa.table({"label": [0, 1], "n": ["3", "many"]}), numeric_columns=["n"])


def _times_table(n: int, seed: int = 0) -> pa.Table:
    """Clicks that grow with time over a year: a timestamp, its date and its ISO text."""
    import datetime as dt

    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, 365 * 86_400, n))
    start = dt.datetime(2024, 1, 1)
    stamps = [start + dt.timedelta(seconds=int(s)) for s in seconds]
    return pa.table(
        {
            "label": (rng.random(n) < seconds / seconds.max()).astype(np.int8),
            "at": pa.array(stamps, pa.timestamp("us")),
            "day": pa.array([s.date() for s in stamps], pa.date32()),
            "text": [s.isoformat(sep=" ") for s in stamps],
        }
    )


def test_float_columns_of_many_whole_numbers_read_as_categories_are_listed():
    rng = np.random.default_rng(4)
    n = 2_000
    length = rng.integers(60, 180, n).astype(np.float64)  # minutes: 120 whole values
    length[::7] = np.nan  # pandas' integers with missing values
    table = pa.table(
        {
            "label": (rng.random(n) < 0.3).astype(np.int8),
            "length": length,
            "stars": rng.integers(1, 6, n).astype(np.float64),  # five values: a fine category
            "price": rng.random(n) * 100,  # fractions: numeric
            "genre": rng.choice(["a", "b", "c"], n),
        }
    )
    data = load_dataset(table, min_count=1)
    assert data.metadata["whole_number_columns"] == ["length"]
    assert set(data.metadata["numeric_buckets"]) == {"price"}
    assert data.field_dims[data.field_names.index("length")] > 100  # one id per value
    # named numeric columns replace the detection: nothing is read as whole numbers then
    named = load_dataset(table, numeric_columns=["length", "price"], min_count=1)
    assert named.metadata["whole_number_columns"] == []
    assert set(named.metadata["numeric_buckets"]) == {"length", "price"}


def test_dates_and_times_are_numeric_when_no_column_is_named():
    table = _times_table(3_000)
    data = load_dataset(table, min_count=1)
    # a timestamp, a date and ISO 8601 text read as numbers in buckets of time
    assert data.metadata["numeric_buckets"] == {
        "at": "32 quantile buckets",
        "day": "32 quantile buckets",
        "text": "32 quantile buckets",
    }
    at = data.features[:, data.field_names.index("at")]
    in_order = at[np.argsort(table.column("at").to_numpy())]
    assert np.count_nonzero(np.diff(in_order)) == 31  # each bucket a stretch of time
    # the text gives the timestamp's buckets, named or not, whole seconds or fractions
    np.testing.assert_array_equal(data.features[:, data.field_names.index("text")], at)
    text = load_dataset(table.select(["label", "text"]), numeric_columns=["text"], min_count=1)
    np.testing.assert_array_equal(text.features[:, 0], at)
    dates = pa.table({"label": [0, 1] * 50, "d": [f"2024-05-{i % 28 + 1:02d}" for i in range(100)]})
    assert load_dataset(dates, min_count=1).metadata["numeric_buckets"] == {
        "d": "28 quantile buckets"
    }
    # dates in some batches and numbers in others are neither: categories
    mixed = pa.table({"label": [0, 1] * 50, "m": ["2024-05-01"] * 50 + ["1.5"] * 50})
    assert load_dataset(mixed, min_count=1, batch_rows=50).metadata["numeric_buckets"] == {}
    zoned = pa.table(
        {"label": [0, 1, 1], "t": ["2024-05-01T10:00:00Z", "2024-05-02T10:00:00Z", None]}
    )
    assert load_dataset(zoned, numeric_columns=["t"], min_count=1).n_rows == 3
    # named ones only: a timestamp not named stays a category
    named = load_dataset(table, numeric_columns=["day"], min_count=1)
    assert named.metadata["numeric_buckets"] == {"day": "32 quantile buckets"}
    with pytest.raises(DataError, match="not a number"):
        load_dataset(
            pa.table({"label": [0, 1], "t": ["2024-05-01", "soon"]}), numeric_columns=["t"]
        )


def test_a_text_column_of_numbers_with_a_fraction_is_numeric_as_in_parquet(tmp_path):
    table = _scores_table(3_000)
    rng = np.random.default_rng(1)
    table = table.append_column("user", pa.array(rng.integers(0, 50, 3_000)))
    table = table.append_column("city", pa.array(rng.choice(["a", "b", "c"], 3_000)))
    pq.write_table(table, tmp_path / "t.parquet")
    csv = tmp_path / "t.csv"
    csv.write_text(
        ",".join(table.column_names)
        + "\n"
        + "".join(",".join(str(v) for v in row.values()) + "\n" for row in table.to_pylist())
    )
    from_csv = load_dataset(str(csv), min_count=1, batch_rows=500)
    from_parquet = load_dataset(str(tmp_path / "t.parquet"), min_count=1)
    # score and z have fractions: numeric either way; count (whole floats), user and city
    # stay categories; the buckets are the same
    assert (
        from_csv.metadata["numeric_buckets"]
        == from_parquet.metadata["numeric_buckets"]
        == {
            "score": "32 quantile buckets",
            "z": "32 quantile buckets",
        }
    )
    np.testing.assert_array_equal(from_csv.features[:, :2], from_parquet.features[:, :2])
    assert from_csv.field_dims[2:] == from_parquet.field_dims[2:]


def test_a_text_column_that_turns_out_not_all_numbers_is_counted_as_categories(tmp_path):
    values = [f"{i % 40 + 0.5}" for i in range(1_000)]
    values[900] = "unknown"  # in the last batch of 100 rows
    table = pa.table({"label": np.arange(1_000) % 2, "v": values})
    detected = load_dataset(table, min_count=1, batch_rows=100)
    plain = load_dataset(table, numeric_columns=[], min_count=1, batch_rows=100)
    assert detected.metadata["numeric_buckets"] == {}
    assert detected.field_dims == plain.field_dims == (42,)  # 40 values, "unknown", OOV
    np.testing.assert_array_equal(detected.features, plain.features)


def test_a_few_dates_get_a_bucket_each_and_texts_may_hold_fractions_of_seconds():
    import datetime as dt

    days = [dt.date(2024, 5, 1) + dt.timedelta(days=i % 7) for i in range(700)]
    table = pa.table({"label": np.arange(700) % 2, "day": pa.array(days, pa.date32())})
    data = load_dataset(table, min_count=1)
    ids = data.features[:, 0]
    # the Criteo rule would give every recent date one id; here each day has its own
    assert len(np.unique(ids)) == 7
    assert all(len(np.unique(ids[np.arange(700) % 7 == d])) == 1 for d in range(7))
    texts = ["2024-05-01 12:30:00.500", "2024-05-01T12:30:01.25Z", "2024-05-02 00:00:00"]
    zoned = pa.table({"label": [0, 1, 0], "t": texts[1:2] * 3})
    naive = pa.table({"label": [0, 1, 0], "t": [texts[0], texts[2], None]})
    assert load_dataset(zoned, numeric_columns=["t"], min_count=1).n_rows == 3
    assert load_dataset(naive, numeric_columns=["t"], min_count=1).n_rows == 3


def test_named_iso_dates_get_a_bucket_each_too():
    days = [f"2024-05-0{i % 7 + 1}" for i in range(700)]
    table = pa.table({"label": np.arange(700) % 2, "day": days})
    for numeric in (None, ["day"]):
        ids = load_dataset(table, numeric_columns=numeric, min_count=1).features[:, 0]
        assert len(np.unique(ids)) == 7, numeric
