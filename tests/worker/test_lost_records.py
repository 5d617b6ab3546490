"""A job whose record vanishes (Redis lost its data) stops, leaves nothing it wrote, and says so
once; Redis write failures are logged once per change, not at every call."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import redis

from tests.stack import make_ctr_parquet
from tests.worker.conftest import Create
from tests.worker.test_tasks import export_settings, tenant_folder
from worker import tasks
from worker.enqueue import new_record
from worker.progress import JobProgress
from worker.records import JobRecord, JobStatus, RecordStore
from worker.settings import SharedSettings
from worker.spec import JobRequest


def make_job(tmp_path: Path, create: Create) -> JobRecord:
    data = make_ctr_parquet(tmp_path / "ctr.parquet", 500)
    request = JobRequest(
        dataset_uri=str(data), size=50, method="random", output_uri=tenant_folder(tmp_path)
    )
    record, _ = create("t1", request.model_dump(mode="json"))
    return record


def errors_naming(caplog, job_id: str) -> list[str]:
    return [
        record.getMessage() for record in caplog.records
        if record.levelno >= logging.ERROR and job_id in record.getMessage()
    ]


def test_a_record_gone_before_the_job_ends_leaves_no_result(
    tmp_path: Path, store: RecordStore, create: Create, settings: SharedSettings, monkeypatch,
    caplog,
) -> None:
    export_settings(settings, monkeypatch)
    record = make_job(tmp_path, create)
    write_manifest = tasks.write_manifest

    def lose_the_record_then_write(*args, **kwargs):
        store.redis.delete(store.keys.job(record.id))
        return write_manifest(*args, **kwargs)

    monkeypatch.setattr(tasks, "write_manifest", lose_the_record_then_write)
    with caplog.at_level(logging.INFO):
        outcome = tasks.run_job(record.id, settings.redis_prefix)
    assert outcome == {"job_id": record.id, "status": "lost"}
    assert list(Path(record.request["output_uri"]).iterdir()) == [], "nothing is left"
    assert len(errors_naming(caplog, record.id)) == 1
    assert store.get(record.id) is None, "nothing is written back"


def test_a_record_gone_mid_run_stops_the_job_before_its_manifest(
    tmp_path: Path, store: RecordStore, create: Create, settings: SharedSettings, monkeypatch,
    caplog,
) -> None:
    export_settings(settings, monkeypatch)
    record = make_job(tmp_path, create)
    write_coreset, manifests = tasks.write_coreset, []

    def lose_the_record_while_writing(*args, **kwargs):
        store.redis.delete(store.keys.job(record.id))
        time.sleep(settings.heartbeat_interval_s * 4)  # the heartbeat finds the record gone
        return write_coreset(*args, **kwargs)

    monkeypatch.setattr(tasks, "write_coreset", lose_the_record_while_writing)
    monkeypatch.setattr(tasks, "write_manifest", lambda *a, **k: manifests.append(a))
    with caplog.at_level(logging.INFO):
        outcome = tasks.run_job(record.id, settings.redis_prefix)
    assert outcome == {"job_id": record.id, "status": "lost"}
    assert manifests == [], "no manifest is written once the record is known to be gone"
    assert list(Path(record.request["output_uri"]).iterdir()) == [], "the coreset is removed"
    assert len(errors_naming(caplog, record.id)) == 1
    assert store.get(record.id) is None


class FlakyStore:
    """Fails ``failures`` heartbeats with a connection error, then writes them."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.record = new_record("t1", {}, "j1").model_copy(
            update={"status": JobStatus.running, "attempts": 1}
        )

    def heartbeat(self, job_id: str, **kwargs: object) -> JobRecord:
        if self.failures > 0:
            self.failures -= 1
            raise redis.exceptions.ConnectionError("Connection refused")
        return self.record


def test_write_failures_are_logged_once_per_change(caplog) -> None:
    store = FlakyStore(failures=40)
    progress = JobProgress(store, "j1", interval_s=60, attempt=1, min_write_interval_s=0)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="worker.progress"):
        for step in range(100):
            progress("loading", step / 100, "reading")
    messages = [record.getMessage() for record in caplog.records]
    assert sum("not written" in message for message in messages) == 1, messages
    assert sum("written again" in message for message in messages) == 1, messages
    assert len(messages) == 2
