"""The JSON job contract mirrors the engine's configuration."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from nacs_engine.config import SelectionConfig, option_fields
from worker.spec import JobOptions, JobRequest


def test_options_are_the_engine_options_with_their_defaults_and_docs() -> None:
    fields = JobOptions.model_fields
    assert set(fields) == {f.name for f in option_fields()}
    for option in option_fields():
        assert fields[option.name].default == option.default
        assert fields[option.name].description == option.metadata["doc"]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"rounds": 0}, "rounds"),
        ({"rounds": 21}, "rounds"),
        ({"mc_passes": 1}, "mc_passes"),
        ({"remove_rate": 0.51}, "remove_rate"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"dropout": 1.0}, "dropout"),
        ({"partition_size": 63}, "partition_size"),
        ({"seed": -1}, "seed"),
        ({"device": "cuda:x"}, "device"),
        ({"backbone": "lstm"}, "backbone"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
def test_out_of_range_options_name_the_option(options: dict, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        JobRequest(dataset_uri="/data/x.parquet", ratio=0.1, options=options)
    assert caught.value.errors()[0]["loc"] == ("options", field)


def test_every_accepted_request_makes_a_valid_engine_config() -> None:
    request = JobRequest(
        dataset_uri="/data/x.parquet",
        size=100,
        method="nacs-no-denoise",
        options={
            "rounds": 20,
            "mc_passes": 100,
            "partition_size": 64,
            "device": "cuda:1",
            "remove_rate": 0.5,
        },
    )
    config = request.to_config()
    assert isinstance(config, SelectionConfig)
    assert config.size == 100 and config.rounds == 20 and config.device == "cuda:1"
    assert dataclasses.asdict(config)["method"] == "nacs-no-denoise"


@pytest.mark.parametrize(
    "budget",
    [
        {},
        {"ratio": 0.1, "size": 5},
        {"ratio": 0.0},
        {"ratio": 1.0},
        {"ratio": float("inf")},
        {"size": 0},
    ],
)
def test_budget_is_exactly_one_valid_value(budget: dict) -> None:
    with pytest.raises(ValidationError):
        JobRequest(dataset_uri="/data/x.parquet", **budget)


def test_request_round_trips_as_json() -> None:
    request = JobRequest(
        dataset_uri="s3://b/k.parquet", ratio=0.25, numeric_columns=["price"], format="parquet"
    )
    assert JobRequest.model_validate_json(request.model_dump_json()) == request


def test_spec_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, worker.spec, worker.enqueue, worker.reaper, worker.storage; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_worker_preloads_torch_without_running_it() -> None:
    """A forking worker imports torch and the engine before it forks its work horses, and
    leaves CUDA and torch's thread pools untouched, so that the fork stays safe."""
    import subprocess
    import sys

    code = (
        "import threading, sys; from worker.runner import preload_engine; preload_engine(); "
        "import torch; "
        "assert {'torch', 'nacs_engine.audit', 'nacs_engine.teacher'} <= set(sys.modules); "
        "assert not torch.cuda.is_initialized(); "
        "assert threading.active_count() == 1, threading.enumerate()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_numeric_columns_left_empty_still_mean_detection() -> None:
    from worker.tasks import encoder_numeric_columns

    # requests stored before numeric_detection existed hold numeric_columns [] (the default)
    stored = JobRequest.model_validate(
        {"dataset_uri": "s3://b/k.parquet", "ratio": 0.1, "numeric_columns": []}
    )
    assert encoder_numeric_columns(stored) is None  # the encoder detects them
    off = stored.model_copy(update={"numeric_detection": False})
    assert encoder_numeric_columns(off) == []
    named = stored.model_copy(update={"numeric_columns": ["price"], "numeric_detection": False})
    assert encoder_numeric_columns(named) == ["price"]


def test_column_names_are_for_text_or_json_lines_and_named_once() -> None:
    base = {"dataset_uri": "s3://b/k.csv", "ratio": 0.1}
    request = JobRequest.model_validate(base | {"column_names": ["a", "label"]})
    assert request.column_names == ["a", "label"] and request.submit_problem() is None
    keys = JobRequest.model_validate(base | {"column_names": ["a", "label"], "format": "jsonl"})
    assert keys.submit_problem() is None
    twice = JobRequest.model_validate(base | {"column_names": ["a", "a", "label"]})
    assert twice.submit_problem() == (
        "column_names", "column_names: duplicate column name(s) ['a']"
    )
    for body, words in [
        (base | {"column_names": []}, "column_names"),
        (base | {"column_names": ["a", ""]}, "column_names"),
        (base | {"column_names": ["a"], "format": "parquet"}, "not parquet"),
        (base | {"column_names": ["a"], "format": "criteo"}, "not criteo"),
    ]:
        with pytest.raises(ValidationError, match=words) as caught:
            JobRequest.model_validate(body)
        assert caught.value.errors()[0]["loc"][0] == "column_names"


def test_column_names_for_a_file_named_otherwise_are_refused_at_submit() -> None:
    for uri in ("s3://b/k.parquet", "/data/clicks.pq"):
        request = JobRequest.model_validate(
            {"dataset_uri": uri, "ratio": 0.1, "column_names": ["a", "label"]}
        )
        field, message = request.submit_problem()
        assert field == "column_names" and "only for a CSV or TSV file" in message
    for uri in ("s3://b/k.csv.gz", "s3://b/folder/", "/data/k.txt", "/data/clicks.jsonl.gz"):
        request = JobRequest.model_validate(
            {"dataset_uri": uri, "ratio": 0.1, "column_names": ["a", "label"]}
        )
        assert request.submit_problem() is None
    told = JobRequest.model_validate(
        {"dataset_uri": "s3://b/k.data", "ratio": 0.1, "format": "csv", "column_names": ["a"]}
    )
    assert told.submit_problem() is None
