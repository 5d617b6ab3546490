"""Output folders are owned: a job writes only in a folder no other job claimed."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.service.conftest import assert_error
from worker.records import JobError, JobResult, JobStatus


def body(dataset: Path, **extra: object) -> dict:
    return {"dataset_uri": str(dataset), "ratio": 0.1, "method": "random"} | extra


def test_another_jobs_folder_is_refused(client: TestClient, dataset: Path) -> None:
    first = client.post("/jobs", json=body(dataset)).json()
    theirs = first["request"]["output_uri"]
    error = assert_error(
        client.post("/jobs", json=body(dataset, output_uri=theirs)), 409, "output_uri_claimed"
    )
    assert error["message"].startswith(f"output_uri: {theirs} is the output folder")
    for overlapping in (f"{theirs}/inside", theirs.rsplit("/", 1)[0] + "/../jobs/" + first["id"]):
        refused = client.post("/jobs", json=body(dataset, output_uri=overlapping))
        assert_error(refused, 409, "output_uri_claimed")


def test_folders_of_two_jobs_never_nest(client: TestClient, dataset: Path, settings) -> None:
    outer = f"{settings.storage_uri}/alpha/runs"
    inner = f"{outer}/one"
    assert client.post("/jobs", json=body(dataset, output_uri=inner)).status_code == 202
    holding = assert_error(client.post("/jobs", json=body(dataset, output_uri=outer)), 409)
    assert f"({inner})" in holding["message"]
    assert_error(client.post("/jobs", json=body(dataset, output_uri=f"{inner}/x")), 409)
    sibling = client.post("/jobs", json=body(dataset, output_uri=f"{outer}/one-more"))
    assert sibling.status_code == 202, "a name that merely starts like another folder is free"


def test_a_replayed_request_keeps_its_own_folder(
    client: TestClient, dataset: Path, settings
) -> None:
    wanted = {"output_uri": f"{settings.storage_uri}/alpha/runs/replayed"}
    headers = {"Idempotency-Key": "replay-1"}
    first = client.post("/jobs", json=body(dataset, **wanted), headers=headers)
    again = client.post("/jobs", json=body(dataset, **wanted), headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]


def test_a_failed_or_cancelled_job_gives_its_folder_back(
    client: TestClient, dataset: Path, settings
) -> None:
    store = client.app.state.jobs.store
    wanted = {"output_uri": f"{settings.storage_uri}/alpha/runs/retried"}
    failed = client.post("/jobs", json=body(dataset, **wanted)).json()
    assert_error(client.post("/jobs", json=body(dataset, **wanted)), 409)
    failure = JobError(code="labels_not_binary", message="label: 2 is not 0/1")
    store.transition(failed["id"], JobStatus.failed, error=failure)
    cancelled = client.post("/jobs", json=body(dataset, **wanted))
    assert cancelled.status_code == 202, cancelled.text
    assert client.post(f"/jobs/{cancelled.json()['id']}/cancel").json()["status"] == "cancelled"
    succeeded = client.post("/jobs", json=body(dataset, **wanted)).json()
    store.transition(succeeded["id"], JobStatus.running)
    result = JobResult(
        output_uri=wanted["output_uri"], coreset_uri="c", manifest_uri="m", size=20
    )
    store.transition(succeeded["id"], JobStatus.succeeded, result=result)
    assert_error(client.post("/jobs", json=body(dataset, **wanted)), 409, "output_uri_claimed")


def test_the_folder_of_default_folders_is_refused(
    client: TestClient, dataset: Path, settings
) -> None:
    jobs_folder = f"{settings.storage_uri}/alpha/jobs"
    error = assert_error(client.post("/jobs", json=body(dataset, output_uri=jobs_folder)), 422)
    assert error["message"].startswith("output_uri:")
    assert client.post("/jobs", json=body(dataset)).status_code == 202


def test_each_tenant_claims_in_its_own_prefix(
    client: TestClient, dataset: Path, beta_headers
) -> None:
    alphas = client.post("/jobs", json=body(dataset)).json()["request"]["output_uri"]
    refused = client.post("/jobs", json=body(dataset, output_uri=alphas), headers=beta_headers)
    assert_error(refused, 422, mentions="output prefix")
    same_name = alphas.replace("/alpha/", "/beta/")
    own = client.post("/jobs", json=body(dataset, output_uri=same_name), headers=beta_headers)
    assert own.status_code == 202, own.text
