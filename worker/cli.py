"""The worker's commands: ``nacs worker``, and the engine commands that need no server,
``nacs select`` and ``nacs evaluate``.

``nacs select`` runs the same code as a job (``worker.tasks.execute``) and
writes ``coreset.parquet``, the report and ``manifest.json`` to a folder or any fsspec URI.
``nacs evaluate`` splits one dataset into train, validation and test rows, anew for each
seed, and prints how a model trained on each method's coreset scores against full data,
for every evaluator family asked for (each coreset is selected once).

Exit codes follow the ``nacs`` command's table: 0 success, 1 the data or the
selection failed, 2 a usage error (an ``--out`` that cannot take the result among them),
7 any other error (a store's or a library's), 130 interrupted. Errors are one line on
stderr; ``NACS_DEBUG=1`` adds the traceback of an error of the last kind.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, NoReturn, TextIO

import click
import pydantic

from worker.settings import SharedSettings, settings_problem

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_OTHER = 7
EXIT_INTERRUPTED = 130
# At most one progress line a minute within a phase when stderr is not a terminal.
PROGRESS_LINE_SECONDS = 60.0


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON when they parse, else as strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="--option")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


def _split_columns(values: tuple[str, ...], *, in_order: bool = False) -> list[str] | None:
    """Column names given comma-separated, repeated, or both (None: none given). Names
    ``in_order`` keep an empty one (but a trailing comma's), which the request refuses: it
    would shift the names after it."""
    names = []
    for value in values:
        items = [name.strip() for name in value.split(",")]
        if len(items) > 1 and not items[-1]:
            items.pop()
        names += items if in_order else [name for name in items if name]
    return names or None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else "no message"


def _output_problem(dataset: str, output: str) -> str | None:
    """Why a local ``--out`` cannot take the result (checked before the selection, which may
    take hours), or None: a file, a folder this user cannot write, a folder that is, lies in
    or holds the dataset's own folder (its files would join the data), or the folder of a
    dataset file named like a result file (the result would replace it)."""
    from worker.local_files import local_path
    from worker.outputs import CORESET_FILE, MANIFEST_FILE, REPORT_HTML, REPORT_JSON
    from worker.storage import normalise_uri, scheme_of

    target = normalise_uri(output)
    if scheme_of(target) != "file":
        return None
    path = os.path.realpath(local_path(target))
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{output} is a file, expected a folder"
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        return f"{output}: {existing} is not a folder this user can write to"
    source = normalise_uri(dataset)
    if scheme_of(source) == "file":
        data = os.path.realpath(local_path(source))
        if os.path.isdir(data) and os.path.commonpath([path, data]) in (data, path):
            return f"{output} is, lies in or holds the dataset's folder {dataset}"
        results = (CORESET_FILE, MANIFEST_FILE, REPORT_HTML, REPORT_JSON)
        if os.path.dirname(data) == path and os.path.basename(data) in results:
            return f"{output} would take the place of the dataset {dataset} with a result file"
    return None


def _earlier_result(output: str) -> str | None:
    """What the result already in ``output`` was selected from (its manifest's dataset and
    time), or None when the folder holds none or it cannot be read."""
    from worker.outputs import MANIFEST_FILE
    from worker.settings import SharedSettings
    from worker.storage import join_uri, normalise_uri, read_bytes

    try:
        manifest = json.loads(
            read_bytes(join_uri(normalise_uri(output), MANIFEST_FILE), SharedSettings())
        )
        return f"{manifest['dataset']['uri']}, {manifest['created_at']}"
    except Exception:  # noqa: BLE001 - no result there, or not one of ours: nothing to say
        return None


def _notes(manifest: Any) -> list[str]:
    """What a user of the coreset should know that the counts do not say."""
    notes = []
    teacher = (manifest.diagnostics or {}).get("teacher") or {}
    if teacher.get("trusted") is False:
        signal, floor = teacher.get("signal_auc") or 0.0, teacher.get("min_signal_auc") or 0.0
        notes.append(
            f"the proxy models rank these rows no better than AUC {signal:.3f}"
            f" (under {floor:.3f}): nothing was set aside, the labels "
            "are the given ones and the rows a stratified random draw; the noise estimates do "
            "not apply"
        )
    elif (manifest.noise or {}).get("narrow_trust"):
        from worker.report import NARROW_TRUST_ADVICE

        signal = teacher.get("signal_auc") or 0.0
        notes.append(
            f"the proxy models were trusted narrowly: their AUC on the given labels, {signal:.3f}, "
            f"is {teacher.get('signal_standard_errors') or 0.0:.1f} standard errors of a chance "
            "AUC from 0.5, and more than half of the given clicks or non-clicks were set aside "
            f"on their word; {NARROW_TRUST_ADVICE}"
        )
    audit = manifest.audit or {}
    more = _more_teacher_epochs(teacher) if audit.get("verdict") == "worse" else None
    if more is not None:
        cap, epochs = more
        fallback = (
            ""
            if audit.get("guard") == "fallback"
            else ", or --option guard=fallback delivers the best of the coreset, a random "
            "subset and their mixture"
        )
        notes.append(
            "the audit reads the coreset as worse than a random subset, and most of the "
            f"teacher's fold models were still improving at their last allowed epoch ({cap}): a "
            f"longer-trained teacher may do better (--option teacher_epochs={epochs}, up to "
            f"about {epochs / cap:.0f} times the teacher's training time){fallback}"
        )
    selection = (manifest.diagnostics or {}).get("selection") or {}
    if selection.get("class_balance") == "balanced":
        notes.append(
            "up to half the coreset's rows are clicks (class_balance balanced"
            + (", as auto takes where clicks are rare" if _asked_auto(manifest) else "")
            + "): train with its weights, which bring the clicks back to the data's rate"
        )
    if manifest.coreset.rows and manifest.coreset.clicks == 0:
        notes.append("the coreset holds no given click: a model cannot learn clicks from it alone")
    data = manifest.dataset
    if data.label_values == "-1/1":
        notes.append(
            "the labels are written -1/1: -1 is read as a non-click, and the coreset's label "
            "column holds 0 for it"
        )
    return notes + _field_notes(
        data.fields, data.field_dims, data.whole_number_columns, data.unread_keys,
        data.unread_key_count,
    )


def _weighted(coreset: Any) -> str:
    """", R under the weights": the soft labels' click rate under the coreset's weights, where
    the weights move it (a balanced coreset), else ""."""
    weighted = coreset.weighted_soft_label_mean
    if weighted is None or abs(weighted - coreset.soft_label_mean) < 0.0005:
        return ""
    return f", {weighted:.3f} under the weights"


def _set_aside_line(noise: dict[str, Any]) -> str:
    """The rows set aside as likely wrong labels, per class, and the flip rate they follow,
    in a line; empty when none were."""
    rows = noise.get("set_aside_rows") or 0
    if not rows:
        return ""
    return (
        f"set aside: {rows:,} rows as likely wrong labels ({noise.get('set_aside_positive', 0):,}"
        f" given clicks, {noise.get('set_aside_negative', 0):,} non-clicks) at a flip rate read "
        f"as {noise.get('set_aside_flip_rate', 0.0):.3f}; where no row is a sure non-click, "
        "that rate can be uncertainty rather than noise (--option set_aside_factor=0 sets none "
        "aside)"
    )


def _asked_auto(manifest: Any) -> bool:
    """Whether the request left the class mix to ``class_balance="auto"``."""
    options = (manifest.request or {}).get("options") or {}
    return options.get("class_balance", "auto") == "auto"


def _audit_line(audit: dict[str, Any]) -> str:
    """The audit's verdict and each family's AUC difference from random, in a line."""
    if "verdict" not in audit:
        return f"audit: none ({audit['skipped']})" if audit.get("skipped") else ""
    families = ", ".join(
        f"{family} {entry['auc_difference']:+.4f} ± {entry['auc_difference_se']:.4f}"
        for family, entry in (audit.get("families") or {}).items()
    )
    delivered = audit.get("delivered", "coreset")
    line = f"audit: {audit['verdict']} (AUC of models on the coreset less on random: {families})"
    return line + (f"; delivered the {delivered}" if delivered != "coreset" else "")


def _more_teacher_epochs(teacher: dict[str, Any]) -> tuple[int, int] | None:
    """(the cap, the teacher_epochs to try: five times the cap, at most ``MAX_EPOCHS``) when
    most of the teacher's folds kept their last allowed epoch, still improving when it came,
    and a higher cap is possible; else None. A cap of one epoch says nothing of whether the
    models were still improving."""
    from nacs_engine.teacher import MAX_EPOCHS

    best, caps = teacher.get("best_epochs") or [], teacher.get("max_epochs") or []
    reached = [cap for epoch, cap in zip(best, caps, strict=False) if epoch >= cap >= 2]
    if not caps or 2 * len(reached) <= len(caps) or max(reached) >= MAX_EPOCHS:
        return None
    cap = max(reached)
    return cap, min(MAX_EPOCHS, 5 * cap)


def _field_notes(
    fields: Any, field_dims: Any, whole_numbers: Any = (), unread_keys: Any = None,
    unread_key_count: int = 0,
) -> list[str]:
    """Notes on the fields of which no value is seen often enough to count, on the
    floating-point columns of many whole numbers read as categories, and on the JSON Lines
    keys that are not read."""
    notes = []
    if unread_keys:
        keys = ", ".join(
            f"{key} (from line {where['line']:,}"
            + (f" of {where['file']})" if "file" in where else ")")
            for key, where in unread_keys.items()
        )
        more = unread_key_count - len(unread_keys)
        if more > 0:
            keys += f" and {more:,} more key{'s' if more > 1 else ''}"
        them = "them" if max(unread_key_count, len(unread_keys)) > 1 else "it"
        notes.append(
            f"{keys}: not read, because the columns of JSON Lines are the keys of the first "
            f"megabyte of the first file; to read {them}, name every key to read (the label too) "
            "in column_names (--column-names), or write every key in the first lines (null where "
            "a row has no value)"
        )
    rare = [name for name, dim in zip(fields, field_dims, strict=False) if dim <= 1]
    if rare:
        notes.append(
            f"no value of {', '.join(rare)} is seen often enough to count (min_count): the "
            "field tells the models nothing; leave an id out (--feature-columns), name a number "
            "column in --numeric-columns (with every other numeric column: named columns "
            "replace the detection of float columns)"
        )
    if whole_numbers:
        notes.append(
            f"{', '.join(whole_numbers)}: floating-point, whole numbers only, read as "
            "categories (ids are); if they are counts or amounts, name them in "
            "--numeric-columns (with every other numeric column) to bucket them as numbers"
        )
    return notes


def _quiet_libraries() -> None:
    """Keep the storage libraries' own log lines (gcsfs logs its retries with tracebacks) out
    of the one-line errors, unless ``NACS_DEBUG`` is set."""
    if _debug():
        return
    import logging

    for name in ("gcsfs", "s3fs", "fsspec", "aiohttp", "botocore", "urllib3", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _debug() -> bool:
    return os.environ.get("NACS_DEBUG", "").strip() not in ("", "0")


def _unexpected(error: Exception) -> None:
    """An error of no known kind: one line, and with ``NACS_DEBUG=1`` its traceback."""
    if _debug():
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    _fail(f"{type(error).__name__}: {_first_line(error)}", EXIT_OTHER)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _validation_message(error: pydantic.ValidationError) -> str:
    parts = []
    for detail in error.errors():
        # a check of the whole request names its fields in its message
        where = ".".join(str(part) for part in detail["loc"])
        message = str(detail["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


@contextmanager
def _progress_bar(enabled: bool, terminal: bool) -> Iterator[Any]:
    """A progress callback on stderr: on a terminal one bar per phase, elsewhere (a log, a
    pipe) a line when a phase begins and at most one a minute within it; nothing when
    disabled."""
    if not enabled:
        yield lambda phase, fraction, message: None
        return
    if not terminal:
        printed: dict[str, float] = {}  # when each phase's last line was printed

        def line(phase: str, fraction: float, message: str) -> None:
            # a phase that resumes (selecting after the set-aside within it) is not new
            now = time.monotonic()
            if now - printed.get(phase, -math.inf) >= PROGRESS_LINE_SECONDS:
                printed[phase] = now
                percent = round(100 * min(max(fraction, 0.0), 1.0))
                click.echo(f"{phase}: {percent}% {message}", err=True)

        yield line
        return
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def report(phase: str, fraction: float, message: str) -> None:
        bar = bars.get(phase)
        if bar is None:
            for other in bars.values():
                other.close()
            desc = f"{phase:<10}"
            bar = bars[phase] = tqdm(total=100, desc=desc, unit="%", file=sys.stderr, leave=True)
        bar.n = round(100 * min(max(fraction, 0.0), 1.0), 1)
        bar.set_postfix_str(message[:60], refresh=True)

    try:
        yield report
    finally:
        for bar in bars.values():
            bar.close()


def _print_row(to_stdout: bool, out: TextIO | None, row: dict[str, Any]) -> None:
    """One run's row of ``nacs evaluate`` as a JSON line: on stdout, in ``out``, or both."""
    line = json.dumps(row, default=float)
    if to_stdout:
        click.echo(line)
    if out is not None:
        out.write(line + "\n")
        out.flush()


def _nacs_seeds(rows: list[dict[str, Any]], flagged: Callable[[dict[str, Any]], bool]) -> str:
    """"N of T seeds (seed(s) a, b": the seeds whose nacs runs are ``flagged``; "" for none."""
    seeds = sorted({row["seed"] for row in rows if row.get("method") == "nacs" and flagged(row)})
    if not seeds:
        return ""
    total = len({row["seed"] for row in rows})
    listed = ", ".join(str(seed) for seed in seeds)
    return f"{len(seeds)} of {total} seeds (seed{'s' if len(seeds) > 1 else ''} {listed}"


def _untrusted_note(rows: list[dict[str, Any]]) -> str | None:
    """A note naming the runs of nacs whose teacher was not trusted, if any: there nacs
    drew its rows at random, which the tables do not show."""
    seeds = _nacs_seeds(rows, lambda row: row.get("teacher_trusted") is False)
    if not seeds:
        return None
    return (
        f"the teacher was not trusted on {seeds}, counted from 0 as in --json): its "
        "out-of-fold AUC on the given labels was within what chance reaches on data this size, "
        "or under min_teacher_auc, so there nacs set nothing aside, kept the given labels and "
        "drew its rows at random, as denoised-random does"
    )


def _narrow_note(rows: list[dict[str, Any]]) -> str | None:
    """A note naming the seeds of nacs whose teacher was trusted narrowly at one budget or
    more, if any: there the set-aside acted on weak evidence, which has helped on some data
    and hurt on other."""
    seeds = _nacs_seeds(rows, lambda row: bool(row.get("narrow_trust")))
    if not seeds:
        return None
    return (
        f"the teacher was trusted narrowly on {seeds}, counted from 0 as in --json): its "
        "out-of-fold AUC on the given labels was less than three standard errors of a chance "
        "AUC above 0.5, and more than half of the given clicks or non-clicks were set aside "
        "(at one budget or more); compare nacs there with stratified, which draws as an "
        "untrusted teacher would"
    )


def _run_lines(parts: int) -> Any:
    """A progress callback line(part, done, total, message) for ``parts`` calls of
    ``compare_methods`` of equal size, one after the other: a line on stderr as each run
    ends, counted over all of them."""
    printed = [0]

    def line(part: int, done: int, total: int, message: str) -> None:
        done += part * total
        if done > printed[0]:
            printed[0] = done
            click.echo(f"[{done}/{total * parts}] {message}", err=True)

    return line


def _check_split(data: Any, split: tuple[Any, Any, Any], seed: int) -> None:
    """A DataError where the training, validation or test rows of ``split`` (positions in
    ``data``, split with ``seed``) hold one class only."""
    from nacs_engine.errors import DataError

    for part, positions in zip(("training", "validation", "test"), split, strict=True):
        clicks = int(data.labels[positions].sum(dtype="float64"))
        if clicks in (0, positions.shape[0]):
            raise DataError(
                "too_few_clicks",
                f"the {part} rows ({positions.shape[0]:,} of {data.n_rows:,}; split seed "
                f"{seed}) hold "
                f"{'no click' if clicks == 0 else 'no non-click'}; an evaluation needs "
                f"both in each split (the data holds {data.n_clicks:,} "
                f"{'click' if data.n_clicks == 1 else 'clicks'})",
            )


def _budget_and_request(
    dataset: str,
    ratio: float | None,
    size: int | None,
    method: str,
    options: tuple[str, ...],
    label_column: str,
    feature_columns: tuple[str, ...],
    numeric_columns: tuple[str, ...],
    numeric_detection: bool,
    data_format: str | None,
    column_names: tuple[str, ...],
) -> Any:
    from worker.spec import JobRequest

    if "://" not in dataset and dataset.strip():
        # a relative path means nothing to whoever reads the manifest elsewhere
        dataset = os.path.abspath(os.path.expanduser(dataset))
    body: dict[str, Any] = {
        "dataset_uri": dataset,
        "method": method,
        "label_column": label_column,
        "options": _parse_options(options),
        "ratio": ratio,
        "size": size,
        "format": data_format,
    }
    for name, given in (("feature_columns", feature_columns), ("numeric_columns", numeric_columns)):
        columns = _split_columns(given)
        if columns:
            body[name] = columns
    if column_names:
        body["column_names"] = _split_columns(column_names, in_order=True)
    if not numeric_detection:
        body["numeric_detection"] = False
    try:
        request = JobRequest.model_validate(body)
    except pydantic.ValidationError as error:
        _fail(_validation_message(error), EXIT_USAGE)
    problem = request.submit_problem()
    if problem:
        _fail(problem[1], EXIT_USAGE)
    return request


_data_options = [
    click.option(
        "--option",
        "options",
        multiple=True,
        metavar="KEY=VALUE",
        help="A selection option, e.g. --option rounds=3 --option class_balance=balanced "
        "(repeatable).",
    ),
    click.option("--label-column", default="label", show_default=True),
    click.option(
        "--feature-columns",
        "--feature-column",
        "feature_columns",
        multiple=True,
        help="Comma-separated or repeated; default: all but the label.",
    ),
    click.option(
        "--numeric-columns",
        "--numeric-column",
        "numeric_columns",
        multiple=True,
        help="Columns to bucket as numbers, comma-separated or repeated; by default those of "
        "numbers with a fraction and of dates.",
    ),
    click.option(
        "--numeric-detection/--no-numeric-detection",
        default=True,
        show_default=True,
        help="With no --numeric-columns: read columns of numbers with a fraction and of dates "
        "as numeric (else every column is a category).",
    ),
    click.option(
        "--format",
        "data_format",
        default=None,
        type=click.Choice(["parquet", "csv", "tsv", "jsonl", "criteo"]),
        help="Data format; default: from the file name.",
    ),
    click.option(
        "--column-names",
        "--column-name",
        "column_names",
        multiple=True,
        help="For a CSV or TSV file without a header line: its columns' names, in order; for "
        "JSON Lines: the keys to read. Comma-separated or repeated.",
    ),
]


def _with_data_options(command: Any) -> Any:
    for option in reversed(_data_options):
        command = option(command)
    return command


@click.command(name="worker")
@click.option("--burst", is_flag=True, help="Stop when the queue is empty.")
@click.option("--queue", default=None, help="Queue to work (default NACS_QUEUE).")
@click.option(
    "--no-fork",
    is_flag=True,
    help="Run jobs in this process (GPU hosts keeping one CUDA context); "
    "by default a child runs each job.",
)
@click.option("--name", default=None, help="Worker name shown by RQ.")
def worker(burst: bool, queue: str | None, no_fork: bool, name: str | None) -> None:
    """Work selection jobs from the queue, and reap jobs whose worker died."""
    import logging

    from worker.runner import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = SharedSettings()
    except pydantic.ValidationError as error:
        raise click.ClickException(settings_problem(error)) from None
    if queue:
        settings = settings.model_copy(update={"queue": queue})
    run_worker(settings, burst=burst, fork=not no_fork, name=name)


@click.command(name="select")
@click.argument("dataset")
@click.option("--ratio", type=float, default=None, help="Budget: a fraction of the rows in (0, 1).")
@click.option("--size", type=int, default=None, help="Budget as a number of rows.")
@click.option(
    "--out", "output", required=True, help="Output folder or URI for coreset.parquet etc."
)
@click.option("--method", default="nacs", show_default=True, help="nacs, an ablation or baseline.")
@_with_data_options
@click.option("--quiet", is_flag=True, help="No progress (a bar, or lines when not a terminal).")
def select(
    dataset: str,
    ratio: float | None,
    size: int | None,
    output: str,
    method: str,
    options: tuple[str, ...],
    label_column: str,
    feature_columns: tuple[str, ...],
    numeric_columns: tuple[str, ...],
    numeric_detection: bool,
    data_format: str | None,
    column_names: tuple[str, ...],
    quiet: bool,
) -> None:
    """Select a coreset of DATASET locally and write it to --out.

    Give exactly one of --ratio and --size."""
    from nacs_engine.errors import DataError
    from worker.errors import JobFailed
    from worker.outputs import REPORT_HTML
    from worker.storage import join_uri
    from worker.tasks import execute

    if (ratio is None) == (size is None):
        _fail(
            "give exactly one budget: --ratio R (a fraction of the rows, e.g. 0.01) or "
            "--size N (rows)",
            EXIT_USAGE,
        )
    _quiet_libraries()
    request = _budget_and_request(
        dataset,
        ratio,
        size,
        method,
        options,
        label_column,
        feature_columns,
        numeric_columns,
        numeric_detection,
        data_format,
        column_names,
    )
    problem = _output_problem(dataset, output)
    if problem:
        _fail(f"--out: {problem}", EXIT_USAGE)
    earlier = _earlier_result(output)
    job_id = f"local-{uuid.uuid4().hex[:12]}"
    try:
        with _progress_bar(not quiet, sys.stderr.isatty()) as report:
            manifest = execute(request, output, job_id=job_id, progress=report)
    except DataError as error:
        _fail(f"{error.code}: {error.message}", EXIT_FAILED)
    except JobFailed as error:
        _fail(f"{error.code}: {error.message}", EXIT_FAILED)
    except ValueError as error:
        _fail(str(error), EXIT_USAGE)
    except KeyboardInterrupt:
        _fail("interrupted; what this run had written is removed", EXIT_INTERRUPTED)
    except Exception as error:  # noqa: BLE001 - a store's or a library's own error, in one line
        _unexpected(error)
    coreset, data = manifest.coreset, manifest.dataset
    seconds = ", ".join(f"{phase} {value:.1f} s" for phase, value in manifest.phase_seconds.items())
    click.echo(f"coreset:  {coreset.uri}")
    click.echo(f"report:   {join_uri(manifest.output_uri, REPORT_HTML)}")
    click.echo(f"manifest: {manifest.manifest_uri}")
    click.echo(
        f"{coreset.rows} of {data.rows} rows "
        f"(click rate {coreset.clicks / max(coreset.rows, 1):.3f} in the given labels, "
        f"{coreset.soft_label_mean:.3f} in the soft labels{_weighted(coreset)}; data "
        f"{data.clicks / max(data.rows, 1):.3f}); {seconds}"
    )
    for line in (_set_aside_line(manifest.noise or {}), _audit_line(manifest.audit or {})):
        if line:
            click.echo(line)
    if earlier is not None:
        click.echo(f"note: replaced the earlier result in {output} (of {earlier})", err=True)
    for note in _notes(manifest):
        click.echo(f"note: {note}", err=True)


@click.command(name="evaluate")
@click.argument("dataset")
@click.option(
    "--ratio",
    "ratios",
    type=float,
    multiple=True,
    help="Budget(s) as fractions of the training rows (repeatable); default: 0.01 and 0.05.",
)
@click.option(
    "--methods",
    default="nacs,denoised-random,random,stratified,balanced,full",
    show_default=True,
    help="Comma-separated methods; 'full' trains on all training rows; denoised-random is "
    "NaCS's set-aside and soft labels on rows drawn at random (what the selection adds).",
)
@click.option(
    "--seeds",
    default=5,
    show_default=True,
    type=click.IntRange(1, 50),
    help="Seeds per method; each seed splits the data anew (split seed: the options' seed "
    "plus the run's).",
)
@click.option(
    "--flip-rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0.0, 1.0, max_open=True),
    help="Share of training labels changed before selection (test labels stay clean); "
    "see --noise-kind.",
)
@click.option(
    "--noise-kind",
    default=None,
    help="symmetric (the default): flip that share of all training labels (below 0.5; with "
    "rare clicks most given clicks are then flips); clicks-to-non-clicks: turn that share of "
    "the training clicks into non-clicks. Needs --flip-rate.",
)
@click.option(
    "--evaluators",
    default=None,
    help="Comma-separated evaluator families that score each coreset: deepfm, dcnv2, logistic "
    "(default: the selection's backbone and logistic regression, a model of another family).",
)
@click.option(
    "--monitor",
    type=click.Choice(["auc", "log_loss"]),
    default="auc",
    show_default=True,
    help="Validation metric that early-stops each fresh model.",
)
@_with_data_options
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the per-run rows as JSON lines, each as its run ends, not the tables.",
)
@click.option(
    "--json-out",
    "json_out",
    type=click.File("w", lazy=False),
    default=None,
    metavar="PATH",
    help="Also write the per-run rows as JSON lines to PATH, each as its run ends; the "
    "tables still print.",
)
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
def evaluate(
    dataset: str,
    ratios: tuple[float, ...],
    methods: str,
    seeds: int,
    flip_rate: float,
    noise_kind: str | None,
    evaluators: str | None,
    monitor: str,
    options: tuple[str, ...],
    label_column: str,
    feature_columns: tuple[str, ...],
    numeric_columns: tuple[str, ...],
    numeric_detection: bool,
    data_format: str | None,
    column_names: tuple[str, ...],
    as_json: bool,
    json_out: TextIO | None,
    quiet: bool,
) -> None:
    """Compare methods on DATASET: test AUC and log loss of models trained on each coreset."""
    from nacs_engine.compare import compare_methods, difference_tables, format_table, summarise
    from nacs_engine.data import load_dataset
    from nacs_engine.errors import DataError
    from nacs_engine.evaluate import EvaluationOptions, split_rows
    from worker.tasks import encoder_numeric_columns

    budgets = ratios or (0.01, 0.05)
    flip_rate_given = (
        click.get_current_context().get_parameter_source("flip_rate")
        is not click.core.ParameterSource.DEFAULT
    )
    if noise_kind is not None and not flip_rate_given:
        _fail(
            f"--noise-kind {noise_kind} changes no label without --flip-rate (the share of "
            "labels to change, e.g. --flip-rate 0.2)",
            EXIT_USAGE,
        )
    _quiet_libraries()
    request = _budget_and_request(
        dataset,
        budgets[0],
        None,
        "nacs",
        options,
        label_column,
        feature_columns,
        numeric_columns,
        numeric_detection,
        data_format,
        column_names,
    )
    selection_options = request.options.model_dump()
    try:
        data = load_dataset(
            request.dataset_uri,
            label_column=request.label_column,
            feature_columns=request.feature_columns,
            numeric_columns=encoder_numeric_columns(request),
            format=request.format,
            column_names=request.column_names,
            min_count=selection_options["min_count"],
        )
        whole_numbers = data.metadata.get("whole_number_columns", [])
        unread = data.metadata.get("unread_keys", {})
        count = data.metadata.get("unread_key_count", 0)
        fields, dims = data.field_names, data.field_dims
        for note in _field_notes(fields, dims, whole_numbers, unread, count):
            click.echo(f"note: {note}", err=True)
        # Each seed its own split (the options' seed plus the run's), so that the paired
        # differences carry the test rows' sampling too.
        splits = []
        for seed in range(seeds):
            split_seed = selection_options["seed"] + seed
            splits.append(split_rows(data.n_rows, seed=split_seed))
            _check_split(data, splits[-1], split_seed)
        run = partial(
            compare_methods,
            methods=[name.strip() for name in methods.split(",") if name.strip()],
            budgets=list(budgets),
            selection_options=selection_options,
            evaluation_options=EvaluationOptions(
                backbone=selection_options["backbone"], monitor=monitor
            ),
            evaluators=[name.strip() for name in evaluators.split(",") if name.strip()]
            if evaluators
            else [selection_options["backbone"], "logistic"],
            noise_kind=noise_kind or "symmetric",
            flip_rate=flip_rate,
            dataset_name=request.dataset_uri.rstrip("/").rsplit("/", 1)[-1],
            # each row as its run ends: an interrupted or failed run keeps what it printed
            on_row=partial(_print_row, as_json, json_out) if as_json or json_out else None,
        )
        lines = None if quiet else _run_lines(seeds)
        rows = []
        for seed, split in enumerate(splits):
            rows += run(
                *(data.subset(positions) for positions in split),
                seeds=[seed],
                progress=None if lines is None else partial(lines, seed),
            )
    except DataError as error:
        _fail(f"{error.code}: {error.message}", EXIT_FAILED)
    except ValueError as error:
        _fail(str(error), EXIT_USAGE)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)
    except Exception as error:  # noqa: BLE001 - a store's or a library's own error, in one line
        _unexpected(error)
    if not as_json:
        click.echo(format_table(summarise(rows)))
        differences = difference_tables(rows)
        if differences:
            click.echo("\n" + differences)
        for seeds_note in (_untrusted_note(rows), _narrow_note(rows)):
            if seeds_note:
                click.echo(f"\nnote: {seeds_note}")
