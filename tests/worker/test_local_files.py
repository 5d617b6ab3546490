"""A job reads and writes local files only inside the folders allowed it, whatever symbolic
link is put in a checked path's place after the check."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from nacs_engine.data import open_source
from nacs_engine.errors import DataError
from tests.stack import make_ctr_parquet
from worker import tasks
from worker.errors import JobFailed
from worker.settings import SharedSettings
from worker.spec import JobRequest


@pytest.fixture
def folders(tmp_path: Path, settings: SharedSettings) -> dict[str, Path]:
    """``allowed`` (the tenant may read it), ``secret`` (it may not), and the tenant's folder
    of the store (``own``)."""
    allowed, secret = tmp_path / "allowed", tmp_path / "secret"
    make_ctr_parquet(allowed / "small.parquet", 200, seed=1)
    make_ctr_parquet(secret / "secret.parquet", 333, seed=2)
    return {"allowed": allowed, "secret": secret, "own": tmp_path / "storage" / "t1"}


@pytest.fixture
def confined(settings: SharedSettings, folders: dict[str, Path]) -> SharedSettings:
    return settings.model_copy(update={"allowed_uris": f"file://{folders['allowed']}/"})


def run(settings: SharedSettings, dataset: Path | str, output: Path, job_id: str = "j1"):
    request = JobRequest(dataset_uri=str(dataset), size=20, method="random")
    return tasks.execute(request, str(output), job_id=job_id, settings=settings, tenant="t1")


def test_a_checked_file_is_read(confined: SharedSettings, folders: dict[str, Path]) -> None:
    manifest = run(confined, folders["allowed"] / "small.parquet", folders["own"] / "a")
    assert manifest.dataset.rows == 200
    assert (folders["own"] / "a" / "manifest.json").exists()


def test_a_file_swapped_for_a_symbolic_link_is_refused(
    confined: SharedSettings, folders: dict[str, Path]
) -> None:
    swapped = folders["allowed"] / "swap.parquet"
    swapped.symlink_to(folders["secret"] / "secret.parquet")
    with pytest.raises(JobFailed) as refused:
        run(confined, swapped, folders["own"] / "a")
    assert refused.value.code == "dataset_uri_refused"
    assert f"{swapped} is a symbolic link" in refused.value.message
    assert not (folders["own"] / "a" / "coreset.parquet").exists()


def test_a_folder_on_the_way_swapped_for_a_link_is_refused(
    confined: SharedSettings, folders: dict[str, Path]
) -> None:
    (folders["allowed"] / "day").symlink_to(folders["secret"], target_is_directory=True)
    with pytest.raises(JobFailed) as refused:
        run(confined, folders["allowed"] / "day" / "secret.parquet", folders["own"] / "a")
    assert refused.value.code == "dataset_uri_refused"
    assert f"{folders['allowed'] / 'day'} is a symbolic link" in refused.value.message


def test_a_path_outside_the_workers_allowed_folders_is_refused(
    confined: SharedSettings, folders: dict[str, Path]
) -> None:
    with pytest.raises(JobFailed) as refused:
        run(confined, folders["secret"] / "secret.parquet", folders["own"] / "a")
    assert refused.value.code == "dataset_uri_refused"
    assert "NACS_ALLOWED_URIS" in refused.value.message


def test_a_fifo_in_a_files_place_is_refused_at_once(
    confined: SharedSettings, folders: dict[str, Path]
) -> None:
    fifo = folders["allowed"] / "pipe.parquet"
    os.mkfifo(fifo)
    with pytest.raises(JobFailed, match="not a file or a folder"):
        run(confined, fifo, folders["own"] / "a")


def test_a_folder_of_parts_is_read_and_linked_parts_named(
    confined: SharedSettings, folders: dict[str, Path]
) -> None:
    parts = folders["allowed"] / "parts"
    make_ctr_parquet(parts / "part-0.parquet", 100, seed=3)
    make_ctr_parquet(parts / "part-1.parquet", 50, seed=4)
    assert run(confined, parts, folders["own"] / "a").dataset.rows == 150
    (parts / "part-2.parquet").symlink_to(folders["secret"] / "secret.parquet")
    with pytest.raises(DataError) as refused:
        run(confined, parts, folders["own"] / "b", job_id="j2")
    assert "['part-2.parquet']" in refused.value.message
    assert "symbolic links" in refused.value.message
    assert "holds no" not in refused.value.message


def test_a_partitioned_folder_is_read_and_a_linked_partition_refused(
    confined: SharedSettings, folders: dict[str, Path]
) -> None:
    parts = folders["allowed"] / "clicks"
    make_ctr_parquet(parts / "day=1" / "part-0.parquet", 100, seed=3)
    make_ctr_parquet(parts / "day=2" / "part-0.parquet", 60, seed=4)
    manifest = run(confined, parts, folders["own"] / "a")
    assert manifest.dataset.rows == 160
    (parts / "day=3").symlink_to(folders["secret"], target_is_directory=True)
    with pytest.raises(DataError, match=r"\['day=3'\] in the folder are symbolic links"):
        run(confined, parts, folders["own"] / "b", job_id="j2")


def test_the_engine_names_linked_parts_too(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    make_ctr_parquet(tmp_path / "elsewhere.parquet", 10)
    (parts / "part-0.parquet").symlink_to(tmp_path / "elsewhere.parquet")
    with pytest.raises(DataError, match=r"\['part-0.parquet'\] in the folder are symbolic links"):
        open_source(str(parts))


def test_an_output_folder_swapped_for_a_link_is_refused(
    confined: SharedSettings, folders: dict[str, Path], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folders["own"].mkdir(parents=True)
    (folders["own"] / "a").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(JobFailed) as refused:
        run(confined, folders["allowed"] / "small.parquet", folders["own"] / "a")
    assert refused.value.code == "output_uri_refused"
    assert list(elsewhere.iterdir()) == [], "nothing is written through the link"


def test_a_result_file_swapped_for_a_link_is_replaced_not_followed(
    confined: SharedSettings, folders: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "precious.parquet"
    target.write_bytes(b"keep me")
    (folders["own"] / "a").mkdir(parents=True)
    (folders["own"] / "a" / "coreset.parquet").symlink_to(target)
    run(confined, folders["allowed"] / "small.parquet", folders["own"] / "a")
    assert target.read_bytes() == b"keep me"
    assert pq.read_table(folders["own"] / "a" / "coreset.parquet").num_rows == 20


def test_an_output_outside_the_tenants_folder_is_refused(
    confined: SharedSettings, folders: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(JobFailed) as refused:
        run(confined, folders["allowed"] / "small.parquet", tmp_path / "storage" / "t2" / "a")
    assert refused.value.code == "output_uri_refused"


def test_a_finished_result_is_never_replaced(
    confined: SharedSettings, folders: dict[str, Path]
) -> None:
    first = run(confined, folders["allowed"] / "small.parquet", folders["own"] / "a")
    before = (folders["own"] / "a" / "coreset.parquet").read_bytes()
    with pytest.raises(JobFailed) as refused:
        run(confined, folders["allowed"] / "small.parquet", folders["own"] / "a", job_id="j2")
    assert refused.value.code == "output_uri_taken" and first.job_id in refused.value.message
    assert (folders["own"] / "a" / "coreset.parquet").read_bytes() == before
    manifest = json.loads((folders["own"] / "a" / "manifest.json").read_text())
    assert manifest["job_id"] == "j1"
    again = run(confined, folders["allowed"] / "small.parquet", folders["own"] / "a")
    assert again.job_id == "j1", "a job's next run may write its own folder again"


def test_without_a_tenant_local_paths_are_opened_as_they_are(
    settings: SharedSettings, folders: dict[str, Path], tmp_path: Path
) -> None:
    """``nacs select`` reads and writes the user's own paths, links included."""
    link = tmp_path / "link.parquet"
    link.symlink_to(folders["secret"] / "secret.parquet")
    request = JobRequest(dataset_uri=str(link), size=20, method="random")
    out = tmp_path / "out"
    assert tasks.execute(request, str(out), job_id="a", settings=settings).dataset.rows == 333
    assert tasks.execute(request, str(out), job_id="b", settings=settings).job_id == "b"
    shutil.rmtree(out)


def test_a_result_written_while_the_job_selected_is_not_replaced_either(
    confined: SharedSettings, folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.tasks

    first = run(confined, folders["allowed"] / "small.parquet", folders["own"] / "a")
    before = (folders["own"] / "a" / "manifest.json").read_bytes()
    # the folder was free when the second job started; the first job's result came later
    monkeypatch.setattr(worker.tasks, "_refuse_another_result", lambda *args: None)
    with pytest.raises(JobFailed) as refused:
        run(confined, folders["allowed"] / "small.parquet", folders["own"] / "a", job_id="j2")
    assert refused.value.code == "output_uri_taken" and first.job_id in refused.value.message
    assert (folders["own"] / "a" / "manifest.json").read_bytes() == before
