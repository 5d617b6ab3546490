"""The ``nacs`` command: submit selection jobs, follow them and fetch their results.

Exit codes (stable; scripts may rely on them):

| code | meaning |
| --- | --- |
| 0 | success (for ``wait`` and ``submit --wait``: the job succeeded) |
| 1 | the job failed or was cancelled |
| 2 | usage error, a request the service refused (400, 409, 413, 422), extras not installed |
| 3 | no such job (404) |
| 4 | missing or wrong API key (401) |
| 5 | the service is unreachable or unavailable (connection error, timeout, 429, 5xx) |
| 6 | ``wait`` timed out before the job ended |
| 7 | any other error (a local file could not be written, an optional package is missing) |

Errors go to stderr as one line. Server and engine commands (``serve``,
``worker``, ``up``, ``select``, ``evaluate``) plug in through the entry-point
group ``nacs.cli`` and are imported only when run.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import webbrowser
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from itertools import islice
from pathlib import Path
from typing import Any

import click

from nacs_client._client import Client, _version
from nacs_client._progress import cli_progress
from nacs_client.errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    JobCancelledError,
    JobFailedError,
    NacsError,
    NotFoundError,
    PayloadTooLargeError,
    WaitTimeoutError,
)
from nacs_client.types import Job

__all__ = ["main", "EXIT_CODES"]

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_AUTH = 4
EXIT_UNAVAILABLE = 5
EXIT_WAIT_TIMEOUT = 6
EXIT_OTHER = 7

EXIT_CODES: dict[str, int] = {
    "ok": EXIT_OK,
    "job_failed": EXIT_JOB_FAILED,
    "usage": EXIT_USAGE,
    "not_found": EXIT_NOT_FOUND,
    "auth": EXIT_AUTH,
    "unavailable": EXIT_UNAVAILABLE,
    "wait_timeout": EXIT_WAIT_TIMEOUT,
    "other": EXIT_OTHER,
}

PLUGIN_GROUP = "nacs.cli"
# One-line help and the extras of the plugin commands, shown without importing them.
PLUGIN_HELP: dict[str, tuple[str, str]] = {
    "serve": ("Run the HTTP API (uvicorn).", "server"),
    "worker": ("Run a selection worker.", "server,engine"),
    "up": ("Run API, worker and Redis on one machine.", "server,engine"),
    "select": ("Run a selection locally, without the service.", "server,engine"),
    "evaluate": (
        "Compare methods on a dataset: test AUC of models trained on their coresets.",
        "server,engine",
    ),
}


def exit_code_for(error: BaseException) -> int:
    """The documented exit code for an error raised by a command."""
    if isinstance(error, (JobFailedError, JobCancelledError)):
        return EXIT_JOB_FAILED
    if isinstance(error, WaitTimeoutError):
        return EXIT_WAIT_TIMEOUT
    if isinstance(error, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, AuthenticationError):
        return EXIT_AUTH
    if isinstance(error, (BadRequestError, ConflictError, PayloadTooLargeError, ValueError)):
        return EXIT_USAGE
    if isinstance(error, APIConnectionError):
        return EXIT_UNAVAILABLE
    if isinstance(error, APIStatusError):
        return (
            EXIT_UNAVAILABLE if error.status_code == 429 or error.status_code >= 500 else EXIT_USAGE
        )
    return EXIT_OTHER


def _error_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if not isinstance(error, (NacsError, ValueError, OSError, ImportError)):
        text = f"unexpected {type(error).__name__}: {text}"
    if isinstance(error, BadRequestError) and error.field and error.field not in text:
        text += f" (field: {error.field})"
    return f"error: {text}"


# --- state: how commands get a client ---------------------------------------------------


@dataclass
class CliState:
    """What the commands share: the service's address and how to build a client.

    Tests pass their own ``client_factory`` through ``CliRunner.invoke(main, obj=CliState(...))``.
    """

    client_factory: Callable[..., Client] = Client
    base_url: str | None = None
    api_key: str | None = None
    _client: Client | None = field(default=None, repr=False)

    def client(self) -> Client:
        if self._client is None:
            self._client = self.client_factory(base_url=self.base_url, api_key=self.api_key)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# --- the group: built-in commands, lazy plugins, one-line errors --------------------------


def _plugin_entry_points() -> dict[str, metadata.EntryPoint]:
    return {entry.name: entry for entry in metadata.entry_points(group=PLUGIN_GROUP)}


def _unavailable_command(name: str, error: BaseException) -> click.Command:
    extras = PLUGIN_HELP.get(name, ("", "all"))[1]
    missing = getattr(error, "name", None)
    reason = f"the module {missing!r} is not installed" if missing else str(error)
    message = (
        f"error: 'nacs {name}' is not available in this installation ({reason}); "
        f"it ships with the server: pip install 'nacs[{extras}]'"
    )

    def unavailable(args: tuple[str, ...]) -> None:
        click.echo(message, err=True)
        sys.exit(EXIT_USAGE)

    return click.Command(
        name,
        callback=unavailable,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        help=PLUGIN_HELP.get(name, ("",))[0],
        add_help_option=False,
    )


class NacsGroup(click.Group):
    """Built-in commands plus the ``nacs.cli`` plugins, imported on first use only."""

    def _plugins(self) -> dict[str, metadata.EntryPoint]:
        return {
            name: entry
            for name, entry in _plugin_entry_points().items()
            if name not in self.commands
        }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self._plugins()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        entry = self._plugins().get(cmd_name)
        if entry is None:
            return None
        try:
            command = entry.load()
        except Exception as error:  # a plugin that cannot load must not break the CLI
            return _unavailable_command(cmd_name, error)
        if not isinstance(command, click.Command):
            return _unavailable_command(
                cmd_name, TypeError(f"{entry.value} is not a click command")
            )
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        own = [
            (name, command.get_short_help_str(formatter.width))
            for name, command in sorted(self.commands.items())
            if not command.hidden
        ]
        plugins = [(name, PLUGIN_HELP.get(name, ("",))[0]) for name in sorted(self._plugins())]
        if own:
            with formatter.section("Commands"):
                formatter.write_dl(own)
        if plugins:
            with formatter.section(
                "Server and engine commands (need nacs[server] or nacs[server,engine])"
            ):
                formatter.write_dl(plugins)


class NacsCommand(click.Command):
    """A built-in command: every error ends as one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as error:  # the CLI never shows a traceback
            click.echo(_error_line(error), err=True)
            ctx.exit(exit_code_for(error))


