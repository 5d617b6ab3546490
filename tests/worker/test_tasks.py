"""Running one job: execute() without Redis, run_job() against Redis, failures and retries."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nacs_engine.errors import DataError
from tests.stack import make_ctr_parquet
from tests.worker.conftest import Create
from worker import outputs, tasks
from worker.enqueue import cancel, queue_of
from worker.errors import JobFailed, is_transient
from worker.records import JobRecord, JobStatus, RecordStore
from worker.settings import SharedSettings
from worker.spec import JobRequest
from worker.storage import storage_options, write_bytes


def test_execute_writes_coreset_and_report_then_manifest(
    tmp_path: Path, settings: SharedSettings, monkeypatch
) -> None:
    data = make_ctr_parquet(tmp_path / "ctr.parquet", 1000, seed=4)
    written: list[str] = []
    for name in ("write_coreset", "report_json", "render_html", "write_manifest"):
        original = getattr(tasks, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            written.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(tasks, name, spy)
    phases: list[str] = []
    request = JobRequest(dataset_uri=str(data), size=100, method="balanced")
    manifest = tasks.execute(
        request,
        str(tmp_path / "out"),
        job_id="job-1",
        settings=settings,
        progress=lambda p, f, m: phases.append(p),
    )
    assert written == ["write_coreset", "report_json", "render_html", "write_manifest"], (
        "the manifest is written last"
    )
    assert phases[0] == "loading" and phases[-1] == "writing" and "selecting" in phases
    table = pq.read_table(tmp_path / "out" / "coreset.parquet")
    assert table.num_rows == 100
    assert table.schema.field("row").type == pa.int64()
    assert all(
        table.schema.field(c).type == pa.float32() for c in ("soft_label", "weight", "uncertainty")
    )
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["job_id"] == "job-1" and on_disk["coreset"]["rows"] == 100
    assert on_disk["dataset"]["rows"] == 1000 and on_disk["seed"] == 0
    assert on_disk["files"] == {
        "coreset": "coreset.parquet", "report_html": "report.html", "report_json": "report.json",
        "manifest": "manifest.json",
    }
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["job_id"] == "job-1" and report["method"] == "balanced"
    assert report["coreset"]["rows"] == 100 and report["coreset"]["clicks"] == 50
    assert report["weights"]["effective_sample_size"] <= 100
    assert "skipped" in report["audit"] and report["rounds"] == []
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<svg") >= 3 and "<script" not in page
    assert on_disk == json.loads(json.dumps(manifest.model_dump()))
    assert outputs.Manifest.model_validate(on_disk) == manifest
    labels = table.column("label").to_numpy()
    assert labels.sum() == 50, "balanced takes half clicks"


def test_a_job_that_fails_while_writing_leaves_no_report(
    tmp_path: Path, settings: SharedSettings, monkeypatch
) -> None:
    data = make_ctr_parquet(tmp_path / "ctr.parquet", 500, seed=4)

    def broken(*args, **kwargs):
        raise PermissionError("the store refused the manifest")

    monkeypatch.setattr(tasks, "write_manifest", broken)
    with pytest.raises(PermissionError):
        tasks.execute(
            JobRequest(dataset_uri=str(data), size=50, method="random"),
            str(tmp_path / "out"), job_id="job-1", settings=settings,
        )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [], "nothing is left"


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (None, "dataset_not_found"),
        (b"this is not parquet", "unreadable_data"),
        ({"label": [0, 2, 1, 0], "f0": [1, 2, 3, 4]}, "labels_not_binary"),
        ({"clicked": [0, 1, 1, 0], "f0": [1, 2, 3, 4]}, "label_column_missing"),
        ({"label": pa.array([], pa.int64()), "f0": pa.array([], pa.int64())}, "empty_dataset"),
    ],
)
def test_bad_data_is_a_data_error_and_never_retried(
    tmp_path: Path, settings: SharedSettings, content, code, monkeypatch
) -> None:
    path = tmp_path / "bad.parquet"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        pq.write_table(pa.table(content), path)
    sleeps: list[float] = []
    monkeypatch.setattr(tasks.time, "sleep", sleeps.append)
    with pytest.raises(DataError) as caught:
        tasks.execute(
            JobRequest(dataset_uri=str(path), ratio=0.5, method="random"),
            str(tmp_path / "out"),
            job_id="j",
            settings=settings,
        )
    assert caught.value.code == code
    assert caught.value.message
    assert sleeps == [], "bad data is not retried"
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_budget_larger_than_data_fails_clearly(tmp_path: Path, settings: SharedSettings) -> None:
    data = make_ctr_parquet(tmp_path / "ctr.parquet", 50)
    with pytest.raises(DataError) as caught:
        tasks.execute(
            JobRequest(dataset_uri=str(data), size=51, method="random"),
            str(tmp_path / "out"),
            job_id="j",
            settings=settings,
        )
    assert caught.value.code == "budget_too_large" and "size" in caught.value.message


def test_transient_faults_are_retried_then_fail_clearly(
    settings: SharedSettings, monkeypatch
) -> None:
    monkeypatch.setattr(tasks.time, "sleep", lambda s: None)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError(111, "Connection refused")
        return "done"

    messages: list[str] = []
    assert (
        tasks._with_retries(
            "reading", flaky, settings, lambda p, f, m: messages.append(m), "loading"
        )
        == "done"
    )
    assert len(calls) == 3 and "retry 1 of 2" in messages[0]

    def down() -> None:
        raise OSError(111, "Connection refused")

    with pytest.raises(JobFailed) as caught:
        tasks._with_retries("writing the coreset", down, settings, lambda p, f, m: None, "writing")
    assert caught.value.code == "storage_unavailable"
    assert "3 time(s)" in caught.value.message and "writing the coreset" in caught.value.message

    wrapped = DataError("unreadable_data", "cannot read")
    wrapped.__cause__ = TimeoutError("read timed out")
    assert tasks._transient_cause(wrapped) is not None, (
        "a data error caused by a timeout is a storage fault"
    )


def test_a_dataset_store_that_does_not_answer_is_retried_then_fails_clearly(
    tmp_path: Path, settings: SharedSettings, monkeypatch
) -> None:
    pytest.importorskip("aiohttp")
    from tests.engine.test_data_remote import _free_port

    sleeps: list[float] = []
    monkeypatch.setattr(tasks.time, "sleep", sleeps.append)
    request = JobRequest(
        dataset_uri=f"http://127.0.0.1:{_free_port()}/clicks.parquet", ratio=0.5, method="random"
    )
    with pytest.raises(JobFailed) as caught:
        tasks.execute(request, str(tmp_path / "out"), job_id="j", settings=settings)
    assert caught.value.code == "storage_unavailable"
    assert "opening the dataset failed" in caught.value.message
    assert len(sleeps) == settings.storage_retries


def test_transient_classification() -> None:
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert not is_transient(FileNotFoundError("x"))
    assert not is_transient(OSError("Invalid: Parquet magic bytes not found"))
    assert not is_transient(ValueError("bad"))
    from botocore.exceptions import EndpointConnectionError

    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))


@pytest.mark.parametrize(
    "code, status, transient",
    [("SlowDown", 503, True), ("ServiceUnavailable", 503, True), ("InternalError", 500, True),
     ("RequestTimeout", 400, True), ("AccessDenied", 403, False), ("NoSuchKey", 404, False),
     ("OperationAborted", 409, False), ("NotImplemented", 501, False)],
)
def test_s3_replies_that_say_try_again_are_transient(code, status, transient) -> None:
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    reply = {
        "Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}
    }
    error = ClientError(reply, "GetObject")
    assert is_transient(error) is transient
    try:  # as s3fs raises it: an OSError caused by the ClientError
        raise translate_boto_error(error) from error
    except OSError as translated:
        assert is_transient(translated) is transient
        code_seen = tasks.failure_of(translated)[0]
    assert (code_seen == "storage_unavailable") is transient


def test_failure_codes() -> None:
    from rq.timeouts import JobTimeoutException

    assert tasks.failure_of(DataError("labels_not_binary", "label: 3"))[0] == "labels_not_binary"
    assert tasks.failure_of(JobTimeoutException("late"))[0] == "timeout"
    try:  # a library that turns the timeout into an error of its own
        try:
            raise JobTimeoutException("late")
        except JobTimeoutException:
            raise AttributeError("half-built object") from None
    except AttributeError as error:
        assert tasks.failure_of(error)[0] == "timeout"
    assert tasks.failure_of(MemoryError())[0] == "out_of_memory"
    code, message = tasks.failure_of(RuntimeError("secret internals\nTraceback"))
    assert code == "internal_error" and "Traceback" not in message and "secret" not in message


def tenant_folder(tmp_path: Path) -> str:
    """A folder in tenant t1's folder of the store of the ``settings`` fixture."""
    return str(tmp_path / "storage" / "t1" / "out")


