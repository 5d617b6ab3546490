"""The SDK installs and works without torch, FastAPI, RQ, Redis or any server-side package."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = (
    "torch",
    "fastapi",
    "rq",
    "starlette",
    "redis",
    "uvicorn",
    "nacs_engine",
    "service",
    "worker",
    "pandas",
)

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = set(sys.argv[1].split(","))


    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None


    sys.meta_path.insert(0, Blocker())

    import json
    import tempfile
    from pathlib import Path

    import httpx
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import nacs_client
    from nacs_client import Client, Coreset
    from nacs_client.cli import main

    folder = Path(tempfile.mkdtemp())
    pq.write_table(
        pa.table(
            {
                "row": pa.array([1, 3], pa.int64()),
                "label": pa.array([0.0, 1.0], pa.float32()),
                "soft_label": pa.array([0.2, 0.8], pa.float32()),
                "weight": pa.array([1.0, 1.0], pa.float32()),
                "uncertainty": pa.array([0.0, 0.0], pa.float32()),
            }
        ),
        folder / "coreset.parquet",
    )
    job = {"id": "j1", "status": "queued", "created_at": "2026-11-29T20:00:00Z", "request": {}}
    states = iter(["queued", "running", "succeeded"])


    def answer(request):
        if request.method == "POST":
            return httpx.Response(202, json=job)
        return httpx.Response(200, json={**job, "status": next(states)})


    transport = httpx.MockTransport(answer)
    with Client("http://nacs.test", "k", transport=transport, sleep=lambda s: None) as client:
        created = client.jobs.create("file:///d.parquet", ratio=0.5)
        assert client.jobs.get(created.id).status == "queued"
        assert client.jobs.wait(created.id, progress=False).status == "succeeded"

    coreset = Coreset.read(str(folder / "coreset.parquet"), manifest={"dataset": {"rows": 4}})
    taken = coreset.take(pa.table({"x": ["a", "b", "c", "d"]}))
    assert taken.column("x").to_pylist() == ["b", "d"], taken

    try:
        main(["--help"])
    except SystemExit as exit:
        assert exit.code == 0, exit.code
    try:
        main(["serve"])
    except SystemExit as exit:
        assert exit.code == 2, exit.code

    loaded = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
    print(json.dumps({"loaded": loaded}))
    """
)


def test_the_sdk_works_where_server_packages_are_absent(tmp_path):
    script = tmp_path / "standalone.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), ",".join(BLOCKED)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert '{"loaded": []}' in done.stdout
    assert "Commands:" in done.stdout  # nacs --help printed its commands
    assert "serve" in done.stdout
    assert "pip install 'nacs[server]'" in done.stderr  # nacs serve explained what is missing


def test_the_blocker_really_blocks(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(SCRIPT.split("import json")[0] + "import torch\n")
    done = subprocess.run(
        [sys.executable, str(script), "torch"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "blocked" in done.stderr


def test_base_dependencies_are_the_clients_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {
        dependency.split(";")[0]
        .split("[")[0]
        .split("<")[0]
        .split(">")[0]
        .split("=")[0]
        .split("~")[0]
        .strip()
        .lower()
        for dependency in project["dependencies"]
    }
    assert names.isdisjoint(
        {"torch", "fastapi", "rq", "uvicorn", "redis", "starlette", "pandas"}
    ), names
    assert {"httpx", "pydantic", "numpy", "pyarrow", "fsspec", "click"} <= names
    assert project["scripts"]["nacs"] == "nacs_client.cli:main"


def test_nacs_client_imports_nothing_from_the_server_side():
    offenders = []
    for path in (ROOT / "nacs_client").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("import", "from"):
                top = words[1].split(".")[0]
                if top in ("service", "worker", "nacs_engine"):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