@click.group(cls=NacsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--base-url",
    envvar="NACS_BASE_URL",
    metavar="URL",
    help="The service's URL [env NACS_BASE_URL; default http://127.0.0.1:8000].",
)
@click.option(
    "--api-key", envvar="NACS_API_KEY", metavar="KEY", help="Your API key [env NACS_API_KEY]."
)
@click.version_option(_version(), prog_name="nacs")
@click.pass_context
def main(ctx: click.Context, base_url: str | None, api_key: str | None) -> None:
    """NaCS coreset service: small, clean training subsets for CTR models.

    \b
    Exit codes: 0 ok, 1 job failed or cancelled, 2 usage error or request refused,
    3 job not found, 4 authentication error, 5 service unreachable or unavailable,
    6 wait timed out, 7 other error.
    """
    state = ctx.ensure_object(CliState)
    state.base_url = base_url or state.base_url
    state.api_key = api_key or state.api_key
    ctx.call_on_close(state.close)


# --- formatting ---------------------------------------------------------------------------


def _time(value: datetime | None) -> str:
    if value is None:
        return "-"
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _percent(job: Job) -> str:
    if job.status == "succeeded":
        return "100%"
    if job.status == "running" and job.progress is not None:
        return f"{job.progress.fraction * 100:.0f}%"
    return "-"


def _budget(job: Job) -> str:
    request = job.request or {}
    if request.get("size") is not None:
        return f"size {request['size']}"
    if request.get("ratio") is not None:
        return f"ratio {request['ratio']}"
    return "-"


def _size(job: Job) -> str:
    if job.result is not None and job.result.size is not None:
        return str(job.result.size)
    return "-"


def format_table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """Columns aligned on the widest cell, two spaces apart."""
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=False)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip()
        for line in lines
    )


def jobs_table(jobs: Iterable[Job]) -> str:
    headers = ("ID", "STATUS", "PHASE", "PROGRESS", "CREATED", "SIZE")
    rows = [
        (
            job.id,
            job.status,
            (job.progress.phase or "-") if job.progress else "-",
            _percent(job),
            _time(job.created_at),
            _size(job),
        )
        for job in jobs
    ]
    return format_table(rows, headers)


def job_details(job: Job) -> str:
    request = job.request or {}
    pairs: list[tuple[str, str]] = [
        ("id", job.id),
        ("status", job.status),
    ]
    if job.progress is not None and not job.is_finished:
        progress = f"{job.progress.phase or '-'} {job.progress.fraction * 100:.0f}%"
        if job.progress.message:
            progress += f"  {job.progress.message}"
        pairs.append(("progress", progress))
    pairs += [
        ("dataset", str(request.get("dataset_uri", "-"))),
        ("budget", _budget(job)),
        ("method", str(request.get("method", "-"))),
        ("created", _time(job.created_at)),
        ("started", _time(job.started_at)),
        ("finished", _time(job.finished_at)),
    ]
    if job.result is not None:
        pairs += [
            ("size", _size(job)),
            ("coreset", job.result.coreset_uri),
            ("manifest", job.result.manifest_uri),
        ]
    if job.error is not None:
        pairs.append(("error", f"{job.error.code}: {job.error.message}"))
    width = max(len(key) for key, _ in pairs)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in pairs)