def export_settings(settings: SharedSettings, monkeypatch) -> None:
    """Every set field of ``settings`` as its NACS_* variable, as a worker process reads them."""
    for name, value in settings.model_dump().items():
        if value is not None:
            monkeypatch.setenv(f"NACS_{name.upper()}", str(value))


def _queued_job(
    tmp_path: Path, create: Create, settings: SharedSettings, monkeypatch, method: str, rows: int
) -> tuple[JobRecord, JobRequest]:
    """A job recorded as the API records it, on ``rows`` generated rows, its settings
    exported as a worker process reads them; (record, request)."""
    export_settings(settings, monkeypatch)
    data = make_ctr_parquet(tmp_path / "ctr.parquet", rows)
    request = JobRequest(
        dataset_uri=str(data), ratio=0.2, method=method, output_uri=tenant_folder(tmp_path)
    )
    return create("t1", request.model_dump(mode="json"))[0], request


def test_run_job_lifecycle(
    tmp_path: Path, store: RecordStore, create: Create, settings: SharedSettings, monkeypatch
) -> None:
    record, request = _queued_job(tmp_path, create, settings, monkeypatch, "stratified", 500)
    outcome = tasks.run_job(record.id, settings.redis_prefix)
    assert outcome["status"] == "succeeded"
    done = store.get(record.id)
    assert done is not None and done.result is not None
    assert done.status == JobStatus.succeeded and done.attempts == 1 and done.heartbeat_at
    assert done.result.size == 100 and done.result.manifest_uri.endswith("/manifest.json")
    assert store.stats()["phase_seconds"]["loading"]["count"] == 1
    assert tasks.run_job(record.id, settings.redis_prefix) == {"job_id": record.id, "ran": False}

    missing = request.model_copy(update={"dataset_uri": str(tmp_path / "missing.parquet")})
    bad, _ = create("t1", missing.model_dump(mode="json"))
    assert tasks.run_job(bad.id, settings.redis_prefix)["status"] == "failed"
    failed = store.get(bad.id)
    assert failed is not None and failed.error is not None and failed.attempts == 1
    assert failed.error.code == "dataset_not_found"

    cancelled, _ = create("t1", request.model_dump(mode="json"))
    cancel(store, queue_of(store.redis, settings), cancelled.id)
    assert tasks.run_job(cancelled.id, settings.redis_prefix)["ran"] is False
    assert store.get(cancelled.id).status == JobStatus.cancelled  # type: ignore[union-attr]


