"""A path checked at submit and swapped for a symbolic link before the worker opens it: the real
API, worker and Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stack import Stack, make_ctr_parquet, start_stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def idle_stack(tmp_path: Path):
    """A stack whose worker starts when the test says so; datasets allowed under data/."""
    running = start_stack(tmp_path / "stack", workers=0, allowed_uris=f"file://{tmp_path}/data/")
    yield running
    running.stop()


def test_a_dataset_swapped_after_submit_is_not_read(idle_stack: Stack, tmp_path: Path) -> None:
    secret = make_ctr_parquet(tmp_path / "secret" / "secret.parquet", 333, seed=2)
    swapped = make_ctr_parquet(tmp_path / "data" / "swap.parquet", 200, seed=1)
    job = idle_stack.submit({"dataset_uri": str(swapped), "ratio": 0.5, "method": "random"})
    swapped.unlink()
    swapped.symlink_to(secret)
    idle_stack.start_worker()
    final = idle_stack.wait(job["id"], timeout_s=60)
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "dataset_uri_refused"
    assert "symbolic link" in final["error"]["message"]


def test_an_output_folder_swapped_for_a_link_is_not_written(
    idle_stack: Stack, tmp_path: Path
) -> None:
    data = make_ctr_parquet(tmp_path / "data" / "small.parquet", 200, seed=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    job = idle_stack.submit({"dataset_uri": str(data), "ratio": 0.5, "method": "random"})
    output = Path(job["request"]["output_uri"][len("file://") :])
    output.parent.mkdir(parents=True)
    output.symlink_to(elsewhere, target_is_directory=True)
    idle_stack.start_worker()
    final = idle_stack.wait(job["id"], timeout_s=60)
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "output_uri_refused"
    assert list(elsewhere.iterdir()) == []