def _echo_job(job: Job, as_json: bool) -> None:
    if as_json:
        click.echo(job.model_dump_json(indent=2))
    else:
        click.echo(job_details(job))


def _column_names(values: tuple[str, ...], *, in_order: bool = False) -> list[str] | None:
    """Column names given repeated, comma-separated or both (None: none given). Names
    ``in_order`` keep an empty one (but a trailing comma's), which the service refuses: it
    would shift the names after it."""
    names = []
    for value in values:
        items = [name.strip() for name in value.split(",")]
        if len(items) > 1 and not items[-1]:
            items.pop()
        names += items if in_order else [name for name in items if name]
    return names or None


def _parse_option(text: str) -> tuple[str, Any]:
    key, separator, raw = text.partition("=")
    key = key.strip()
    if not separator or not key:
        raise click.BadParameter(f"expected key=value, got {text!r}", param_hint="--option")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


_json_option = click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
_progress_option = click.option(
    "--progress/--no-progress",
    default=None,
    help="Show progress on stderr [default: a bar on a terminal, plain lines otherwise].",
)
_timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Give up waiting after this long (exit 6) [default: no limit].",
)
_poll_option = click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between polls.",
)


# --- commands -----------------------------------------------------------------------------


@main.command(cls=NacsCommand)
@click.argument("dataset_uri")
@click.option("--ratio", type=float, help="Budget as a fraction of the rows, in (0, 1).")
@click.option("--size", type=int, help="Budget as a number of rows.")
@click.option("--method", help="nacs (default) or a baseline: random, stratified, balanced.")
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An engine option, repeatable (values are JSON: --option rounds=3 "
    "--option backbone=dcnv2).",
)
@click.option("--label-column", help="The label column [default: label].")
@click.option(
    "--feature-column",
    "--feature-columns",
    "feature_columns",
    multiple=True,
    help="Feature columns, repeated or comma-separated.",
)
@click.option(
    "--numeric-column",
    "--numeric-columns",
    "numeric_columns",
    multiple=True,
    help="Numeric columns, repeated or comma-separated.",
)
@click.option(
    "--no-numeric-detection",
    "no_numeric_detection",
    is_flag=True,
    help="With no --numeric-column: every column is a category (by default columns of numbers "
    "with a fraction and of dates are numeric).",
)
@click.option(
    "--format", "data_format", help="parquet, csv, tsv, jsonl or criteo [default: from the URI]."
)
@click.option(
    "--column-name",
    "--column-names",
    "column_names",
    multiple=True,
    help="For a CSV or TSV file without a header line: its columns' names in order; for JSON "
    "Lines: the keys to read. Repeated or comma-separated.",
)
@click.option("--output-uri", help="Where to write the result [default: your prefix].")
@click.option("--idempotency-key", help="Reuse a key to make resubmitting safe.")
@click.option("--wait", "wait", is_flag=True, help="Wait for the job to end (exit 1 if it fails).")
@_timeout_option
@_poll_option
@_progress_option
@_json_option
@click.pass_obj
def submit(
    state: CliState,
    dataset_uri: str,
    ratio: float | None,
    size: int | None,
    method: str | None,
    options: tuple[str, ...],
    label_column: str | None,
    feature_columns: tuple[str, ...],
    numeric_columns: tuple[str, ...],
    no_numeric_detection: bool,
    data_format: str | None,
    column_names: tuple[str, ...],
    output_uri: str | None,
    idempotency_key: str | None,
    wait: bool,
    timeout: float | None,
    poll_interval: float,
    progress: bool | None,
    as_json: bool,
) -> None:
    """Submit a selection job on DATASET_URI.

    Give exactly one of --ratio and --size. Prints the job id, or with --wait
    the finished job (exit 1 if it failed or was cancelled).
    """
    if (ratio is None) == (size is None):
        raise click.UsageError("give exactly one budget: --ratio R or --size N")
    parsed_options = dict(_parse_option(text) for text in options)
    client = state.client()
    job = client.jobs.create(
        dataset_uri,
        ratio=ratio,
        size=size,
        method=method,
        options=parsed_options or None,
        label_column=label_column,
        feature_columns=_column_names(feature_columns),
        numeric_columns=_column_names(numeric_columns),
        numeric_detection=False if no_numeric_detection else None,
        column_names=_column_names(column_names, in_order=True),
        format=data_format,
        output_uri=output_uri,
        idempotency_key=idempotency_key,
    )
    if not wait:
        if as_json:
            _echo_job(job, True)
        else:
            click.echo(job.id)
        return
    finished = _wait(client, job.id, timeout, poll_interval, progress, as_json)
    _echo_job(finished, as_json)