def test_a_cancel_after_the_result_is_written_is_too_late(
    tmp_path: Path, store: RecordStore, create: Create, settings: SharedSettings, monkeypatch
) -> None:
    record, _ = _queued_job(tmp_path, create, settings, monkeypatch, "random", 300)
    written = tasks.execute_or_hand_over

    def then_cancelled(*args: Any, **kwargs: Any) -> Any:
        manifest = written(*args, **kwargs)
        cancel(store, queue_of(store.redis, settings), record.id)
        time.sleep(3 * settings.heartbeat_interval_s)  # the heartbeat reads the request
        return manifest

    monkeypatch.setattr(tasks, "execute_or_hand_over", then_cancelled)
    assert tasks.run_job(record.id, settings.redis_prefix)["status"] == "succeeded"
    done = store.get(record.id)
    assert done is not None and done.status == JobStatus.succeeded and done.result is not None
    assert done.cancel_requested
    assert (Path(done.result.output_uri.removeprefix("file://")) / "manifest.json").exists()


def test_working_folders_of_killed_runs_are_swept(
    tmp_path: Path, store: RecordStore, create: Create, settings: SharedSettings
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    swept = settings.model_copy(update={"workdir": str(workdir)})
    request = {"dataset_uri": "file:///data.parquet", "ratio": 0.1, "output_uri": None}
    ended, running = create("t1", request)[0], create("t1", request)[0]
    store.transition(ended.id, JobStatus.running)
    store.transition(ended.id, JobStatus.failed)
    store.transition(running.id, JobStatus.running)
    names = {
        "ended": f"nacs-{ended.id}-x1", "running": f"nacs-{running.id}-x2",
        "unknown": f"nacs-{'f' * 32}-x3", "local": "nacs-local-0123456789ab-x4",
    }
    for name in names.values():
        (workdir / name / "encoded").mkdir(parents=True)
    (workdir / f"nacs-{ended.id}-file").write_text("")  # not a folder
    expired = workdir / f"nacs-{'e' * 32}-x5"  # its record expired long ago
    expired.mkdir()
    long_ago = time.time() - settings.job_ttl_s - settings.job_timeout_s - 60
    os.utime(expired, (long_ago, long_ago))
    removed = tasks.sweep_workdirs(RecordStore(store.redis, swept))
    assert sorted(removed) == sorted([str(workdir / names["ended"]), str(expired)])
    assert sorted(p.name for p in workdir.iterdir()) == sorted(
        [names["running"], names["unknown"], names["local"], f"nacs-{ended.id}-file"]
    )


def test_rq_shutdown_leaves_the_job_to_run_again(
    tmp_path: Path, store: RecordStore, create: Create, settings: SharedSettings, monkeypatch
) -> None:
    """RQ's shutdown signal (a BaseException) is not a failure of the job: it propagates, the
    record stays running, and the reaper runs the job again."""
    from rq.exceptions import ShutDownImminentException

    from worker.reaper import reap

    export_settings(settings, monkeypatch)

    def shut_down(*args: object, **kwargs: object) -> None:
        raise ShutDownImminentException("shut down imminent", {})

    monkeypatch.setattr(tasks, "execute_or_hand_over", shut_down)
    request = JobRequest(dataset_uri="/data/x.parquet", size=5, output_uri=tenant_folder(tmp_path))
    record, _ = create("t1", request.model_dump(mode="json"))
    with pytest.raises(ShutDownImminentException):
        tasks.run_job(record.id, settings.redis_prefix)
    after = store.get(record.id)
    assert after is not None and after.status == JobStatus.running and after.error is None
    later = time.time() + settings.heartbeat_timeout_s + 1
    assert reap(store, queue_of(store.redis, settings), now=later) == [(record.id, "requeued")]


def test_execute_hands_back_the_engines_workspace(tmp_path: Path, settings: SharedSettings) -> None:
    """The greedy keeps a distance workspace per thread (up to 512 MiB); a job hands it back."""
    from nacs_engine.selection import facility_location

    data = make_ctr_parquet(tmp_path / "ctr.parquet", 300)
    facility_location._workspace.buffer = np.zeros(4)
    request = JobRequest(dataset_uri=str(data), size=30, method="random")
    tasks.execute(request, str(tmp_path / "out"), job_id="j", settings=settings)
    assert getattr(facility_location._workspace, "buffer", None) is None


def test_local_writes_are_atomic(tmp_path: Path, settings: SharedSettings) -> None:
    target = tmp_path / "deep" / "folder" / "file.json"
    write_bytes(str(target), b"{}", settings)
    assert target.read_bytes() == b"{}"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_s3_options_use_the_endpoint_and_no_region(settings: SharedSettings) -> None:
    configured = settings.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:9000"})
    options = storage_options("s3://bucket/key", configured)
    assert options["client_kwargs"] == {"endpoint_url": "http://127.0.0.1:9000"}
    assert "region_name" not in json.dumps(options, default=str)
    assert storage_options("file:///x", configured) == {}


def test_coreset_table_dtypes() -> None:
    table = outputs.coreset_table(
        np.array([1, 5]), np.array([0, 1]), np.array([0.1, 0.9]), np.ones(2), np.zeros(2)
    )
    assert [str(f.type) for f in table.schema] == ["int64", "float", "float", "float", "float"]


def test_execute_reads_over_http(tmp_path: Path, settings: SharedSettings) -> None:
    import functools
    import http.server
    import threading

    make_ctr_parquet(tmp_path / "site" / "ctr.parquet", 600, seed=5)
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "site")
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/ctr.parquet"
        request = JobRequest(dataset_uri=url, size=60, method="random")
        manifest = tasks.execute(request, str(tmp_path / "out"), job_id="j", settings=settings)
    finally:
        server.shutdown()
        server.server_close()
    assert manifest.dataset.rows == 600 and manifest.coreset.rows == 60


