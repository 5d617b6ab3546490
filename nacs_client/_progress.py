"""The progress shown while waiting for a job: a tqdm bar on a terminal, plain lines in a log.

The bar spans the whole job: each phase (loading, selecting, denoising, auditing, writing)
takes an equal part of it; the text beside it names the phase and how far it is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Literal, TextIO

from tqdm import tqdm

from nacs_client.types import Job

PHASES: tuple[str, ...] = ("loading", "selecting", "denoising", "auditing", "writing")
ProgressOption = bool | Literal["bar", "lines"] | Callable[[Job], None] | None
# The bar's resolution: tenths of a percent.
_STEPS = 1000


def _phase_fraction(job: Job) -> float:
    fraction = job.progress.fraction if job.progress else 0.0
    return 1.0 if job.status == "succeeded" else min(1.0, max(0.0, fraction))


def job_fraction(job: Job) -> float:
    """How far ``job`` is, 0-1, across all its phases (1 once it succeeded)."""
    if job.status == "succeeded":
        return 1.0
    phase = job.progress.phase if job.progress else None
    if phase not in PHASES:
        return 0.0
    return (PHASES.index(phase) + _phase_fraction(job)) / len(PHASES)


def _phase_text(job: Job, limit: int | None = None) -> str:
    """The phase, how far it is and the job's message (cut to ``limit`` characters)."""
    if job.is_finished:
        return ""
    phase = job.progress.phase if job.progress and job.progress.phase else ""
    text = f"{phase} {_phase_fraction(job) * 100:.0f}%" if phase else ""
    message = " ".join((job.progress.message if job.progress else "").split())
    if limit is not None and len(message) > limit:
        message = message[: limit - 3] + "..."
    if message:
        text += "  " + message
    return text.strip()


# The bar's line: the job, the bar, the whole job's percentage, then the phase's text.
_BAR_FORMAT = "{desc} |{bar}| {percentage:5.1f}% "
# The message beside the bar is cut to this many characters (a log line keeps it whole).
_BAR_MESSAGE = 50


class ProgressBar:
    """A tqdm bar on ``stream``: the job's id and status, the bar, and the phase."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._bar: tqdm | None = None

    def update(self, job: Job) -> None:
        if self._bar is None:
            self._bar = tqdm(
                total=_STEPS, file=self._stream, dynamic_ncols=True, leave=True,
                bar_format=_BAR_FORMAT,
            )
        self._bar.n = round(job_fraction(job) * _STEPS)
        self._bar.set_description_str(f"{job.id} {job.status}", refresh=False)
        # tqdm's postfix would come after a comma: the text goes into the format, braces escaped
        text = _phase_text(job, _BAR_MESSAGE).replace("{", "{{").replace("}", "}}")
        self._bar.bar_format = _BAR_FORMAT + text
        self._bar.refresh()
        if job.is_finished:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ProgressLines:
    """A line on ``stream`` whenever the job's status or phase changes, or its phase moves by
    another ``step`` (a tenth by default): for logs, where a redrawn bar would be noise."""

    def __init__(self, stream: TextIO, step: float = 0.1) -> None:
        self._stream = stream
        self._step = step
        self._last: tuple[str, str, int] | None = None

    def update(self, job: Job) -> None:
        phase = job.progress.phase if job.progress and job.progress.phase else ""
        fraction = _phase_fraction(job)
        key = (job.status, phase, int(fraction / self._step + 1e-9))
        if key == self._last:
            return
        self._last = key
        line = f"{job.id}  {job.status:<9} {job_fraction(job) * 100:5.1f}%  {_phase_text(job)}"
        self._stream.write(line.rstrip() + "\n")
        self._stream.flush()

    def close(self) -> None:
        """Nothing to finish: every line is whole."""


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_callback(progress: ProgressOption) -> tuple[Callable[[Job], None], Callable[[], None]]:
    """(on_update, close) for a ``progress`` argument of ``jobs.wait``.

    ``None``: a bar when stderr is a terminal, quiet otherwise; ``True`` or ``"bar"``: a bar;
    ``"lines"``: plain lines on stderr; ``False``: quiet; a callable is called with every
    polled job.
    """
    if callable(progress):
        return progress, lambda: None
    if progress is None:
        progress = _is_terminal(sys.stderr)
    if progress is False:
        return lambda job: None, lambda: None
    shown: ProgressBar | ProgressLines
    shown = ProgressLines(sys.stderr) if progress == "lines" else ProgressBar(sys.stderr)
    return shown.update, shown.close


def cli_progress(progress: bool | None) -> ProgressOption:
    """What the CLI shows while it waits: ``--progress`` a bar, ``--no-progress`` nothing; by
    default a bar when stderr is a terminal and plain lines when it is not (a log, a pipe)."""
    if progress is None:
        return "bar" if _is_terminal(sys.stderr) else "lines"
    return progress
