"""Dataset URI checks: resolved paths stay inside the allowed roots; host lookups leave the
event loop."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from service.errors import Unprocessable
from service.security import check_dataset_uri
from service.settings import ApiSettings


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An allowed root ``data`` beside a ``secret`` file, with links that stay inside and links
    that leave."""
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
def test_dataset_check_allows_exactly_what_stays_inside(tree: Path, relative: str) -> None:
    settings = ApiSettings(api_keys="alpha:alpha-key-0123", allowed_uris=f"file://{tree}/")
    path = os.path.realpath(f"{tree}/{relative}")
    inside = path == str(tree) or path.startswith(f"{tree}/")
    for uri in (f"{tree}/{relative}", f"file://{tree}/{relative}"):
        if inside:
            assert asyncio.run(check_dataset_uri(uri, "alpha", settings)) == "file://" + path
        else:
            with pytest.raises(Unprocessable, match="outside the allowed locations"):
                asyncio.run(check_dataset_uri(uri, "alpha", settings))


def test_host_lookup_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow DNS answer must not stall every request: the lookup runs in a worker thread."""
    looked_up: list[bool] = []

    def lookup(host: str, *args: object) -> list:
        try:
            asyncio.get_running_loop()
            looked_up.append(True)
        except RuntimeError:
            looked_up.append(False)
        return [(2, 1, 6, "", ("93.184.216.34", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    settings = ApiSettings(api_keys="alpha:alpha-key-0123", allowed_uris="https://example.com/")
    uri = "https://example.com/data.parquet"
    assert asyncio.run(check_dataset_uri(uri, "alpha", settings)) == uri
    assert looked_up == [False], "getaddrinfo ran on the event loop"
