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
    """Collects (b, F) int32 blocks into one (n, F) array, spilling to a memmap when large."""

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
        self._array: np.ndarray | None = None
        self._file: Any = None
        self._path: str | None = None
        row_bytes = 4 * n_fields
        if expected_rows is not None and expected_rows > 0:
            if expected_rows * row_bytes > threshold_bytes:
                self._path = self._new_path()
                self._array = np.memmap(
                    self._path, dtype=np.int32, mode="w+", shape=(expected_rows, n_fields)
                )
            else:
                self._array = np.empty((expected_rows, n_fields), dtype=np.int32)

    def _new_path(self) -> str:
        folder = Path(self.workdir) if self.workdir is not None else Path(tempfile.gettempdir())
        if not folder.is_dir():
            raise ValueError(f"workdir: {str(folder)!r} is not a folder")
        handle, path = tempfile.mkstemp(prefix="nacs-features-", suffix=".int32", dir=folder)
        os.close(handle)
        return path

    def append(self, block: np.ndarray) -> None:
        b = block.shape[0]
        if self._array is not None:
            if self.rows + b > self._array.shape[0]:
                raise DataError(
                    "unreadable_data",
                    f"{self.description}: more rows than the {self._array.shape[0]:,} counted before; "
                    "the data changed while it was being read",
                )
            self._array[self.rows : self.rows + b] = block
        elif self._file is not None:
            self._file.write(np.ascontiguousarray(block).tobytes())
        else:
            self._blocks.append(block)
            if (self.rows + b) * 4 * self.n_fields > self.threshold_bytes:
                self._path = self._new_path()
                self._file = open(self._path, "wb")  # noqa: SIM115 - closed in finish/discard
                for held in self._blocks:
                    self._file.write(np.ascontiguousarray(held).tobytes())
                self._blocks = []
        self.rows += b

    def finish(self) -> tuple[np.ndarray, str]:
        """The (n, F) int32 features and where they live ("memory" or "memmap")."""
        if self._array is not None:
            if self.rows != self._array.shape[0]:
                raise DataError(
                    "unreadable_data",
                    f"{self.description}: {self.rows:,} rows read, {self._array.shape[0]:,} expected; "
                    "the data changed while it was being read",
                )
            if isinstance(self._array, np.memmap):
                self._array.flush()
                mapped = np.memmap(self._path, dtype=np.int32, mode="r+", shape=self._array.shape)
                self._array = None
                self._unlink()
                return mapped, "memmap"
            return self._array, "memory"
        if self._file is not None:
            self._file.close()
            self._file = None
            mapped = np.memmap(
                self._path, dtype=np.int32, mode="r+", shape=(self.rows, self.n_fields)
            )
            self._unlink()
            return mapped, "memmap"
        if not self._blocks:
            return np.empty((0, self.n_fields), dtype=np.int32), "memory"
        return np.concatenate(self._blocks, axis=0), "memory"

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._array = None
        self._blocks = []
        self._unlink()

    def _unlink(self) -> None:
        if self._path is not None and os.name == "posix":
            try:
                os.unlink(self._path)
            except OSError:
                pass
        self._path = None
