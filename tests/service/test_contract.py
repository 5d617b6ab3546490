"""The OpenAPI document says what the API enforces, and the API accepts what the document allows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import assert_error


def request_validator(client: TestClient) -> jsonschema.Validator:
    """A validator of POST /jobs bodies against the served OpenAPI document."""
    document = client.get("/openapi.json").json()
    schema = {"$ref": "#/components/schemas/JobRequest", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


def budget_bodies(dataset: Path) -> list[dict[str, Any]]:
    base: dict[str, Any] = {"dataset_uri": str(dataset), "method": "random"}
    return [
        base | {"ratio": 0.1},
        base | {"size": 10},
        base | {"ratio": 0.1, "size": None},
        base | {"ratio": None, "size": 10},
        base,
        base | {"ratio": None},
        base | {"ratio": None, "size": None},
        base | {"ratio": 0.1, "size": 10},
        base | {"size": 10.0},
        base | {"size": 10.5},
        base | {"size": 10, "options": {"epochs_per_round": 2.0, "seed": 7.0}},
        base | {"size": 10, "options": {"epochs_per_round": 2.5}},
        base | {"size": 10, "feature_columns": []},
        base | {"size": 10, "feature_columns": ["f0"]},
        base | {"size": 10, "options": {"seed": 2**53 - 1}},
        base | {"size": 10, "options": {"seed": 2**53}},
        base | {"size": 10, "options": {"seed": 2**63 + 192}},
    ]


def test_the_schema_and_the_api_agree_on_every_budget(client: TestClient, dataset: Path) -> None:
    validator = request_validator(client)
    for payload in budget_bodies(dataset):
        response = client.post("/jobs", json=payload)
        assert response.status_code in (202, 422), response.text
        schema_valid = validator.is_valid(payload)
        assert schema_valid == (response.status_code == 202), (payload, response.text)


def test_exactly_one_budget_is_in_the_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["JobRequest"]
    branches = schema["oneOf"]
    assert [branch["required"] for branch in branches] == [["ratio"], ["size"]]


def test_whole_number_floats_are_integers(client: TestClient, dataset: Path) -> None:
    payload = {"dataset_uri": str(dataset), "size": 10.0, "options": {"epochs_per_round": 1.0}}
    response = client.post("/jobs", json=payload)
    assert response.status_code == 202, response.text
    request = response.json()["request"]
    assert request["size"] == 10 and isinstance(request["size"], int)
    assert request["options"]["epochs_per_round"] == 1
    assert isinstance(request["options"]["epochs_per_round"], int)
    fractional = payload | {"size": 10.5}
    assert_error(client.post("/jobs", json=fractional), 422, mentions="size")


def test_empty_feature_columns_are_refused_at_submit(client: TestClient, dataset: Path) -> None:
    payload = {"dataset_uri": str(dataset), "ratio": 0.1, "feature_columns": []}
    assert_error(client.post("/jobs", json=payload), 422, mentions="feature_columns")
    schema = client.get("/openapi.json").json()["components"]["schemas"]["JobRequest"]
    assert schema["properties"]["feature_columns"]["anyOf"][0]["minItems"] == 1
    for field in ("feature_columns", "numeric_columns", "column_names"):
        twice = {"dataset_uri": str(dataset), "ratio": 0.1, field: ["a", "b", "a"]}
        if field == "column_names":
            twice["format"] = "csv"
        error = assert_error(client.post("/jobs", json=twice), 422, mentions=field)
        assert "duplicate column name(s) ['a']" in error["message"]
        assert error["details"][0]["field"] == field
    # column_names for a file whose name says it is not CSV, TSV or JSON Lines
    named = {"dataset_uri": str(dataset), "ratio": 0.1, "column_names": ["a", "label"]}
    error = assert_error(client.post("/jobs", json=named), 422, mentions="column_names")
    assert "the dataset's name says parquet" in error["message"]
    keys = named | {"dataset_uri": str(dataset.with_suffix(".jsonl"))}
    accepted = client.post("/jobs", json=keys)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["request"]["column_names"] == ["a", "label"]
    # a request stored before this check still reads back (the job list shows it)
    from service.schemas import Job
    from worker.enqueue import new_record

    stored = {
        "dataset_uri": "file:///d/x.parquet", "ratio": 0.1, "feature_columns": ["a", "a"],
        "output_uri": "file:///s/local/jobs/x",
    }
    assert Job.of(new_record("alpha", stored, "ab" * 16)).request.feature_columns == ["a", "a"]


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/jobs", "GET, OPTIONS, POST"),
        ("/jobs/abc", "GET, OPTIONS"),
        ("/jobs/abc/cancel", "OPTIONS, POST"),
        ("/healthz", "GET, OPTIONS"),
    ],
)
def test_allow_lists_every_method_of_the_path(client: TestClient, path: str, methods: str) -> None:
    options = client.options(path)
    assert options.status_code == 204, options.text
    assert options.headers["allow"] == methods
    refused = client.request("DELETE", path)
    assert_error(refused, 405, "method_not_allowed")
    assert refused.headers["allow"] == methods
    documented = client.get("/openapi.json").json()["paths"][path.replace("abc", "{job_id}")]
    assert {method.upper() for method in documented} | {"OPTIONS"} == set(methods.split(", "))


def test_any_cursor_of_the_documented_shape_is_a_position(
    client: TestClient, dataset: Path
) -> None:
    for _ in range(3):
        client.post("/jobs", json={"dataset_uri": str(dataset), "ratio": 0.1})
    parameters = client.get("/openapi.json").json()["paths"]["/jobs"]["get"]["parameters"]
    cursor = next(p for p in parameters if p["name"] == "cursor")
    pattern = cursor["schema"]["anyOf"][0]["pattern"]
    first = client.get("/jobs", params={"limit": 1}).json()
    assert jsonschema.Draft202012Validator({"pattern": pattern}).is_valid(first["next_cursor"])
    rest = client.get("/jobs", params={"cursor": first["next_cursor"]}).json()["jobs"]
    assert len(rest) == 2 and first["jobs"][0]["id"] not in {job["id"] for job in rest}
    made_up = client.get("/jobs", params={"cursor": "0000000000000000.0_0"})
    assert made_up.status_code == 200 and made_up.json() == {"jobs": [], "next_cursor": None}
    latest = client.get("/jobs", params={"cursor": "9999999999999999.0_z"})
    assert len(latest.json()["jobs"]) == 3
    assert_error(client.get("/jobs", params={"cursor": "not-a-cursor"}), 422, mentions="cursor")
