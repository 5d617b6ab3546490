"""client.jobs against a scripted service: requests sent, responses parsed, wait and result."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nacs_client import (
    AsyncClient,
    Client,
    ConflictError,
    Coreset,
    Job,
    JobCancelledError,
    JobFailedError,
    NacsError,
    NotFoundError,
    WaitTimeoutError,
)
from tests.client.fakes import (
    BASE_URL,
    FakeClock,
    Recorder,
    ScriptedService,
    error_response,
    job_json,
)


def ok(body, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body)


def client_for(service: ScriptedService, clock: FakeClock | None = None) -> Client:
    clock = clock or FakeClock()
    return Client(BASE_URL, "key", transport=service.transport, sleep=clock.sleep, clock=clock)


# --- create -------------------------------------------------------------------------------


def test_create_posts_the_documented_body():
    service = ScriptedService(ok(job_json(), 202))
    with client_for(service) as client:
        job = client.jobs.create(
            "s3://bucket/train.parquet",
            ratio=0.05,
            method="nacs",
            options={"backbone": "dcnv2", "rounds": 2},
            label_column="click",
            feature_columns=["a", "b"],
            numeric_columns=("price",),
            numeric_detection=False,
            column_names=["click", "a", "b", "price"],
            format="csv",
            output_uri="s3://bucket/out/",
        )
    assert isinstance(job, Job)
    request = service.requests[0]
    assert (request.method, request.url.path) == ("POST", "/jobs")
    assert json.loads(request.content) == {
        "dataset_uri": "s3://bucket/train.parquet",
        "ratio": 0.05,
        "method": "nacs",
        "options": {"backbone": "dcnv2", "rounds": 2},
        "label_column": "click",
        "feature_columns": ["a", "b"],
        "numeric_columns": ["price"],
        "numeric_detection": False,
        "column_names": ["click", "a", "b", "price"],
        "format": "csv",
        "output_uri": "s3://bucket/out/",
    }


def test_create_leaves_defaults_to_the_service():
    service = ScriptedService(ok(job_json(), 202))
    with client_for(service) as client:
        client.jobs.create("file:///d.parquet", size=500)
    assert service.bodies() == [{"dataset_uri": "file:///d.parquet", "size": 500}]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "ratio, size"),
        ({"ratio": 0.1, "size": 10}, "ratio, size"),
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": float("nan")}, "ratio"),
        ({"ratio": True}, "ratio"),
        ({"size": 0}, "size"),
        ({"size": 2.5}, "size"),
        ({"size": 10, "feature_columns": "a"}, "feature_columns"),
        ({"size": 10, "idempotency_key": " "}, "idempotency_key"),
    ],
)
def test_create_checks_the_budget_before_sending(kwargs, field):
    service = ScriptedService(ok(job_json(), 202))
    with client_for(service) as client, pytest.raises(ValueError, match=f"^{field}:"):
        client.jobs.create("file:///d.parquet", **kwargs)
    assert service.requests == []


def test_create_rejects_an_empty_uri():
    with client_for(ScriptedService(ok(job_json()))) as client:
        with pytest.raises(ValueError, match="^dataset_uri:"):
            client.jobs.create("", ratio=0.1)


# --- get, list, cancel --------------------------------------------------------------------


def test_get_parses_every_field():
    body = job_json(
        "job-7",
        "succeeded",
        phase="writing",
        fraction=1.0,
        result={
            "output_uri": "file:///out/job-7/",
            "coreset_uri": "file:///out/job-7/coreset.parquet",
            "manifest_uri": "file:///out/job-7/manifest.json",
            "size": 42,
            "extra_figure": 0.5,
        },
    )
    body["future_field"] = "kept"
    with client_for(ScriptedService(ok(body))) as client:
        job = client.jobs.get("job-7")
    assert job.status == "succeeded" and job.is_finished
    assert job.result is not None and job.result.size == 42
    assert job.result.model_extra == {"extra_figure": 0.5}
    assert job.model_extra == {"future_field": "kept"}
    assert job.finished_at is not None and job.created_at.year == 2026


@pytest.mark.parametrize("job_id", ["", "a/b"])
def test_get_refuses_ids_that_are_not_ids(job_id):
    with (
        client_for(ScriptedService(ok(job_json()))) as client,
        pytest.raises(ValueError, match="job_id"),
    ):
        client.jobs.get(job_id)


def test_an_unexpected_answer_is_a_clear_error():
    with client_for(ScriptedService(ok({"unexpected": True}))) as client:
        with pytest.raises(NacsError, match="unexpected answer to GET"):
            client.jobs.get("job-1")


def pages_service() -> ScriptedService:
    def answer(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        pages = {
            None: ([job_json("j5"), job_json("j4")], "c1"),
            "c1": ([job_json("j3"), job_json("j2")], "c2"),
            "c2": ([job_json("j1")], None),
        }
        jobs, next_cursor = pages[cursor]
        return ok({"jobs": jobs, "next_cursor": next_cursor})

    return ScriptedService(answer)


def test_list_iterates_across_every_page():
    service = pages_service()
    with client_for(service) as client:
        jobs = client.jobs.list(status="queued", limit=2)
        assert service.requests == []  # pages are fetched as the iteration goes
        ids = [job.id for job in jobs]
    assert ids == ["j5", "j4", "j3", "j2", "j1"]
    params = [dict(request.url.params) for request in service.requests]
    assert params == [
        {"status": "queued", "limit": "2"},
        {"status": "queued", "limit": "2", "cursor": "c1"},
        {"status": "queued", "limit": "2", "cursor": "c2"},
    ]


def test_list_stops_on_a_repeated_cursor():
    service = ScriptedService(ok({"jobs": [job_json("j1")], "next_cursor": "same"}))
    with client_for(service) as client, pytest.raises(NacsError, match="same cursor"):
        list(client.jobs.list())


def test_list_checks_its_arguments_at_once():
    with client_for(ScriptedService(ok({"jobs": []}))) as client:
        with pytest.raises(ValueError, match="^limit:"):
            client.jobs.list(limit=0)


def test_cancel_posts_to_the_cancel_route():
    service = ScriptedService(ok(job_json("job-1", "cancelled")))
    with client_for(service) as client:
        job = client.jobs.cancel("job-1")
    assert job.status == "cancelled"
    assert (service.requests[0].method, service.requests[0].url.path) == (
        "POST",
        "/jobs/job-1/cancel",
    )


# --- wait ----------------------------------------------------------------------------------


def running(fraction: float, phase: str = "selecting") -> httpx.Response:
    return ok(job_json("job-1", "running", phase=phase, fraction=fraction))


def test_wait_polls_until_the_job_succeeds():
    service = ScriptedService(
        ok(job_json("job-1", "queued")),
        running(0.2, "loading"),
        running(0.6),
        ok(job_json("job-1", "succeeded", phase="writing", fraction=1.0)),
    )
    clock = FakeClock()
    seen: list[tuple[str, float]] = []
    with client_for(service, clock) as client:
        job = client.jobs.wait(
            "job-1",
            poll_interval=2.0,
            progress=lambda j: seen.append((j.status, j.progress.fraction if j.progress else 0.0)),
        )
    assert job.status == "succeeded"
    assert clock.waits == [2.0, 2.0, 2.0]
    assert seen == [("queued", 0.0), ("running", 0.2), ("running", 0.6), ("succeeded", 1.0)]


def test_wait_raises_job_failed_with_the_jobs_error():
    failed = job_json(
        "job-1", "failed", error={"code": "no_label_column", "message": "no column 'label'"}
    )
    service = ScriptedService(running(0.1), ok(failed))
    with client_for(service) as client, pytest.raises(JobFailedError) as raised:
        client.jobs.wait("job-1")
    assert raised.value.code == "no_label_column"
    assert raised.value.message == "no column 'label'"
    assert raised.value.job.status == "failed"
    assert "no_label_column" in str(raised.value)


def test_wait_raises_job_cancelled():
    service = ScriptedService(running(0.1), ok(job_json("job-1", "cancelled")))
    with client_for(service) as client, pytest.raises(JobCancelledError) as raised:
        client.jobs.wait("job-1")
    assert raised.value.job_id == "job-1"


def test_wait_times_out_on_the_injected_clock():
    service = ScriptedService(running(0.5))
    clock = FakeClock()
    with client_for(service, clock) as client, pytest.raises(WaitTimeoutError) as raised:
        client.jobs.wait("job-1", timeout=5.0, poll_interval=2.0)
    # Polls at t=0, 2, 4 and 5 (the last pause is cut to the deadline), then gives up.
    assert clock.waits == [2.0, 2.0, 1.0]
    assert len(service.requests) == 4
    assert raised.value.timeout == 5.0
    assert raised.value.job.progress.fraction == 0.5
    assert isinstance(raised.value, TimeoutError)


def test_wait_with_timeout_zero_polls_once():
    service = ScriptedService(running(0.5))
    with client_for(service) as client, pytest.raises(WaitTimeoutError):
        client.jobs.wait("job-1", timeout=0)
    assert len(service.requests) == 1


def test_wait_passes_http_errors_through():
    service = ScriptedService(error_response(404, "job_not_found", "no job job-1"))
    with client_for(service) as client, pytest.raises(NotFoundError):
        client.jobs.wait("job-1")


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"timeout": -1}, "timeout"), ({"poll_interval": 0}, "poll_interval")]
)
def test_wait_checks_its_arguments(kwargs, field):
    with (
        client_for(ScriptedService(running(0.1))) as client,
        pytest.raises(ValueError, match=field),
    ):
        client.jobs.wait("job-1", **kwargs)


def test_wait_draws_a_progress_bar_when_asked(capsys):
    service = ScriptedService(
        running(0.5), ok(job_json("job-1", "succeeded", phase="writing", fraction=1.0))
    )
    with client_for(service) as client:
        client.jobs.wait("job-1", progress=True)
    err = capsys.readouterr().err
    # Selecting is the second of five phases: half of it is 30% of the job.
    assert "selecting 50%" in err and " 30.0%" in err and "100.0%" in err
    assert "job-1 succeeded" in err and err.endswith("\n")


def test_wait_prints_plain_lines_when_asked(capsys):
    service = ScriptedService(
        running(0.1, phase="loading"), running(0.15, phase="loading"), running(0.5),
        ok(job_json("job-1", "succeeded", phase="writing", fraction=1.0)),
    )
    with client_for(service) as client:
        client.jobs.wait("job-1", progress="lines")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3, "a line per change of phase or tenth of a phase, no more"
    assert lines[0].split() == ["job-1", "running", "2.0%", "loading", "10%"]
    assert lines[1].split()[:4] == ["job-1", "running", "30.0%", "selecting"]
    assert lines[2].split() == ["job-1", "succeeded", "100.0%"]
    assert "\r" not in "".join(lines)


def test_progress_shows_the_message_whole_in_lines_and_cut_beside_the_bar(capsys):
    path = "file:///srv/data/storage/team/jobs/" + "0123456789abcdef" * 4 + " {x}"
    message = f"writing 1000 rows to {path}"

    def shown(progress: str) -> str:
        service = ScriptedService(
            ok(job_json("job-1", "running", phase="writing", fraction=0.2, message=message)),
            ok(job_json("job-1", "succeeded", phase="writing", fraction=1.0)),
        )
        with client_for(service) as client:
            client.jobs.wait("job-1", progress=progress)  # type: ignore[arg-type]
        return capsys.readouterr().err

    assert message in shown("lines")
    bar = shown("bar")
    assert "% writing 20%  writing 1000 rows to file:///srv/data/storage/t..." in bar
    assert ", writing" not in bar and path not in bar


def test_wait_is_quiet_off_a_terminal(capsys):
    service = ScriptedService(running(0.5), ok(job_json("job-1", "succeeded")))
    with client_for(service) as client:
        client.jobs.wait("job-1")  # progress=None and stderr is captured, not a terminal
    assert capsys.readouterr().err == ""


def test_create_and_wait():
    service = ScriptedService(
        ok(job_json("job-9"), 202), running(0.5), ok(job_json("job-9", "succeeded"))
    )
    with client_for(service) as client:
        job = client.jobs.create_and_wait("file:///d.parquet", ratio=0.1, progress=False)
    assert job.id == "job-9" and job.status == "succeeded"
    assert [r.url.path for r in service.requests] == ["/jobs", "/jobs/job-9", "/jobs/job-9"]


# --- report --------------------------------------------------------------------------------


def test_report_fetches_the_html_page():
    page = "<!DOCTYPE html><html><body><svg></svg></body></html>"
    service = ScriptedService(httpx.Response(200, text=page, headers={"content-type": "text/html"}))
    with client_for(service) as client:
        assert client.jobs.report_url("job-1") == f"{BASE_URL}/jobs/job-1/report"
        assert client.jobs.report("job-1") == page
    request = service.requests[0]
    assert request.url.path == "/jobs/job-1/report" and request.headers["accept"] == "text/html"
    assert request.headers["authorization"].startswith("Bearer ")


def test_the_report_of_a_job_that_has_not_succeeded_is_a_conflict():
    message = "job job-1 is failed (labels_not_binary: no); a report is written only when..."
    service = ScriptedService(error_response(409, "job_not_succeeded", message))
    with client_for(service) as client, pytest.raises(ConflictError, match="labels_not_binary"):
        client.jobs.report("job-1")


@pytest.mark.anyio
async def test_async_report():
    page = "<!DOCTYPE html><html></html>"
    service = ScriptedService(httpx.Response(200, text=page))
    async with AsyncClient(BASE_URL, transport=service.transport) as client:
        assert client.jobs.report_url("job-2") == f"{BASE_URL}/jobs/job-2/report"
        assert await client.jobs.report("job-2") == page


# --- result and download -------------------------------------------------------------------


@pytest.fixture
def result_files(tmp_path):
    folder = tmp_path / "out" / "job-1"
    folder.mkdir(parents=True)
    table = pa.table(
        {
            "row": pa.array([1, 4, 7], pa.int64()),
            "label": pa.array([1.0, 0.0, 1.0], pa.float32()),
            "soft_label": pa.array([0.9, 0.1, 0.7], pa.float32()),
            "weight": pa.array([1.0, 2.0, 1.0], pa.float32()),
            "uncertainty": pa.array([0.1, 0.2, 0.3], pa.float32()),
        }
    )
    pq.write_table(table, folder / "coreset.parquet")
    manifest = {"job_id": "job-1", "dataset": {"rows": 10, "clicks": 5}, "coreset": {"rows": 3}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    succeeded = job_json(
        "job-1",
        "succeeded",
        result={
            "output_uri": folder.as_uri() + "/",
            "coreset_uri": (folder / "coreset.parquet").as_uri(),
            "manifest_uri": (folder / "manifest.json").as_uri(),
            "size": 3,
        },
    )
    return succeeded, manifest


def test_result_reads_the_coreset_with_its_manifest(result_files):
    succeeded, manifest = result_files
    service = ScriptedService(ok(succeeded), ok(manifest))
    with client_for(service) as client:
        coreset = client.jobs.result("job-1")
    assert isinstance(coreset, Coreset)
    assert [r.url.path for r in service.requests] == ["/jobs/job-1", "/jobs/job-1/result"]
    np.testing.assert_array_equal(coreset.rows, [1, 4, 7])
    np.testing.assert_allclose(coreset.soft_labels, [0.9, 0.1, 0.7], rtol=1e-6)
    assert coreset.manifest is not None and coreset.manifest.data_rows == 10
    assert coreset.manifest.coreset_rows == 3


def test_result_of_a_failed_job_raises_its_error(result_files):
    failed = job_json(
        "job-1", "failed", error={"code": "labels_not_binary", "message": "labels 0/1"}
    )
    with (
        client_for(ScriptedService(ok(failed))) as client,
        pytest.raises(JobFailedError, match="labels_not_binary"),
    ):
        client.jobs.result("job-1")


def test_download_copies_both_files(result_files, tmp_path):
    succeeded, manifest = result_files
    service = ScriptedService(ok(succeeded), ok(manifest))
    with client_for(service) as client:
        files = client.jobs.download("job-1", tmp_path / "local")
    assert files.coreset_path == tmp_path / "local" / "coreset.parquet"
    assert pq.read_table(files.coreset_path).column("row").to_pylist() == [1, 4, 7]
    assert json.loads(files.manifest_path.read_text()) == manifest
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == [
        "coreset.parquet",
        "manifest.json",
    ]


# --- the async twin ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_surface_matches(result_files):
    succeeded, manifest = result_files
    clock = FakeClock()

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/jobs":
            return ok(job_json("job-1"), 202)
        if path == "/jobs":
            cursor = request.url.params.get("cursor")
            if cursor is None:
                return ok({"jobs": [job_json("job-2")], "next_cursor": "c1"})
            return ok({"jobs": [job_json("job-1")], "next_cursor": None})
        if path == "/jobs/job-1/result":
            return ok(manifest)
        if path == "/jobs/job-1/cancel":
            return ok(job_json("job-1", "cancelled"))
        # GET /jobs/job-1: running twice, then succeeded
        polls = sum(1 for r in service.requests if r.url.path == "/jobs/job-1")
        return ok(succeeded) if polls > 2 else running(0.3)

    service = ScriptedService(answer)
    recorder = Recorder()
    client = AsyncClient(BASE_URL, transport=service.transport, sleep=recorder.asleep, clock=clock)
    async with client:
        job = await client.jobs.create_and_wait("file:///d.parquet", ratio=0.5, poll_interval=3)
        assert job.status == "succeeded"
        assert recorder.waits == [3, 3]
        assert [j.id async for j in client.jobs.list(limit=1)] == ["job-2", "job-1"]
        coreset = await client.jobs.result("job-1")
        np.testing.assert_array_equal(coreset.rows, [1, 4, 7])
        assert (await client.jobs.cancel("job-1")).status == "cancelled"


@pytest.mark.anyio
async def test_async_wait_raises_the_same_errors():
    failed = job_json("job-1", "failed", error={"code": "too_few_rows", "message": "budget > rows"})
    service = ScriptedService(running(0.1), ok(failed))
    async with AsyncClient(
        BASE_URL, transport=service.transport, sleep=Recorder().asleep
    ) as client:
        with pytest.raises(JobFailedError, match="too_few_rows"):
            await client.jobs.wait("job-1")
    clock = FakeClock()
    service = ScriptedService(running(0.1))
    async with AsyncClient(
        BASE_URL, transport=service.transport, sleep=clock.sleep, clock=clock
    ) as client:
        with pytest.raises(WaitTimeoutError):
            await client.jobs.wait("job-1", timeout=3, poll_interval=1)
    assert clock.waits == [1, 1, 1]


def test_wait_draws_the_bar_by_default_on_a_terminal(monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    service = ScriptedService(running(0.25), ok(job_json("job-1", "succeeded")))
    with client_for(service) as client:
        client.jobs.wait("job-1")
    drawn = terminal.getvalue()
    assert "\r" in drawn, "the bar is redrawn in place"
    # A quarter of selecting, the second of five phases, is a quarter of the job.
    assert " 25.0%" in drawn and "selecting 25%" in drawn
    assert "100.0%" in drawn and drawn.endswith("\n")


def test_the_sync_and_async_surfaces_are_twins():
    import inspect

    from nacs_client.resources.jobs import AsyncJobs, Jobs

    def public(cls):
        return {name for name in vars(cls) if not name.startswith("_")}

    assert public(Jobs) == public(AsyncJobs)
    for name in public(Jobs):
        sync_signature = inspect.signature(getattr(Jobs, name))
        async_signature = inspect.signature(getattr(AsyncJobs, name))
        assert list(sync_signature.parameters) == list(async_signature.parameters), name
        for parameter in sync_signature.parameters:
            assert (
                sync_signature.parameters[parameter].default
                == async_signature.parameters[parameter].default
            ), (name, parameter)
        if name not in ("list", "report_url"):
            assert inspect.iscoroutinefunction(getattr(AsyncJobs, name)), name
    assert list(inspect.signature(Client).parameters) == list(
        inspect.signature(AsyncClient).parameters
    )
