"""The server commands refuse bad settings with one clear line, before starting anything."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from service.cli import _redacted, serve, up
from worker.cli import worker


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("NACS_"):
            monkeypatch.delenv(name)


def test_serve_refuses_without_keys(clean_env) -> None:
    result = CliRunner().invoke(serve, [])
    assert result.exit_code == 1
    assert "NACS_INSECURE_LOCAL" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("command", "env", "named"),
    [
        (worker, {"NACS_JOB_TTL_S": "soon"}, "NACS_JOB_TTL_S"),
        (serve, {"NACS_INSECURE_LOCAL": "1", "NACS_MAX_BODY_BYTES": "10"}, "NACS_MAX_BODY_BYTES"),
        (up, {"NACS_API_KEYS": "not-a-pair"}, "NACS_API_KEYS"),
    ],
)
def test_bad_settings_are_named(clean_env, command, env: dict, named: str) -> None:
    result = CliRunner().invoke(command, [], env=env)
    assert result.exit_code == 1
    assert named in result.output and "Traceback" not in result.output


def test_redis_passwords_are_not_printed() -> None:
    assert "secret" not in _redacted("redis://:secret@db:6379/0")
    assert _redacted("redis://db:6379/0") == "redis://db:6379/0"
