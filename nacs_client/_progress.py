"""The progress shown by ``jobs.wait``: a one-line bar on a terminal, nothing otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from nacs_client.types import Job

ProgressOption = bool | Callable[[Job], None] | None


class ProgressBar:
    """Redraws one line on ``stream``: id, status, phase, a bar and the percentage."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self._stream = stream
        self._width = width
        self._last_length = 0
        self._drawn = False

    def update(self, job: Job) -> None:
        fraction = job.progress.fraction if job.progress else 0.0
        if job.status == "succeeded":
            fraction = 1.0
        fraction = min(1.0, max(0.0, fraction))
        filled = int(round(fraction * self._width))
        bar = "#" * filled + "-" * (self._width - filled)
        phase = job.progress.phase if job.progress and job.progress.phase else ""
        line = f"{job.id}  {job.status:<9} {phase:<9} [{bar}] {fraction * 100:5.1f}%"
        message = job.progress.message if job.progress else ""
        if message and not job.is_finished:
            line += "  " + " ".join(message.split())[:40]
        padding = " " * max(0, self._last_length - len(line))
        self._stream.write("\r" + line + padding)
        self._stream.flush()
        self._last_length = len(line)
        self._drawn = True
        if job.is_finished:
            self.close()

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False


def progress_callback(progress: ProgressOption) -> tuple[Callable[[Job], None], Callable[[], None]]:
    """(on_update, close) for a ``progress`` argument of ``jobs.wait``.

    ``None``: a bar when stderr is a terminal, quiet otherwise; ``True``/``False``
    force the bar on or off; a callable is called with every polled job.
    """
    if callable(progress):
        return progress, lambda: None
    if progress is None:
        isatty = getattr(sys.stderr, "isatty", None)
        progress = bool(isatty and isatty())
    if not progress:
        return lambda job: None, lambda: None
    bar = ProgressBar(sys.stderr)
    return bar.update, bar.close
