"""Cutting a dataset into shards of consecutive rows, and encoding it shard by shard.

A shard plan depends only on the row count and the rows per shard: shard i holds
rows [i * shard_rows, min(n, (i + 1) * shard_rows)). ``ShardedSource`` reads a
source with its batches cut at the shard boundaries, so that at every moment it
knows which shard the rows being read belong to; a ``DataError`` raised while
they are read is raised again naming that shard (``naming_shard``).
``encode_shards`` encodes a source with a fitted ``Encoder`` in one pass and
yields one ``EncodedDataset`` per shard, so that no more than one shard's
features are held at a time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.data.encoding import Encoder, FractionCallback
from nacs_engine.data.reading import ReadBatch, TableSource
from nacs_engine.errors import DataError

DEFAULT_SHARD_ROWS = 1 << 20
"""Rows per shard unless an option says otherwise (1,048,576)."""


def shard_bounds(n_rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """(start, stop) of every shard of ``n_rows`` rows, ``shard_rows`` rows each (the last
    may hold fewer)."""
    if isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 0:
        raise ValueError(f"n_rows: expected a non-negative integer, got {n_rows!r}")
    if isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows < 1:
        raise ValueError(f"shard_rows: expected a positive integer, got {shard_rows!r}")
    return [(start, min(n_rows, start + shard_rows)) for start in range(0, n_rows, shard_rows)]


class ShardedSource(TableSource):
    """``source`` read with its batches cut at every multiple of ``shard_rows``.

    ``shard`` is the index of the shard of the rows last read, ``position`` the
    row the last batch read starts at.
    """

    def __init__(self, source: TableSource, shard_rows: int) -> None:
        shard_bounds(0, shard_rows)
        self.source = source
        self.shard_rows = shard_rows
        self.columns = source.columns
        self.layout = source.layout
        self.header_line = source.header_line
        self.named_columns = source.named_columns
        self.description = source.description
        self.total_rows = source.total_rows
        self.batch_rows = source.batch_rows
        self.shard = 0
        self.position = 0

    @property
    def unread_keys(self) -> dict[str, dict[str, Any]]:
        return self.source.unread_keys

    @property
    def unread_key_count(self) -> int:
        return self.source.unread_key_count

    @property
    def keys_without_values(self) -> tuple[str, ...]:
        return self.source.keys_without_values

    @property
    def unnamed_keys(self) -> tuple[str, ...]:
        return self.source.unnamed_keys

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[ReadBatch]:
        self.shard, self.position = 0, 0
        done = 0
        for batch, fraction in self.source.batches(columns):
            offset = 0
            while offset < batch.num_rows:
                shard_end = (done // self.shard_rows + 1) * self.shard_rows
                length = min(batch.num_rows - offset, shard_end - done)
                self.shard, self.position = done // self.shard_rows, done
                yield batch.slice(offset, length), fraction
                offset += length
                done += length
        # read to the end: what fails now is the data's as a whole, not a shard's
        self.shard, self.position = 0, 0

    @contextlib.contextmanager
    def naming_shard(self) -> Iterator[None]:
        """Raise a DataError from inside the block again with the shard it was read in (not
        the first: its rows are the data's first, and a missing column is found there)."""
        try:
            yield
        except DataError as error:
            if self.shard == 0:
                raise
            where = f"shard {self.shard} (from row {self.shard * self.shard_rows:,})"
            raise DataError(error.code, f"{where}: {error.message}") from error


class _OneShard(TableSource):
    """The next ``rows`` rows of a shared stream of batches cut at shard boundaries."""

    def __init__(
        self, parent: ShardedSource, stream: Iterator[ReadBatch], columns: list[str], rows: int
    ) -> None:
        self.columns = parent.columns
        self.layout = parent.layout
        self.description = parent.description
        self.total_rows = rows
        self.batch_rows = parent.batch_rows
        self._stream = stream
        self._read_columns = columns
        self._rows = rows

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[ReadBatch]:
        if columns is None or list(columns) != self._read_columns:
            raise ValueError("columns: a shard is read once, with the encoder's columns")
        done = 0
        while done < self._rows:
            read = next(self._stream, None)
            if read is None:
                return
            batch, fraction = read
            done += batch.num_rows
            yield batch, fraction


def encode_shards(
    encoder: Encoder,
    source: ShardedSource,
    n_rows: int,
    *,
    workdir: str | os.PathLike[str] | None = None,
    progress: FractionCallback | None = None,
) -> Iterator[EncodedDataset]:
    """Encode ``source`` (``n_rows`` rows, as ``encoder.fit`` counted them) with the fitted
    ``encoder``, in one pass, one ``EncodedDataset`` per shard of ``source.shard_rows`` rows.
    progress(fraction, message) is called per batch with the share of the source read.

    A DataError names the shard it was found in. The features of a shard equal rows
    [start, stop) of ``encoder.transform(source).features``; each shard's fingerprint
    covers that shard only.
    """
    schema = encoder.schema
    if schema is None:
        raise ValueError("encoder: not fitted yet; call fit(source) first")
    columns = [schema.label_column, *schema.feature_columns]
    stream = source.batches(columns)
    bounds = shard_bounds(n_rows, source.shard_rows)
    for index, (start, stop) in enumerate(bounds):
        shard = _OneShard(source, stream, columns, stop - start)
        with source.naming_shard():
            encoded = encoder.transform(
                shard, workdir=workdir, progress=progress, expected_rows=stop - start
            )
        if encoded.n_rows != stop - start:
            raise DataError(
                "unreadable_data",
                f"shard {index}: expected {stop - start} rows, read {encoded.n_rows}; "
                "the data changed while it was read",
            )
        yield encoded
