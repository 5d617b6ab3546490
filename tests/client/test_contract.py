"""The SDK's own types against the API's OpenAPI: what the client requires, the API sends.

The client keeps its own models (it imports nothing from the server); this test holds
them to the schema the service publishes, so that a change on either side that would
make the client refuse a valid response fails here.
"""

from __future__ import annotations

import typing
from typing import Any

import pytest
from pydantic import BaseModel

from nacs_client import types as client_types
from service.main import create_app
from service.settings import ApiSettings

# Each client model and the API schemas it reads: the client's JobError reads a job's error
# and the error of an error response.
PAIRS = {
    "Job": ["Job"],
    "JobPage": ["JobPage"],
    "JobResult": ["JobResult"],
    "JobError": ["JobError", "ErrorDetail"],
    "Progress": ["Progress"],
    "Manifest": ["Manifest"],
}


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    app = create_app(ApiSettings(_env_file=None, insecure_local=True))
    return dict(app.openapi()["components"]["schemas"])


def _resolve(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return schemas[ref.rsplit("/", 1)[-1]] if ref else schema


@pytest.mark.parametrize("name", PAIRS)
def test_client_fields_are_fields_the_api_sends(name: str, schemas: dict[str, Any]) -> None:
    model: type[BaseModel] = getattr(client_types, name)
    apis = [schemas[api] for api in PAIRS[name]]
    sent = set().union(*(api["properties"] for api in apis))
    for field_name, field in model.model_fields.items():
        wire_name = field.alias or field_name
        assert wire_name in sent, f"client {name}.{wire_name}: the API has no such field"
        for api in apis if field.is_required() else []:
            required = api.get("required", [])
            missing = f"client {name}.{wire_name} is required, the API may omit it"
            assert wire_name in required, missing


def test_the_statuses_are_the_apis(schemas: dict[str, Any]) -> None:
    status = _resolve(schemas["Job"]["properties"]["status"], schemas)
    assert set(status["enum"]) == set(typing.get_args(client_types.JobStatus))
    assert client_types.FINISHED_STATUSES < set(status["enum"])


def test_a_job_as_the_api_describes_it_reads_in_the_client(schemas: dict[str, Any]) -> None:
    """A minimal job per the API's schema (required fields only) validates in the client."""
    job = {
        "id": "0123",
        "status": "queued",
        "created_at": "2026-01-02T03:04:05.678Z",
        "progress": {"phase": "queued", "fraction": 0.0},
        "request": {"dataset_uri": "file:///d.parquet"},
    }
    assert set(job) == set(schemas["Job"]["required"])
    parsed = client_types.Job.model_validate(job)
    assert parsed.status == "queued" and not parsed.is_finished