def test_run_job_checks_private_hosts_again(
    store: RecordStore, create: Create, settings: SharedSettings, monkeypatch
) -> None:
    export_settings(settings, monkeypatch)
    request = JobRequest(
        dataset_uri="https://localhost/data.parquet",
        size=5,
        method="random",
        output_uri="/tmp/unused",
    )
    record, _ = create("t1", request.model_dump(mode="json"))
    assert tasks.run_job(record.id, settings.redis_prefix)["status"] == "failed"
    error = store.get(record.id).error  # type: ignore[union-attr]
    assert error is not None and error.code == "dataset_uri_refused"
    assert "localhost" in error.message


def test_an_rq_worker_runs_the_job(
    tmp_path: Path, store: RecordStore, create: Create, settings: SharedSettings, monkeypatch
) -> None:
    """A real RQ worker takes the job off the queue and runs it: our record succeeds and
    RQ's job finishes."""
    from rq.job import Job
    from rq.job import JobStatus as RqStatus
    from rq.serializers import JSONSerializer

    from worker.runner import run_worker

    export_settings(settings, monkeypatch)
    data = make_ctr_parquet(tmp_path / "ctr.parquet", 400)
    request = JobRequest(
        dataset_uri=str(data), size=40, method="random", output_uri=tenant_folder(tmp_path)
    )
    record, _ = create("t1", request.model_dump(mode="json"))
    run_worker(settings, burst=True, fork=False, reaper=False)
    done = store.get(record.id)
    assert done is not None and done.result is not None, done
    assert done.status == JobStatus.succeeded and done.attempts == 1 and done.result.size == 40
    rq_job = Job.fetch(record.rq_job_id or "", connection=store.redis, serializer=JSONSerializer)
    assert rq_job.get_status() == RqStatus.FINISHED
    assert rq_job.return_value()["status"] == "succeeded"
    assert queue_of(store.redis, settings).count == 0


