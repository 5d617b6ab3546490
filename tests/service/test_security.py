"""``service.security.real_path``: the answer of ``os.path.realpath``, found through the kernel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service import security
from service.errors import Unprocessable
from service.security import check_dataset_uri, real_path
from service.settings import Settings


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An allowed root ``data`` beside a ``secret`` file, with links that stay inside and links that leave."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "clicks.parquet").write_bytes(b"PAR1")
    (tmp_path / "secret.parquet").write_bytes(b"PAR1")
    (data / "inside.parquet").symlink_to(data / "clicks.parquet")
    (data / "relative.parquet").symlink_to("sub/../clicks.parquet")
    (data / "escape.parquet").symlink_to(tmp_path / "secret.parquet")
    (data / "escapedir").symlink_to(tmp_path)
    (data / "loop").symlink_to(data / "loop")
    (data / "dangling.parquet").symlink_to(data / "gone.parquet")
    return data


CASES = [
    "clicks.parquet",  # a plain file
    "inside.parquet",  # a link that stays inside the root
    "relative.parquet",  # a relative link through '..'
    "escape.parquet",  # a link that leaves it
    "escapedir/secret.parquet",  # a linked folder that leaves it
    "../secret.parquet",  # '..' out of it
    "sub/../../secret.parquet",
    "missing.parquet",  # no such file
    "missing/deeper.parquet",
    "dangling.parquet",  # a link to no file
    "loop",  # a link to itself
    "sub",  # a folder
    "sub/",
    "clicks.parquet/",  # a file named as a folder
    ".",
]


@pytest.mark.parametrize("relative", CASES)
def test_real_path_is_realpath(tree: Path, relative: str) -> None:
    path = f"{tree}/{relative}"
    assert real_path(path) == os.path.realpath(path)
    assert real_path("/" + path) == os.path.realpath("/" + path)  # a URI path may start with '//'


def test_real_path_without_proc_is_realpath(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(security, "_O_PATH", 0)
    for relative in CASES:
        path = f"{tree}/{relative}"
        assert real_path(path) == os.path.realpath(path)


@pytest.mark.skipif(not security._O_PATH, reason="the kernel path is Linux's")
def test_real_path_asks_the_kernel_for_a_file_that_exists(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For an existing file the kernel answers (os.path.realpath is not called); for a missing one, it is."""
    calls = []
    monkeypatch.setattr(security.os.path, "realpath", lambda p: calls.append(p) or p)
    assert real_path(f"{tree}/escapedir/secret.parquet") == str(tree.parent / "secret.parquet")
    assert calls == []
    real_path(f"{tree}/missing.parquet")
    assert calls == [f"{tree}/missing.parquet"]


@pytest.mark.parametrize("relative", CASES)
def test_dataset_check_allows_exactly_what_stays_inside(tree: Path, relative: str) -> None:
    settings = Settings(api_keys="alpha:alpha-key-0123", allowed_uris=f"file://{tree}/")
    path = os.path.realpath(f"{tree}/{relative}")
    inside = path == str(tree) or path.startswith(f"{tree}/")
    for uri in (f"{tree}/{relative}", f"file://{tree}/{relative}"):
        if inside:
            assert check_dataset_uri(uri, "alpha", settings) == "file://" + path
        else:
            with pytest.raises(Unprocessable, match="outside the allowed locations"):
                check_dataset_uri(uri, "alpha", settings)
