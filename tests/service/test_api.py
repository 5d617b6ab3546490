"""The API through the real app and the real Redis (no worker: jobs stay queued)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import SettingsError
from tests.service.conftest import assert_error
from tests.stack import REPO, TENANT_KEYS, free_port, wait_until
from worker.records import JobError, JobResult, JobStatus


def body(dataset: Path, **extra: object) -> dict:
    return {"dataset_uri": str(dataset), "ratio": 0.1, "method": "random"} | extra


def test_submit_returns_202_location_and_defaults(
    client: TestClient, dataset: Path, settings
) -> None:
    response = client.post("/jobs", json=body(dataset))
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["result"] is None and job["error"] is None
    assert job["request"]["dataset_uri"] == f"file://{dataset}"
    assert job["request"]["options"]["mc_passes"] == 10
    assert job["request"]["output_uri"] == f"{settings.storage_uri}/alpha/jobs/{job['id']}"
    assert job["progress"] == {
        "phase": "queued",
        "fraction": 0.0,
        "message": "waiting for a worker",
    }
    assert client.get(f"/jobs/{job['id']}").json() == job
    assert "rq_job_id" not in job and "tenant" not in job


def test_job_payload_crosses_redis_as_json(client: TestClient, dataset: Path, settings) -> None:
    import redis
    from rq import Queue
    from rq.job import Job
    from rq.serializers import JSONSerializer

    job = client.post("/jobs", json=body(dataset)).json()
    connection = redis.Redis.from_url(settings.redis_url)
    record = connection.get(f"{settings.redis_prefix}job:{job['id']}")
    assert record.startswith(b"{")
    queue = Queue(settings.queue, connection=connection, serializer=JSONSerializer)
    wait_until(lambda: queue.job_ids == [f"{job['id']}-1"], 5, what="the job on the queue")
    # RQ reads the job back with the JSON serializer: the payload is JSON, not a pickle.
    rq_job = Job.fetch(f"{job['id']}-1", connection=connection, serializer=JSONSerializer)
    assert rq_job.func_name == "worker.tasks.run_job"
    assert list(rq_job.args) == [job["id"], settings.redis_prefix]
    assert rq_job.timeout == settings.job_timeout_s and rq_job.ttl == settings.job_ttl_s
    assert int(connection.ttl(f"{settings.redis_prefix}job:{job['id']}")) > 24 * 3600


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({}, 422, "dataset_uri"),
        ({"ratio": 0.1}, 422, "dataset_uri"),
        ({"dataset_uri": "DATA"}, 422, "ratio, size"),
        ({"dataset_uri": "DATA", "ratio": 0}, 422, "ratio"),
        ({"dataset_uri": "DATA", "ratio": 1}, 422, "ratio"),
        ({"dataset_uri": "DATA", "ratio": -0.5}, 422, "ratio"),
        ({"dataset_uri": "DATA", "ratio": 0.1, "size": 10}, 422, "ratio, size"),
        ({"dataset_uri": "DATA", "size": 0}, 422, "size"),
        ({"dataset_uri": "DATA", "size": "many"}, 422, "size"),
        ({"dataset_uri": "DATA", "size": True}, 422, "size"),
        ({"dataset_uri": "DATA", "size": 2.5}, 422, "size"),
        ({"dataset_uri": "DATA", "ratio": "0.5"}, 422, "ratio"),
        ({"dataset_uri": None, "ratio": 0.1}, 422, "dataset_uri"),
        ({"dataset_uri": "DATA", "ratio": 0.1, "options": {"rounds": 2.5}}, 422, "options.rounds"),
        ({"dataset_uri": "file://evil.example.com/etc/passwd", "ratio": 0.1}, 422, "dataset_uri"),
        ({"dataset_uri": "https://[::1]/x.parquet", "ratio": 0.1}, 422, "dataset_uri"),
        ({"dataset_uri": "DATA", "ratio": 0.1, "method": "magic"}, 422, "method"),
        ({"dataset_uri": "DATA", "ratio": 0.1, "colour": "red"}, 422, "colour"),
        ({"dataset_uri": "DATA", "ratio": 0.1, "options": {"turbo": True}}, 422, "options.turbo"),
        ({"dataset_uri": "DATA", "ratio": 0.1, "options": {"rounds": 0}}, 422, "options.rounds"),
        ({"dataset_uri": "DATA", "ratio": 0.1, "options": {"rounds": 21}}, 422, "options.rounds"),
        (
            {"dataset_uri": "DATA", "ratio": 0.1, "options": {"remove_rate": 0.9}},
            422,
            "options.remove_rate",
        ),
        (
            {"dataset_uri": "DATA", "ratio": 0.1, "options": {"backbone": "bert"}},
            422,
            "options.backbone",
        ),
        (
            {"dataset_uri": "DATA", "ratio": 0.1, "options": {"device": "tpu"}},
            422,
            "options.device",
        ),
        ({"dataset_uri": "DATA", "ratio": 0.1, "options": "fast"}, 422, "options"),
        ({"dataset_uri": "DATA", "ratio": 0.1, "format": "xlsx"}, 422, "format"),
        (
            {"dataset_uri": "DATA", "ratio": 0.1, "feature_columns": ["label"]},
            422,
            "feature_columns",
        ),
        ({"dataset_uri": "ftp://example.com/x.parquet", "ratio": 0.1}, 422, "dataset_uri"),
        ({"dataset_uri": "gopher://example.com/x", "ratio": 0.1}, 422, "dataset_uri"),
        ({"dataset_uri": "data:text/csv,label%0A1", "ratio": 0.1}, 422, "dataset_uri"),
        ({"dataset_uri": "relative/path.parquet", "ratio": 0.1}, 422, "dataset_uri"),
        ({"dataset_uri": "/etc/passwd", "ratio": 0.1}, 422, "dataset_uri"),
        ({"dataset_uri": "s3://other-bucket/data/x.parquet", "ratio": 0.1}, 422, "dataset_uri"),
        (
            {"dataset_uri": "s3://allowed-bucket/data/../secret/x.parquet", "ratio": 0.1},
            422,
            "dataset_uri",
        ),
        ({"dataset_uri": "https://127.0.0.1/x.parquet", "ratio": 0.1}, 422, "dataset_uri"),
        ({"dataset_uri": "https://localhost/x.parquet", "ratio": 0.1}, 422, "dataset_uri"),
        (
            {"dataset_uri": "https://169.254.169.254/latest/meta-data", "ratio": 0.1},
            422,
            "dataset_uri",
        ),
        ({"dataset_uri": "https://10.0.0.8/x.parquet", "ratio": 0.1}, 422, "dataset_uri"),
        ({"dataset_uri": "http://example.com/x.parquet", "ratio": 0.1}, 422, "dataset_uri"),
        ({"dataset_uri": "s3://beta-only/data/x.parquet", "ratio": 0.1}, 422, "dataset_uri"),
        ({"dataset_uri": "DATA", "ratio": 0.1, "output_uri": "/tmp/elsewhere"}, 422, "output_uri"),
        (
            {"dataset_uri": "DATA", "ratio": 0.1, "output_uri": "s3://allowed-bucket/x"},
            422,
            "output_uri",
        ),
        (
            {"dataset_uri": "DATA", "ratio": 0.1, "output_uri": "STORAGE/beta/jobs/mine"},
            422,
            "output_uri",
        ),
        (
            {"dataset_uri": "DATA", "ratio": 0.1, "output_uri": "STORAGE/alpha/../beta/x"},
            422,
            "output_uri",
        ),
        ([1, 2, 3], 422, "request body"),
        ("just a string", 422, "request body"),
        (None, 422, "request body"),
    ],
)
def test_bad_requests_name_the_field(
    client: TestClient, dataset: Path, settings, payload, status, field
) -> None:
    def fill(value):
        if isinstance(value, str):
            return value.replace("DATA", str(dataset)).replace("STORAGE", settings.storage_uri)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    error = assert_error(client.post("/jobs", json=fill(payload)), status)
    if field is not None:
        assert field in error["message"], error
    assert client.get("/jobs").json()["jobs"] == [], "no job was created"


def test_ratio_nan_and_infinity_are_refused(client: TestClient, dataset: Path) -> None:
    for literal in ("NaN", "Infinity", "-Infinity"):
        raw = f'{{"dataset_uri": "{dataset}", "ratio": {literal}}}'
        error = assert_error(
            client.post("/jobs", content=raw, headers={"Content-Type": "application/json"}), 422
        )
        assert "ratio" in error["message"]


@pytest.mark.parametrize(
    "raw",
    [b'{"dataset_uri": ', b"\xff\xfe\x00", b"[" * 5000 + b"]" * 5000, b"{'single': 'quotes'}"],
)
def test_malformed_json_is_a_clear_400(client: TestClient, raw: bytes) -> None:
    response = client.post("/jobs", content=raw, headers={"Content-Type": "application/json"})
    error = assert_error(response, 400, "malformed_json")
    assert "JSON" in error["message"]
    assert all(detail["field"] is None for detail in error["details"] or []), error["details"]


def test_empty_body_names_the_body(client: TestClient) -> None:
    for content_type in ("application/json", "text/plain"):
        response = client.post("/jobs", content=b"", headers={"Content-Type": content_type})
        assert_error(response, 422, "invalid_request", mentions="request body")


def test_body_is_read_as_json_by_its_content_type(client: TestClient, dataset: Path) -> None:
    raw = json.dumps(body(dataset)).encode()
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ):
        response = client.post("/jobs", content=raw, headers={"Content-Type": content_type})
        error = assert_error(response, 422, "invalid_request", mentions="request body")
        assert error["details"][0]["field"] is None
    for content_type in (
        None,
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.nacs+json",
    ):
        headers = {} if content_type is None else {"Content-Type": content_type}
        response = client.post("/jobs", content=raw, headers=headers)
        assert response.status_code == 202, (content_type, response.text)


def test_field_errors_name_each_field_in_the_details(client: TestClient, dataset: Path) -> None:
    response = client.post(
        "/jobs", json=body(dataset, size="many", options={"rounds": 0, "turbo": True}, colour="red")
    )
    error = assert_error(response, 422, "invalid_request")
    fields = {detail["field"]: detail["type"] for detail in error["details"]}
    assert fields == {
        "size": "int_type",
        "options.rounds": "greater_than_equal",
        "options.turbo": "extra_forbidden",
        "colour": "extra_forbidden",
    }
    for field in fields:
        assert field in error["message"]
    malformed = assert_error(
        client.post(
            "/jobs", content=b'{"ratio": 0.1,', headers={"Content-Type": "application/json"}
        ),
        400,
    )
    assert malformed["code"] == "malformed_json" and malformed["message"].startswith(
        "the request body is not valid JSON ("
    )
    # The key is checked before the body is read.
    assert_error(
        client.post("/jobs", content=b"{", headers={"Authorization": "Bearer wrong-key-123456"}),
        401,
    )


def test_openapi_documents_the_submission(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    submit = schema["paths"]["/jobs"]["post"]
    assert submit["requestBody"] == {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}},
        "required": True,
    }
    assert [(p["in"], p["name"], p["required"]) for p in submit["parameters"]] == [
        ("header", "Idempotency-Key", False)
    ]
    assert schema["components"]["schemas"]["JobRequest"]["required"] == ["dataset_uri"]


def test_path_escapes_are_refused(client: TestClient, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (tmp_path / "secret.parquet").write_bytes(b"PAR1")
    (data / "link.parquet").symlink_to(tmp_path / "secret.parquet")
    (data / "linkdir").symlink_to(tmp_path)
    for uri in (
        f"{data}/../secret.parquet",
        f"file://{data}/../secret.parquet",
        f"{data}/link.parquet",
        f"{data}/linkdir/secret.parquet",
        f"file://{data}/%2e%2e/secret.parquet",
    ):
        error = assert_error(client.post("/jobs", json={"dataset_uri": uri, "ratio": 0.1}), 422)
        assert "dataset_uri" in error["message"], uri


def test_uris_the_parsers_or_the_filesystem_refuse_are_a_422_and_nothing_is_stored(
    client: TestClient, dataset: Path, settings, tmp_path: Path
) -> None:
    data, storage = dataset.parent, f"{settings.storage_uri}/alpha"
    refused = [
        ("dataset_uri", {"dataset_uri": "https://[::1/x.parquet"}),
        ("dataset_uri", {"dataset_uri": "s3://[bucket/x.parquet"}),
        ("dataset_uri", {"dataset_uri": f"file://{data}/%00x.parquet"}),
        ("dataset_uri", {"dataset_uri": f"file://{data}/a%0Ab.parquet"}),
        # the path is under 4096 characters as sent, over it once "file://" is added
        ("dataset_uri", {"dataset_uri": f"{data}/" + "d/" * ((4094 - len(str(data))) // 2)}),
        ("output_uri", {"output_uri": f"{storage}/%00x"}),
        ("output_uri", {"output_uri": f"{storage}/a%0Ab"}),
        ("output_uri", {"output_uri": "s3://[bucket/alpha/x"}),
        ("output_uri", {"output_uri": f"{storage}/{'n' * 256}"}),
    ]
    for field, fields in refused:
        response = client.post("/jobs", json=body(dataset) | fields)
        assert_error(response, 422, "invalid_request", mentions=field)
    listed = client.get("/jobs")
    assert listed.status_code == 200 and listed.json()["jobs"] == []
    longest = body(dataset, output_uri=f"{storage}/{'n' * 255}")
    assert client.post("/jobs", json=longest).status_code == 202
    assert client.get("/jobs").status_code == 200


def test_a_storage_folder_behind_a_link_gives_resolved_output_folders(
    make_settings, dataset: Path, tmp_path: Path
) -> None:
    (tmp_path / "real-storage").mkdir()
    (tmp_path / "storage-link").symlink_to(tmp_path / "real-storage")
    settings = make_settings(storage_uri=str(tmp_path / "storage-link"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {TENANT_KEYS['alpha']}"
        job = client.post("/jobs", json=body(dataset)).json()
        # the worker writes only below the resolved folder (worker.storage.open_output)
        real = f"file://{tmp_path}/real-storage/alpha"
        assert job["request"]["output_uri"] == f"{real}/jobs/{job['id']}"
        linked = f"file://{tmp_path}/storage-link/alpha/mine"
        named = client.post("/jobs", json=body(dataset, output_uri=linked)).json()
        assert named["request"]["output_uri"] == f"{real}/mine"


def test_allowed_prefixes_can_be_per_tenant(client: TestClient, beta_headers) -> None:
    uri = {"dataset_uri": "s3://beta-only/data/x.parquet", "ratio": 0.1}
    assert client.post("/jobs", json=uri, headers=beta_headers).status_code == 202
    assert_error(client.post("/jobs", json=uri), 422, mentions="dataset_uri")


def test_output_uri_inside_own_prefix_is_accepted(
    client: TestClient, dataset: Path, settings
) -> None:
    wanted = f"{settings.storage_uri}/alpha/experiments/run-1"
    job = client.post("/jobs", json=body(dataset, output_uri=wanted))
    assert job.status_code == 202, job.text
    assert job.json()["request"]["output_uri"] == wanted


def test_output_uri_in_the_datasets_folder_is_refused(make_settings, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    (storage / "alpha" / "clicks").mkdir(parents=True)
    settings = make_settings(allowed_uris=f"file://{storage}/")
    folder = f"file://{storage}/alpha/clicks"
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {TENANT_KEYS['alpha']}"
        for output in (folder, f"{folder}/coreset"):
            refused = client.post(
                "/jobs", json={"dataset_uri": folder, "ratio": 0.1, "output_uri": output}
            )
            error = assert_error(refused, 422, mentions="output_uri")
            assert "lies in the dataset's folder" in error["message"]
        beside = {"dataset_uri": folder, "ratio": 0.1, "output_uri": f"{folder}-coreset"}
        assert client.post("/jobs", json=beside).status_code == 202


def test_bodies_are_bounded(make_settings, dataset: Path) -> None:
    settings = make_settings(max_body_bytes=4096)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {TENANT_KEYS['alpha']}"
        huge = body(dataset, feature_columns=[f"c{i}" for i in range(2000)])
        assert_error(client.post("/jobs", json=huge), 413, "payload_too_large")

        def chunks():
            yield b'{"dataset_uri": "'
            for _ in range(100):
                yield b"x" * 100
            yield b'"}'

        streamed = client.post(
            "/jobs", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert_error(streamed, 413, "payload_too_large")


def test_auth(client: TestClient, dataset: Path) -> None:
    job = client.post("/jobs", json=body(dataset)).json()
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer wrong-key-123456"},
        {"Authorization": "Basic abc"},
    ):
        assert_error(client.get("/jobs", headers=headers), 401, "unauthorized")
        assert_error(client.get(f"/jobs/{job['id']}", headers=headers), 401)
        assert_error(client.post("/jobs", json=body(dataset), headers=headers), 401)
    no_header = TestClient(client.app, raise_server_exceptions=False)
    response = no_header.get("/jobs")
    assert_error(response, 401, mentions="Authorization")
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_a_stored_request_this_version_would_refuse_still_reads(
    client: TestClient, dataset: Path, settings
) -> None:
    import redis

    made = client.post("/jobs", json=body(dataset)).json()
    old = client.post("/jobs", json=body(dataset)).json()
    connection = redis.Redis.from_url(settings.redis_url)
    key = f"{settings.redis_prefix}job:{old['id']}"
    stored = json.loads(connection.get(key))
    # as an earlier version accepted it: a control character, options out of today's range
    stored["request"]["dataset_uri"] = "file:///data/a\nb.parquet"
    stored["request"]["options"]["partition_size"] = 1
    connection.set(key, json.dumps(stored), keepttl=True)
    listed = client.get("/jobs")
    assert listed.status_code == 200, listed.text
    assert [job["id"] for job in listed.json()["jobs"]] == [old["id"], made["id"]]
    shown = client.get(f"/jobs/{old['id']}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["request"]["dataset_uri"] == "file:///data/a\nb.parquet"
    assert shown.json()["request"]["options"]["partition_size"] == 1
    assert client.post(f"/jobs/{old['id']}/cancel").status_code == 200


def test_tenants_see_only_their_own_jobs(client: TestClient, dataset: Path, beta_headers) -> None:
    job = client.post("/jobs", json=body(dataset)).json()
    for method, path in (("GET", ""), ("POST", "/cancel"), ("GET", "/result")):
        error = assert_error(
            client.request(method, f"/jobs/{job['id']}{path}", headers=beta_headers),
            404,
            "job_not_found",
        )
        assert job["id"] in error["message"]
    assert client.get("/jobs", headers=beta_headers).json() == {"jobs": [], "next_cursor": None}
    assert_error(client.get("/jobs/does-not-exist"), 404, "job_not_found")
    assert_error(client.get("/jobs/../../etc"), 404)
    assert client.get(f"/jobs/{job['id']}").status_code == 200


def test_idempotency(client: TestClient, dataset: Path, beta_headers) -> None:
    key = {"Idempotency-Key": "abc-123"}
    first = client.post("/jobs", json=body(dataset), headers=key)
    assert first.status_code == 202
    again = client.post("/jobs", json=body(dataset), headers=key)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == f"/jobs/{first.json()['id']}"
    assert_error(
        client.post("/jobs", json=body(dataset, ratio=0.2), headers=key),
        409,
        "idempotency_conflict",
    )
    other_tenant = client.post("/jobs", json=body(dataset), headers=key | beta_headers)
    assert other_tenant.status_code == 202 and other_tenant.json()["id"] != first.json()["id"]
    assert len(client.get("/jobs").json()["jobs"]) == 1
    assert_error(
        client.post("/jobs", json=body(dataset), headers={"Idempotency-Key": "k" * 300}), 422
    )


def test_body_hash_is_kept_only_with_an_idempotency_key(
    client: TestClient, dataset: Path, settings
) -> None:
    import redis

    connection = redis.Redis.from_url(settings.redis_url)

    def stored(job: dict) -> dict:
        return json.loads(connection.get(f"{settings.redis_prefix}job:{job['id']}"))

    keyless = stored(client.post("/jobs", json=body(dataset)).json())
    keyed = stored(
        client.post("/jobs", json=body(dataset), headers={"Idempotency-Key": "abc"}).json()
    )
    assert keyless["body_hash"] is None and keyless["idempotency_key"] is None
    assert len(keyed["body_hash"]) == 64 and len(keyed["idempotency_key"]) == 64


def test_list_pages_newest_first_with_status_filter(client: TestClient, dataset: Path) -> None:
    ids = [
        client.post("/jobs", json=body(dataset, size=i + 1, ratio=None)).json()["id"]
        for i in range(7)
    ]
    client.post(f"/jobs/{ids[2]}/cancel")
    client.post(f"/jobs/{ids[5]}/cancel")
    seen, cursor = [], None
    while True:
        page = client.get(
            "/jobs", params={"limit": 3} | ({"cursor": cursor} if cursor else {})
        ).json()
        assert len(page["jobs"]) <= 3
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    cancelled = client.get("/jobs", params={"status": "cancelled"}).json()
    assert [job["id"] for job in cancelled["jobs"]] == [ids[5], ids[2]]
    first = client.get("/jobs", params={"status": "queued", "limit": 1}).json()
    assert [job["id"] for job in first["jobs"]] == [ids[6]] and first["next_cursor"]
    for params, field in (
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"status": "started"}, "status"),
        ({"cursor": "garbage"}, "cursor"),
    ):
        assert_error(client.get("/jobs", params=params), 422, mentions=field)


def test_cancel_queued_and_finished(client: TestClient, dataset: Path, settings) -> None:
    job = client.post("/jobs", json=body(dataset)).json()
    queue = client.app.state.jobs.queue
    wait_until(lambda: queue.count == 1, 5, what="the job on the queue")
    cancelled = client.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"]
    assert client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled", (
        "cancel is idempotent"
    )
    assert queue.count == 0
    assert_error(client.get(f"/jobs/{job['id']}/result"), 409, "job_not_succeeded")
    store = client.app.state.jobs.store
    done = client.post("/jobs", json=body(dataset)).json()
    failure = JobError(code="labels_not_binary", message="label: 2 is not 0/1")
    store.transition(done["id"], JobStatus.failed, error=failure)
    error = assert_error(client.post(f"/jobs/{done['id']}/cancel"), 409, "job_finished")
    assert "failed" in error["message"]


def test_running_cancel_sets_the_flag(client: TestClient, dataset: Path) -> None:
    job = client.post("/jobs", json=body(dataset)).json()
    store = client.app.state.jobs.store
    store.transition(job["id"], JobStatus.running, attempts=1)
    response = client.post(f"/jobs/{job['id']}/cancel").json()
    assert response["status"] == "running" and response["cancel_requested"] is True


def test_too_many_active_jobs_is_429(make_settings, dataset: Path) -> None:
    settings = make_settings(max_active_jobs_per_tenant=2)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {TENANT_KEYS['alpha']}"
        first = client.post("/jobs", json=body(dataset), headers={"Idempotency-Key": "one"}).json()
        client.post("/jobs", json=body(dataset))
        response = client.post("/jobs", json=body(dataset))
        assert_error(response, 429, "too_many_active_jobs")
        assert int(response.headers["Retry-After"]) > 0
        replay = client.post("/jobs", json=body(dataset), headers={"Idempotency-Key": "one"})
        assert replay.status_code == 200 and replay.json()["id"] == first["id"], (
            "a replay is not a new job"
        )
        client.post(f"/jobs/{first['id']}/cancel")
        assert client.post("/jobs", json=body(dataset)).status_code == 202


def test_unknown_routes_and_methods_are_json(client: TestClient) -> None:
    assert_error(client.get("/nothing-here"), 404, "not_found")
    assert_error(client.delete("/jobs"), 405, "method_not_allowed")
    assert_error(client.put("/jobs/abc/cancel"), 405)


def test_health_ready_metrics_openapi(client: TestClient, dataset: Path) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "storage": "ok"}
    job = client.post("/jobs", json=body(dataset)).json()
    client.get(f"/jobs/{job['id']}")
    text = client.get("/metrics").text
    assert 'nacs_http_requests_total{method="GET",route="/jobs/{job_id}",status="200"} 1.0' in text
    assert "nacs_http_request_duration_seconds_bucket" in text
    assert "nacs_queue_depth 1.0" in text
    assert 'nacs_jobs{status="queued"} 1.0' in text
    schema = client.get("/openapi.json").json()
    request_schema = schema["components"]["schemas"]["JobRequest"]
    assert request_schema["additionalProperties"] is False
    options = schema["components"]["schemas"]["JobOptions"]["properties"]
    assert options["rounds"]["minimum"] == 1 and options["rounds"]["maximum"] == 20
    assert options["mc_passes"]["description"]
    assert "/jobs/{job_id}/result" in schema["paths"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/jobs"]["post"]["security"] == [{"HTTPBearer": []}]


def test_redis_unreachable_is_503(make_settings, dataset: Path) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {TENANT_KEYS['alpha']}"
        ready = client.get("/readyz")
        error = assert_error(ready, 503, "not_ready", mentions="redis")
        assert error["details"]["storage"] == "ok"
        assert ready.headers["Retry-After"]
        for response in (
            client.post("/jobs", json=body(dataset)),
            client.get("/jobs"),
            client.get("/jobs/abc"),
        ):
            assert_error(response, 503, "redis_unavailable")
            assert response.headers["Retry-After"]
        assert "nacs_redis_up 0.0" in client.get("/metrics").text


def test_service_refuses_to_start_without_keys(make_settings) -> None:
    with pytest.raises(SettingsError, match="NACS_INSECURE_LOCAL"):
        create_app(make_settings(api_keys=None))
    with pytest.raises(SettingsError, match="entry 1"):
        create_app(make_settings(api_keys="no-colon-here"))


def test_insecure_local_mode_serves_one_tenant(make_settings, dataset: Path) -> None:
    settings = make_settings(api_keys=None, insecure_local=True)
    with TestClient(create_app(settings)) as client:
        job = client.post("/jobs", json=body(dataset))
        assert job.status_code == 202
        assert "/local/jobs/" in job.json()["request"]["output_uri"]


def test_keys_file(make_settings, tmp_path: Path, dataset: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# tenants\ngamma:gamma-key-987654321\n")
    settings = make_settings(api_keys=None, api_keys_file=str(keys))
    with TestClient(create_app(settings)) as client:
        assert (
            client.get("/jobs", headers={"Authorization": "Bearer gamma-key-987654321"}).status_code
            == 200
        )
        assert (
            client.get(
                "/jobs", headers={"Authorization": f"Bearer {TENANT_KEYS['alpha']}"}
            ).status_code
            == 401
        )


def test_api_process_never_imports_torch() -> None:
    code = (
        "import os, sys; os.environ['NACS_INSECURE_LOCAL'] = '1'\n"
        "import service.main, service.cli, worker.enqueue, worker.reaper, worker.pagination\n"
        "import worker.records, worker.spec, worker.storage, worker.runner\n"
        "service.main.create_app()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=REPO, env=os.environ.copy(), timeout=120
    )


def test_keys_are_never_logged(client: TestClient, dataset: Path, caplog) -> None:
    caplog.set_level("DEBUG")
    client.post("/jobs", json=body(dataset))
    client.get("/jobs", headers={"Authorization": "Bearer wrong-key-123456"})
    for key in (*TENANT_KEYS.values(), "wrong-key-123456"):
        assert key not in caplog.text


def test_schemes_without_their_filesystem_are_refused_clearly(
    client: TestClient, monkeypatch
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gcsfs" else real_find_spec(name, *a),
    )
    error = assert_error(
        client.post("/jobs", json={"dataset_uri": "gs://bucket/x.parquet", "ratio": 0.1}), 422
    )
    assert "dataset_uri" in error["message"] and "gcsfs" in error["message"]


def test_result_of_a_succeeded_job(
    client: TestClient, dataset: Path, settings, tmp_path: Path
) -> None:
    store = client.app.state.jobs.store
    job = client.post("/jobs", json=body(dataset)).json()
    output = tmp_path / "storage" / "alpha" / "jobs" / job["id"]
    manifest_path = output / "manifest.json"
    uri = f"file://{manifest_path}"
    result = JobResult(output_uri="x", coreset_uri="x", manifest_uri=uri, size=20)
    store.transition(job["id"], JobStatus.running, attempts=1)
    store.transition(job["id"], JobStatus.succeeded, result=result)
    assert_error(client.get(f"/jobs/{job['id']}/result"), 404, "result_missing")
    manifest_path.parent.mkdir(parents=True)
    manifest = {
        "manifest_version": 1,
        "job_id": job["id"],
        "request": job["request"],
        "engine_version": "0",
        "method": "random",
        "seed": 0,
        "device": "cpu",
        "created_at": job["created_at"],
        "dataset": {"uri": "file:///d", "fingerprint": "f", "rows": 200, "clicks": 40},
        "coreset": {"uri": f"file://{output}/coreset.parquet", "rows": 20, "clicks": 4},
        "output_uri": f"file://{output}",
        "manifest_uri": uri,
        "files": {"coreset": "coreset.parquet", "manifest": "manifest.json"},
        "phase_seconds": {"loading": 0.1},
        "noise": {"estimated_flip_rate": 0.1, "rows_set_aside": 2},
        "audit": {"verdict": "better", "difference": 0.01},
        "diagnostics": {"rounds": 3},
        "a_field_of_a_newer_engine": [1, 2],
    }
    manifest_path.write_text(json.dumps(manifest))
    assert client.get(f"/jobs/{job['id']}/result").json() == manifest
    manifest_path.write_text(json.dumps({"job_id": job["id"]}))
    assert_error(client.get(f"/jobs/{job['id']}/result"), 500, "result_unreadable")


def test_every_route_goes_through_the_apps_middlewares_and_dependencies(
    settings, dataset: Path
) -> None:
    """POST /jobs and GET /jobs/{id} are ordinary routes: a middleware added to the app sees
    them, and dependency_overrides replace their dependencies."""
    from service.deps import current_tenant

    app = create_app(settings)
    seen: list[str] = []

    @app.middleware("http")
    async def note(request, call_next):  # type: ignore[no-untyped-def]
        seen.append(f"{request.method} {request.url.path}")
        return await call_next(request)

    app.dependency_overrides[current_tenant] = lambda: "beta"
    with TestClient(app) as client:
        created = client.post("/jobs", json=body(dataset))
        assert created.status_code == 202, created.text
        job = created.json()
        assert "/beta/jobs/" in job["request"]["output_uri"], "the overridden tenant made it"
        assert client.get(f"/jobs/{job['id']}").json()["id"] == job["id"]
    assert seen == ["POST /jobs", f"GET /jobs/{job['id']}"]


def test_a_body_hashes_as_before_the_later_fields_existed() -> None:
    from service.jobs import body_hash
    from worker.spec import JobRequest

    request = JobRequest.model_validate({"dataset_uri": "s3://b/k.parquet", "ratio": 0.1})
    dumped = request.model_dump(mode="json")
    later = ("numeric_detection", "column_names")
    before = {key: value for key, value in dumped.items() if key not in later}
    assert body_hash(dumped) == body_hash(before)
    assert body_hash(dumped | {"numeric_detection": False}) != body_hash(before)
    assert body_hash(dumped | {"column_names": ["a", "label"]}) != body_hash(before)