def test_a_stop_signal_between_turns_of_the_loop_stops_the_worker_quietly(
    settings: SharedSettings, monkeypatch, caplog
) -> None:
    """SIGTERM handled between two turns of RQ's loop raises StopRequested out of ``work``
    (seen in an end-to-end run); the worker stops as asked instead of dying with a
    traceback."""
    import signal

    from rq import SimpleWorker

    from worker.runner import run_worker

    signalled: list[bool] = []

    def signalled_between_turns(self: SimpleWorker, **kwargs: object) -> bool:
        signalled.append(True)
        self.request_stop(signal.SIGTERM, None)  # RQ's own handler, with the worker idle
        return True

    monkeypatch.setattr(SimpleWorker, "work", signalled_between_turns)
    caplog.set_level("INFO", logger="worker.runner")
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert run_worker(settings, fork=False, reaper=False) is False
    finally:
        for number, handler in handlers.items():  # RQ's handler repointed them at the worker
            signal.signal(number, handler)
    assert signalled and "stopped on request" in caplog.text


@pytest.mark.parametrize(("after_s", "code"), [(0.0, "internal_error"), (1.9, "timeout")])
def test_a_failure_at_the_time_limit_is_the_timeout(
    tmp_path: Path, store: RecordStore, create: Create, settings: SharedSettings, monkeypatch,
    after_s: float, code: str,
) -> None:
    """RQ's timeout can surface as another error (here: a module it left half-imported)."""
    export_settings(settings.model_copy(update={"job_timeout_s": 2}), monkeypatch)

    def half_imported(*args: object, **kwargs: object) -> None:
        time.sleep(after_s)
        raise AttributeError("module 'pandas' has no attribute 'util'")

    monkeypatch.setattr(tasks, "execute_or_hand_over", half_imported)
    request = JobRequest(dataset_uri="/data/x.parquet", size=5, output_uri=tenant_folder(tmp_path))
    record, _ = create("t1", request.model_dump(mode="json"))
    assert tasks.run_job(record.id, settings.redis_prefix)["status"] == "failed"
    error = store.get(record.id).error  # type: ignore[union-attr]
    assert error is not None and error.code == code
