"""Where encoded features live: in memory when small, in a memory-mapped file when large."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from nacs_engine.errors import DataError

DEFAULT_MEMMAP_THRESHOLD_BYTES = 256 << 20
"""Feature matrices larger than this (bytes) go to a memory-mapped file."""


class FeatureSink:
    """Collects (b, F) int32 blocks, in row order, into one (n, F) array.

    Up to ``threshold_bytes`` the blocks stay in memory. Beyond (or from the
    start, when ``expected_rows`` says the result will be larger) they are
    appended to a file in ``workdir`` (default: the temp folder) with plain
    sequential writes, so the process never holds the whole matrix; ``finish``
    maps that file read-write as a ``np.memmap`` and, on POSIX, unlinks it, so
    that nothing is left behind once the array is freed.
    """

    def __init__(
        self,
        n_fields: int,
        expected_rows: int | None,
        threshold_bytes: int,
        workdir: str | os.PathLike[str] | None,
        description: str,
    ) -> None:
        self.n_fields = n_fields
        self.expected_rows = expected_rows
        self.threshold_bytes = threshold_bytes
        self.workdir = workdir
        self.description = description
        self.rows = 0
        self._blocks: list[np.ndarray] = []
        self._file: Any = None
        self._path: str | None = None
        self._array: np.ndarray | None = None
        if workdir is not None and not Path(workdir).is_dir():
            raise ValueError(f"workdir: {os.fspath(workdir)!r} is not a folder")
        if expected_rows is not None:
            if expected_rows * self._row_bytes > threshold_bytes:
                self._open_file()
            else:
                self._array = np.empty((expected_rows, n_fields), dtype=np.int32)

    @property
    def _row_bytes(self) -> int:
        return 4 * self.n_fields

    def _open_file(self) -> None:
        folder = Path(self.workdir) if self.workdir is not None else Path(tempfile.gettempdir())
        handle, self._path = tempfile.mkstemp(prefix="nacs-features-", suffix=".int32", dir=folder)
        self._file = os.fdopen(handle, "wb")
        for held in self._blocks:
            self._file.write(np.ascontiguousarray(held, dtype=np.int32).tobytes())
        self._blocks = []

    def append(self, block: np.ndarray) -> None:
        """Add the next (b, F) int32 rows."""
        b = block.shape[0]
        if self.expected_rows is not None and self.rows + b > self.expected_rows:
            raise DataError(
                "unreadable_data",
                f"{self.description}: more rows than the {self.expected_rows:,} counted before; "
                "the data changed while they were being read",
            )
        if self._file is not None:
            self._file.write(np.ascontiguousarray(block, dtype=np.int32).tobytes())
        elif self._array is not None:
            self._array[self.rows : self.rows + b] = block
        else:
            self._blocks.append(np.ascontiguousarray(block, dtype=np.int32))
            if (self.rows + b) * self._row_bytes > self.threshold_bytes:
                self._open_file()
        self.rows += b

    def finish(self) -> tuple[np.ndarray, str]:
        """The (n, F) int32 features and where they live ("memory" or "memmap")."""
        if self.expected_rows is not None and self.rows != self.expected_rows:
            self.discard()
            raise DataError(
                "unreadable_data",
                f"{self.description}: {self.rows:,} rows read, {self.expected_rows:,} counted "
                "before; the data changed while they were being read",
            )
        if self._array is not None:
            features, self._array = self._array, None
            return features, "memory"
        if self._file is not None and self.rows > 0:
            self._file.close()
            self._file = None
            mapped = np.memmap(  # type: ignore[call-overload]
                self._path, dtype=np.int32, mode="r+", shape=(self.rows, self.n_fields)
            )
            self._unlink()
            return mapped, "memmap"
        if not self._blocks:
            self.discard()
            return np.empty((0, self.n_fields), dtype=np.int32), "memory"
        features = (
            self._blocks[0] if len(self._blocks) == 1 else np.concatenate(self._blocks, axis=0)
        )
        self._blocks = []
        return features, "memory"

    def discard(self) -> None:
        """Drop what was collected and remove the file, if any."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._blocks = []
        self._array = None
        self._unlink()

    def _unlink(self) -> None:
        if self._path is not None and os.name == "posix":
            try:
                os.unlink(self._path)
            except OSError:
                pass
        if os.name == "posix":
            self._path = None
