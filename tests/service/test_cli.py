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


def test_a_port_in_use_is_named_before_anything_starts(clean_env) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"NACS_INSECURE_LOCAL": "1"}
        for command, args in ((serve, ["--port", str(port)]), (up, ["--port", str(port)])):
            result = CliRunner().invoke(command, args, env=env)
            assert result.exit_code == 1, result.output
            assert f"cannot listen on 127.0.0.1:{port}" in result.output
            assert "Redis:" not in result.output and "Traceback" not in result.output


def test_up_exits_with_an_error_when_a_process_it_started_stops(clean_env, monkeypatch) -> None:
    from service import cli

    class Ended:
        def __init__(self, command: list[str], **kwargs: object) -> None:
            self.returncode = 3 if "serve" in command else None

        def poll(self) -> int | None:
            return self.returncode

        def terminate(self) -> None:
            self.returncode = -15

        def wait(self, timeout: float) -> int | None:
            return self.returncode

    monkeypatch.setattr(cli, "_redis_answers", lambda url: True)
    monkeypatch.setattr(cli, "_persistence_problem", lambda url: None)
    monkeypatch.setattr(cli.subprocess, "Popen", Ended)
    env = {"NACS_REDIS_URL": "redis://127.0.0.1:1/0", "NACS_INSECURE_LOCAL": "1"}
    result = CliRunner().invoke(up, ["--port", "0"], env=env)
    assert result.exit_code == 1
    assert "the API stopped (exit code 3)" in result.output