def _wait(
    client: Client,
    job_id: str,
    timeout: float | None,
    poll_interval: float,
    progress: bool | None,
    as_json: bool,
) -> Job:
    """Wait for the job; on failure print the job (stdout) before the error line (stderr)."""
    try:
        return client.jobs.wait(
            job_id, timeout=timeout, poll_interval=poll_interval, progress=cli_progress(progress)
        )
    except (JobFailedError, JobCancelledError, WaitTimeoutError) as error:
        _echo_job(error.job, as_json)
        raise


@main.command(cls=NacsCommand)
@click.argument("job_id")
@_json_option
@click.pass_obj
def status(state: CliState, job_id: str, as_json: bool) -> None:
    """Show a job: status, progress, budget, times, result or error."""
    _echo_job(state.client().jobs.get(job_id), as_json)


@main.command(name="wait", cls=NacsCommand)
@click.argument("job_id")
@_timeout_option
@_poll_option
@_progress_option
@_json_option
@click.pass_obj
def wait_command(
    state: CliState,
    job_id: str,
    timeout: float | None,
    poll_interval: float,
    progress: bool | None,
    as_json: bool,
) -> None:
    """Wait for a job to end.

    Exit 0 if it succeeded, 1 if it failed or was cancelled, 6 on timeout.
    """
    _echo_job(_wait(state.client(), job_id, timeout, poll_interval, progress, as_json), as_json)


@main.command(name="jobs", cls=NacsCommand)
@click.option(
    "--status",
    "status_filter",
    type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]),
    help="Only jobs with this status.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Show at most this many jobs.",
)
@click.option("--all", "show_all", is_flag=True, help="Show every job (ignores --limit).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@click.pass_obj
def jobs_command(
    state: CliState, status_filter: str | None, limit: int, show_all: bool, as_json: bool
) -> None:
    """List your jobs as a table, newest first.

    Columns: id, status, phase, progress, created (UTC), size (rows selected).
    """
    jobs = state.client().jobs.list(
        status=status_filter, limit=None if show_all else min(limit, 100)
    )
    selected = list(jobs if show_all else islice(jobs, limit))
    if as_json:
        for job in selected:
            click.echo(job.model_dump_json())
        return
    if not selected:
        click.echo("no jobs", err=True)
        return
    click.echo(jobs_table(selected))


@main.command(cls=NacsCommand)
@click.argument("job_id")
@_json_option
@click.pass_obj
def cancel(state: CliState, job_id: str, as_json: bool) -> None:
    """Cancel a queued or running job.

    A queued job is cancelled at once; a running one stops within seconds
    (follow it with nacs wait, which then exits 1).
    """
    job = state.client().jobs.cancel(job_id)
    if as_json:
        _echo_job(job, True)
    else:
        note = "" if job.is_finished else "  (cancel requested: it stops within seconds)"
        click.echo(f"{job.id}  {job.status}{note}")


@main.command(cls=NacsCommand)
@click.argument("job_id")
@click.option(
    "--out", "out", type=click.Path(dir_okay=False, writable=True), default=None,
    help="Write the report to FILE [default: print it, or with --open a temporary file].",
)
@click.option("--open", "open_it", is_flag=True, help="Open the report in a web browser.")
@click.pass_obj
def report(state: CliState, job_id: str, out: str | None, open_it: bool) -> None:
    """Fetch a succeeded job's report: one HTML page with its plots inline (no script).

    Prints the HTML, writes it to --out, or opens it in a browser with --open.
    """
    page = state.client().jobs.report(job_id)
    if out is None and not open_it:
        click.echo(page, nl=False)
        return
    if out is None:
        folder = tempfile.mkdtemp(prefix="nacs-report-")
        out = os.path.join(folder, f"report-{job_id}.html")
    path = Path(out).resolve()
    path.write_text(page, encoding="utf-8")
    click.echo(str(path))
    if open_it and not webbrowser.open(path.as_uri()):
        click.echo(f"no browser could be started; open {path.as_uri()}", err=True)


@main.command(cls=NacsCommand)
@click.argument("job_id")
@click.argument("directory", type=click.Path(file_okay=False, writable=True))
@click.pass_obj
def download(state: CliState, job_id: str, directory: str) -> None:
    """Copy a job's result files into DIRECTORY.

    Writes DIRECTORY/coreset.parquet and DIRECTORY/manifest.json of a succeeded job.
    """
    files = state.client().jobs.download(job_id, directory)
    click.echo(str(files.coreset_path))
    click.echo(str(files.manifest_path))
