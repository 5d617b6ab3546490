"""The dependency rules of the code base: service -> worker -> nacs_engine; the SDK stands alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(package: str) -> dict[str, set[str]]:
    """Top-level module names imported anywhere in ``package``, by file."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        (
            "nacs_engine",
            {
                "fastapi",
                "starlette",
                "rq",
                "redis",
                "boto3",
                "httpx",
                "service",
                "worker",
                "nacs_client",
            },
        ),
        ("worker", {"fastapi", "starlette", "service", "nacs_client"}),
        ("service", {"torch", "nacs_client"}),
        (
            "nacs_client",
            {"torch", "fastapi", "starlette", "rq", "redis", "service", "worker", "nacs_engine"},
        ),
    ],
)
def test_package_imports_only_what_its_layer_allows(package: str, forbidden: set[str]) -> None:
    offenders = {
        path: sorted(names & forbidden)
        for path, names in _imported_modules(package).items()
        if names & forbidden
    }
    # The SDK may import torch lazily inside the two methods that build torch objects.
    if package == "nacs_client":
        offenders = {
            path: names
            for path, names in offenders.items()
            if names != ["torch"] or not path.endswith("coreset.py")
        }
    assert offenders == {}


@pytest.mark.parametrize(
    "module",
    [
        "service.main",
        "worker.spec",
        "worker.enqueue",
        "worker.reaper",
        "worker.pagination",
        "nacs_engine.config",
    ],
)
def test_api_side_modules_do_not_load_torch(module: str) -> None:
    code = (
        f"import importlib, sys; importlib.import_module({module!r}); print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("package", ["service", "worker"])
def test_production_code_validates_without_assert(package: str) -> None:
    """``python -O`` strips asserts: production paths raise errors that say what is wrong."""
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.Assert)
    ]
    assert found == []
