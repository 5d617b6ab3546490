"""Reading tabular CTR data in record batches from any fsspec URI.

``open_source`` turns a URI (``file://``, ``s3://``, ``gs://`` with gcsfs installed,
``https://`` or a plain path; a single file or a folder of part files; fsspec
``storage_options`` passed through) into a ``TableSource``: an
object that can be read, as many times as needed, as a stream of
``pyarrow.RecordBatch`` of at most ``batch_rows`` rows. The raw file is never
read whole: Parquet is read row group by row group, CSV and TSV block by block.

Formats: ``parquet`` (``.parquet``, ``.pq``), ``csv`` (``.csv``), ``tsv``
(``.tsv``, ``.txt``), ``jsonl`` (JSON Lines, one object per line: ``.jsonl``,
``.ndjson``, ``.json``) and ``criteo``: the Criteo text layout, tab-separated with
no header and 40 columns (label, I1-I13 integer counts, C1-C26 hashed
categoricals, an empty value meaning missing). A ``.tsv`` or ``.txt`` file whose
first line has that shape is read as ``criteo``. Text files may be gzip- or
bz2-compressed (``.csv.gz``, ``.jsonl.gz``, ...).

JSON Lines columns are the keys of the objects in the first block (about a megabyte)
of the first file, in the order they first appear; keys that first appear later are
not read (the source's ``unread_keys`` says which, and where), a key missing from an
object is a missing value, and keys whose values are lists or objects are left out.
Given ``column_names``, the columns are those keys instead, wherever they first appear
(a key of key=value folders among them is read from the folders), and other keys are not
read (the source's ``keys_without_values`` names those that no object read so far holds a
value for).

A folder is read as the data files in it and in its subfolders, sorted by path (the order
``pyarrow.dataset`` reads them in; ``.json`` files beside other data files, such as a
schema, are not read). A key=value subfolder (a partitioned dataset, as Hive,
Spark and ``pyarrow.dataset`` write it) gives its files that key: every file must lie
under the same keys, and each key becomes a text column after the files' columns (URL
escapes decoded, ``__HIVE_DEFAULT_PARTITION__`` read as missing; a key that is also a
column of the files is read from the files, which must hold the folder's value).

CSV and TSV columns are read as strings (an empty value is null), so that the
type of a column never depends on which block is read first; the encoder parses
labels and numeric columns itself. JSON Lines values are read as the same text:
numbers in decimal, whole ones in digits (``1.0`` as ``1``, ``1e10`` as ``10000000000``;
integers of any size exactly),
``true`` and ``false``, ``null`` as missing. Every failure caused by the data (missing
file, corrupt bytes, unknown format) is raised as ``DataError`` with a code.
Messages and metadata name the URI without its password or query string (the
signature of a pre-signed URL).
"""

from __future__ import annotations

import codecs
import csv
import decimal
import io
import json
import math
import os
import posixpath
import re
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from nacs_engine.errors import DataError, first_cause

FORMATS: tuple[str, ...] = ("parquet", "csv", "tsv", "jsonl", "criteo")

CRITEO_NUMERIC: tuple[str, ...] = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL: tuple[str, ...] = tuple(f"C{i}" for i in range(1, 27))
CRITEO_COLUMNS: tuple[str, ...] = ("label", *CRITEO_NUMERIC, *CRITEO_CATEGORICAL)

_EXTENSIONS: dict[str, str] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_COMPRESSIONS: dict[str, str] = {".gz": "gzip", ".bz2": "bz2"}
_INTEGER = re.compile(r"^-?\d+$")
_URL_QUERY = re.compile(r"([a-z][a-z0-9+.-]*://[^\s?#'\"]+)\?[^\s'\"]*", re.IGNORECASE)
_HEAD_BYTES = 1 << 16
# The first bytes of compressed files (bzip2's: "BZh", the block size, the block's magic),
# and the file endings the readers take them by.
_COMPRESSED_NAMES = ((re.compile(rb"\x1f\x8b"), "gz"), (re.compile(rb"BZh[1-9]1AY&SY"), "bz2"))
# Bytes of CSV text per block; big enough for any sane row, small enough to stream.
_MIN_BLOCK_BYTES = 1 << 20
# JSON Lines keys that are not columns: named with their line up to this many, counted past.
MAX_UNREAD_KEYS = 20
_MAX_COUNTED_KEYS = 100_000
_MAX_BLOCK_BYTES = 64 << 20
# A partitioned folder's value for a missing key (Hive's and Spark's spelling).
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_MAX_FOLDER_DEPTH = 16
# A float64 holds every integer up to this exactly; a JSON number past it that pyarrow read
# as a float is read again, exactly.
_EXACT_INTEGERS = float(2**53)
# The type such keys are read again as: whole numbers of up to 38 digits (a fraction fails).
_WHOLE_NUMBERS = pa.decimal128(38, 0)
_DATA_ENDINGS = ".parquet, .csv, .tsv, .txt or .jsonl"
_UTF8_BOM = b"\xef\xbb\xbf"

ReadBatch = tuple[pa.RecordBatch, "float | None"]
"""A batch and the fraction of the source read so far (None when unknown)."""


class TableSource:
    """Something that can be read, again and again, as record batches.

    columns: the column names, in order.
    layout: "criteo" for the Criteo text layout, else None.
    description: a short human-readable name (the URI) for messages.
    total_rows: the number of rows when known without reading (Parquet, tables).
    header_line: whether the column names are a text file's first line.
    named_columns: whether the columns are those the caller named (``column_names``).
    unread_keys: JSON Lines keys that first appear after the block the columns were read
    from, so are not read (the first ``MAX_UNREAD_KEYS``, filled as the data is read), each
    with where it first holds a value: {"line": number from 1, "file": its path within the
    folder, for a folder of files}; unread_key_count: how many such keys were seen.
    keys_without_values: JSON Lines keys named in ``column_names`` that no object read so
    far holds a value for (after reading them all: keys that are in no object).
    unnamed_keys: JSON Lines keys that objects read so far hold but ``column_names`` does not
    name (to suggest a key for a misspelt one).
    """

    columns: tuple[str, ...]
    layout: str | None = None
    header_line: bool = False
    named_columns: bool = False
    description: str = ""
    total_rows: int | None = None
    batch_rows: int = 65536

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[ReadBatch]:
        """Yield ``(batch, fraction_read)`` for the given columns (all when None)."""
        raise NotImplementedError

    @property
    def unread_keys(self) -> dict[str, dict[str, Any]]:
        return {}

    @property
    def unread_key_count(self) -> int:
        return 0

    @property
    def keys_without_values(self) -> tuple[str, ...]:
        return ()

    @property
    def unnamed_keys(self) -> tuple[str, ...]:
        return ()


class ArrowSource(TableSource):
    """A ``pyarrow.Table`` (or a pandas DataFrame) already in memory."""

    def __init__(self, table: Any, *, batch_rows: int = 65536, description: str = "table") -> None:
        _check_batch_rows(batch_rows)
        if not isinstance(table, pa.Table):
            try:
                table = pa.Table.from_pandas(table, preserve_index=False)
            except (TypeError, AttributeError, pa.ArrowException) as exc:
                raise ValueError(
                    "source: expected a URI, a pyarrow.Table or a pandas.DataFrame, "
                    f"got {type(table).__name__}"
                ) from exc
        _check_unique_columns(table.column_names, description)
        self.table = table
        self.columns = tuple(table.column_names)
        self.total_rows = table.num_rows
        self.batch_rows = batch_rows
        self.description = description

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[ReadBatch]:
        table = self.table if columns is None else self.table.select(list(columns))
        n = max(table.num_rows, 1)
        done = 0
        for batch in table.to_batches(max_chunksize=self.batch_rows):
            if batch.num_rows == 0:
                continue
            done += batch.num_rows
            yield batch, done / n


@dataclass(frozen=True)
class _TextLayout:
    delimiter: str
    names: tuple[str, ...]
    has_header: bool


class FileSource(TableSource):
    """One file, or a folder of part files of the same format, behind an fsspec URI. In a
    partitioned folder the partition keys follow the files' columns, as text."""

    def __init__(
        self,
        uri: str,
        fs: fsspec.AbstractFileSystem,
        parts: list[_Part],
        format: str,
        *,
        column_names: Sequence[str] | None,
        batch_rows: int,
    ) -> None:
        self.uri = uri
        self.description = uri
        self.fs = fs
        self.parts = parts
        self.paths = [part.name for part in parts]
        self.sizes = [part.size for part in parts]
        self.format = format
        self.batch_rows = batch_rows
        self.layout = "criteo" if format == "criteo" else None
        self.named_columns = column_names is not None
        self._text: _TextLayout | None = None
        self._unread_keys: dict[str, dict[str, Any]] = {}
        self._more_unread_keys: set[str] = set()
        # JSON Lines keys the caller named (None: the first block's keys), and which of them
        # some object read so far holds a value for.
        self._named_keys: tuple[str, ...] | None = None
        self._keys_with_values: set[str] = set()
        self._unnamed_keys: set[str] = set()
        # A folder's files are named in messages by their path below what they share.
        names = [_name_part(path) for path in self.paths]
        self._root = posixpath.commonpath(names) if len(names) > 1 else ""
        with _data_errors(uri):
            if format == "parquet":
                self.columns, self.total_rows = self._parquet_schema(column_names)
            elif format == "jsonl":
                self.columns = self._json_columns(column_names)
                self.total_rows = None
            else:
                self._text = self._text_layout(format, column_names)
                self.columns = self._text.names
                self.header_line = self._text.has_header
                self.total_rows = None
            self.file_columns = self.columns
            if self._named_keys is not None:
                # a folder's key named among the JSON Lines keys is read from the folders
                folder_keys = {key for key, _ in parts[0].keys}
                self.file_columns = tuple(c for c in self.columns if c not in folder_keys)
                self._named_keys = self.file_columns
            # a key that is also a column of the files is read from the files
            keys = tuple(key for key, _ in parts[0].keys if key not in self.file_columns)
            self.columns = (*self.file_columns, *keys)
        _check_unique_columns(self.columns, uri)

    @property
    def unread_keys(self) -> dict[str, dict[str, Any]]:
        return {key: dict(where) for key, where in self._unread_keys.items()}

    @property
    def unread_key_count(self) -> int:
        return len(self._unread_keys) + len(self._more_unread_keys)

    @property
    def keys_without_values(self) -> tuple[str, ...]:
        named = self._named_keys or ()
        return tuple(key for key in named if key not in self._keys_with_values)

    @property
    def unnamed_keys(self) -> tuple[str, ...]:
        return tuple(sorted(self._unnamed_keys))

    # -- schema -----------------------------------------------------------------

    def _parquet_schema(self, column_names: Sequence[str] | None) -> tuple[tuple[str, ...], int]:
        if column_names is not None:
            raise ValueError(
                "column_names: only for headerless CSV or TSV files or JSON Lines, not Parquet"
            )
        names: tuple[str, ...] | None = None
        total = 0
        for path in self.paths:
            with self.fs.open(path, "rb") as handle:
                meta = pq.ParquetFile(handle).metadata
                file_names = tuple(meta.schema.to_arrow_schema().names)
                total += meta.num_rows
            if names is None:
                names = file_names
            elif file_names != names:
                raise DataError(
                    "unreadable_data",
                    f"{self.uri}: the part files do not share one schema "
                    f"({path} has columns {list(file_names)}, expected {list(names)})",
                )
        assert names is not None
        return names, total

    def _text_layout(self, format: str, column_names: Sequence[str] | None) -> _TextLayout:
        first = self._first_line(self.paths[0])
        if first is None:
            raise DataError("empty_dataset", f"{self.uri}: the file is empty")
        if format == "criteo":
            if column_names is not None:
                raise ValueError("column_names: the Criteo layout names its own columns")
            return _TextLayout("\t", CRITEO_COLUMNS, has_header=False)
        delimiter = "," if format == "csv" else "\t"
        if format == "tsv" and column_names is None and _looks_like_criteo(first):
            self.format = "criteo"
            self.layout = "criteo"
            return _TextLayout("\t", CRITEO_COLUMNS, has_header=False)
        quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
        header = next(csv.reader([first], delimiter=delimiter, quoting=quoting), [])  # type: ignore[arg-type]
        if column_names is not None:
            names = tuple(str(name) for name in column_names)
            if not names:
                raise ValueError("column_names: give at least one name")
            if tuple(value.strip() for value in header) == names:
                raise ValueError(
                    f"column_names: {self.uri}'s first line holds these names: it is a header "
                    "line; leave column_names out"
                )
            if len(header) != len(names):
                raise ValueError(
                    f"column_names: {len(names)} names given, and {self.uri}'s first line has "
                    f"{len(header)} fields ({_excerpt(first.encode())})"
                )
            return _TextLayout(delimiter, names, has_header=False)
        names = tuple(name.strip() for name in header)
        if not names or any(not name for name in names):
            raise DataError(
                "unreadable_data",
                f"{self.uri}: the header line has an empty column name; for a file "
                "without a header, give column_names",
            )
        if len(set(names)) < len(names):
            repeated = sorted({name for name in names if names.count(name) > 1})
            raise DataError(
                "unreadable_data",
                f"{self.uri}: the header line repeats the column name(s) {repeated[:5]}; "
                f"the first line is read as the header ({_excerpt(first.encode())}): for a "
                "file without a header, give column_names (--column-names on the command line)",
            )
        return _TextLayout(delimiter, names, has_header=True)

    def _json_columns(self, column_names: Sequence[str] | None) -> tuple[str, ...]:
        first = self._first_line(self.paths[0])
        if first is None:
            raise DataError("empty_dataset", f"{self.uri}: the file is empty")
        opening = first.lstrip()[:1]
        if opening != "{":
            what = "a JSON array" if opening == "[" else "not a JSON object"
            raise DataError(
                "unreadable_data",
                f"{self.uri}: the first line is {what}; JSON Lines data holds one object per "
                'line ({"label": 1, "user": "u7", ...})',
            )
        if column_names is not None:
            names = tuple(str(name) for name in column_names)
            if not names or not all(names):
                raise ValueError("column_names: give at least one key, and no empty name")
            self._named_keys = names
            return names
        with self._open_text(self.paths[0]) as (stream, _raw):
            line, block = next(_line_blocks(stream, _MIN_BLOCK_BYTES), (1, b""))
        table = _json_table(block, self.uri, line)
        names = tuple(field.name for field in table.schema if not pa.types.is_nested(field.type))
        if not names:
            raise DataError(
                "unreadable_data",
                f"{self.uri}: every key of the first objects holds a list or an object; JSON "
                "Lines data holds one row per line, its values numbers, text, true/false or "
                'null (pandas: to_json(path, orient="records", lines=True))',
            )
        return names

    def _first_line(self, path: str) -> str | None:
        """The first line of a text file, decoded; None when the file is empty."""
        with self._open_text(path) as (stream, _raw):
            chunks = [stream.read(_HEAD_BYTES)]
            read = len(chunks[0])
            while b"\n" not in chunks[-1]:
                more = stream.read(_HEAD_BYTES)
                if not more:
                    break
                chunks.append(more)
                read += len(more)
                if read > _MAX_BLOCK_BYTES:
                    raise DataError(
                        "unreadable_data",
                        f"{self.uri}: the first line is longer than "
                        f"{_MAX_BLOCK_BYTES >> 20} MiB; "
                        + (
                            "JSON Lines data holds one object per line (pandas: "
                            'to_json(path, orient="records", lines=True))'
                            if self.format == "jsonl"
                            else "is it text with one row per line?"
                        ),
                    )
            head = b"".join(chunks)
        if not head.strip():
            return None
        line = head.split(b"\n", 1)[0].rstrip(b"\r")
        packed = next((name for magic, name in _COMPRESSED_NAMES if magic.match(head)), "")
        if b"\x00" in line or packed:
            ending = "jsonl" if self.format == "jsonl" else "csv"
            hint = f" (it is {packed}-compressed: name it with its ending, e.g. .{ending}.{packed})"
            raise DataError(
                "unreadable_data",
                f"{self.uri}: binary data, not {self.format.upper()} text"
                + (hint if packed else ""),
            )
        try:
            return codecs.decode(line, "utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(
                "unreadable_data", f"{self.uri}: the first line is not UTF-8 text ({exc.reason})"
            ) from exc

    @contextmanager
    def _open_text(self, path: str) -> Iterator[tuple[Any, Any]]:
        """Open a text file, decompressing by extension; yields (stream, raw handle)."""
        raw = self.fs.open(path, "rb")
        try:
            compression = _COMPRESSIONS.get(Path(_name_part(path)).suffix.lower())
            if compression is None:
                yield raw, raw
            else:
                yield pa.CompressedInputStream(raw, compression), raw
        finally:
            raw.close()

    # -- reading ----------------------------------------------------------------

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[ReadBatch]:
        if columns is not None:
            unknown = [c for c in columns if c not in self.columns]
            if unknown:
                raise DataError("column_missing", f"{self.uri}: no column(s) {unknown}")
        total_bytes = sum(s or 0 for s in self.sizes) if all(self.sizes) else None
        total_rows = self.total_rows
        rows_done = 0
        bytes_before = 0
        wanted = list(self.columns) if columns is None else list(columns)
        from_files = [name for name in wanted if name in self.file_columns]
        for part in self.parts:
            path, size = part.name, part.size
            with _data_errors(self.uri):
                if self.format == "parquet":
                    reader: Iterator[tuple[pa.RecordBatch, Callable[[], int]]] = (
                        self._parquet_batches(path, from_files)
                    )
                elif self.format == "jsonl":
                    reader = self._json_batches(path, from_files)
                else:
                    reader = self._text_batches(path, from_files)
                for read, position in _guarded(reader, self.uri):
                    _check_keys_agree(read, part, self.uri)
                    batch = _with_keys(read, wanted, dict(part.keys))
                    rows_done += batch.num_rows
                    if total_rows:
                        fraction: float | None = rows_done / total_rows
                    elif total_bytes:
                        fraction = (bytes_before + position()) / total_bytes
                    else:
                        fraction = None
                    if fraction is not None:
                        fraction = min(max(fraction, 0.0), 1.0)
                    yield batch, fraction
            bytes_before += size or 0

    def _parquet_batches(
        self, path: str, columns: Sequence[str] | None
    ) -> Iterator[tuple[pa.RecordBatch, Callable[[], int]]]:
        with self.fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            for batch in parquet.iter_batches(
                batch_size=self.batch_rows, columns=None if columns is None else list(columns)
            ):
                if batch.num_rows:
                    yield batch, handle.tell

    def _text_batches(
        self, path: str, columns: Sequence[str] | None
    ) -> Iterator[tuple[pa.RecordBatch, Callable[[], int]]]:
        assert self._text is not None
        layout = self._text
        wanted = list(layout.names) if columns is None else list(columns)
        block = min(max(self.batch_rows * 512, _MIN_BLOCK_BYTES), _MAX_BLOCK_BYTES)
        read_options = pa_csv.ReadOptions(
            column_names=list(layout.names),
            skip_rows=1 if layout.has_header else 0,
            block_size=block,
            encoding="utf8",
        )
        parse_options = pa_csv.ParseOptions(
            delimiter=layout.delimiter,
            # TSV has no quoting: a double quote in a tab-separated value is just a character
            quote_char='"' if layout.delimiter == "," else False,
            newlines_in_values=False,
        )
        convert_options = pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in layout.names},
            include_columns=wanted,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        )
        with self._open_text(path) as (stream, raw):
            reader = pa_csv.open_csv(
                stream,
                read_options=read_options,
                parse_options=parse_options,
                convert_options=convert_options,
            )
            for batch in reader:
                for start in range(0, batch.num_rows, self.batch_rows):
                    yield batch.slice(start, self.batch_rows), raw.tell

    def _json_batches(
        self, path: str, columns: Sequence[str]
    ) -> Iterator[tuple[pa.RecordBatch, Callable[[], int]]]:
        block = min(max(self.batch_rows * 512, _MIN_BLOCK_BYTES), _MAX_BLOCK_BYTES)
        with self._open_text(path) as (stream, raw):
            for line, lines in _line_blocks(stream, block):
                table = _json_table(lines, self.uri, line)
                named = self._named_keys is not None
                if not named:
                    self._note_unread_keys(table, lines, path, line)
                elif len(self._unnamed_keys) < _MAX_COUNTED_KEYS:
                    self._unnamed_keys.update(
                        name for name in table.column_names if name not in self.file_columns
                    )
                arrays = [_json_text(table, name, self.uri, named) for name in columns]
                self._keys_with_values.update(
                    name for name, array in zip(columns, arrays, strict=True)
                    if array.null_count < len(array)
                )
                # the batch keeps the block's row count with no columns (partition keys only)
                rows = pa.nulls(table.num_rows)
                batch = pa.RecordBatch.from_arrays([*arrays, rows], [*columns, ""]).select(
                    list(range(len(columns)))
                )
                for start in range(0, batch.num_rows, self.batch_rows):
                    yield batch.slice(start, self.batch_rows), raw.tell

    def _note_unread_keys(
        self, table: pa.Table, lines: bytes, path: str, first_line: int
    ) -> None:
        """Record the keys of ``table``, read from the block ``lines`` of JSON Lines (from line
        ``first_line`` of ``path``), that are not columns, and where each first holds a
        value; past ``MAX_UNREAD_KEYS`` keys, only count them (up to ``_MAX_COUNTED_KEYS``)."""
        for field, column in zip(table.schema, table.columns, strict=True):
            name = field.name
            if (
                name in self.file_columns
                or name in self._unread_keys
                or name in self._more_unread_keys
                or pa.types.is_nested(field.type)
                or column.null_count == len(column)
            ):
                continue
            if len(self._unread_keys) >= MAX_UNREAD_KEYS:
                if len(self._more_unread_keys) < _MAX_COUNTED_KEYS:
                    self._more_unread_keys.add(name)
                continue
            where: dict[str, Any] = {"line": _row_line(lines, first_line, _first_valid(column))}
            if len(self.paths) > 1:
                where["file"] = posixpath.relpath(_name_part(path), self._root)
            self._unread_keys[name] = where


def _row_line(lines: bytes, first_line: int, row: int) -> int:
    """The number of the line of row ``row`` of a block of JSON Lines whose first line is
    ``first_line``: blank lines hold no row."""
    for offset, line in enumerate(lines.split(b"\n")):
        if line.strip():
            if row == 0:
                return first_line + offset
            row -= 1
    raise ValueError(f"row: the block holds no row {row}")


def _first_valid(column: pa.ChunkedArray) -> int:
    """The position of the first value of ``column`` that is not missing."""
    return int(pc.index(column.is_valid(), True).as_py())


def open_source(
    uri: str | os.PathLike[str],
    *,
    format: str | None = None,
    column_names: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    batch_rows: int = 65536,
    filesystem: fsspec.AbstractFileSystem | None = None,
) -> FileSource:
    """Open the data at ``uri`` for batch reading.

    uri: a plain path or any fsspec URI; a folder is read as its data files and those
        of its subfolders (sorted by path, those with a supported extension), the keys of
        key=value subfolders as columns.
    format: "parquet", "csv", "tsv", "jsonl" or "criteo"; None infers it from the extension.
    column_names: names of the columns of a headerless CSV or TSV file; for JSON Lines, the
        keys to read (by default the keys of the first megabyte).
    storage_options: passed to the fsspec filesystem (e.g. s3 endpoint, credentials).
    batch_rows: the most rows per batch.
    filesystem: an fsspec filesystem to read ``uri``'s path with, instead of the one its
        scheme names (storage_options are then unused); e.g. one that opens only some folders.

    Raises DataError "dataset_not_found", "unsupported_format", "unreadable_data"
    or "empty_dataset"; ValueError naming the argument for bad arguments.
    """
    if not isinstance(uri, (str, os.PathLike)) or not str(uri):
        raise ValueError(f"uri: expected a non-empty path or URI, got {uri!r}")
    if format is not None and format not in FORMATS:
        raise DataError(
            "unsupported_format", f"format: expected one of {', '.join(FORMATS)}, got {format!r}"
        )
    _check_batch_rows(batch_rows)
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise ValueError("storage_options: expected a mapping of fsspec options")
    address = os.fspath(uri)
    shown = redact_uri(address)  # what messages and metadata say
    try:
        if filesystem is not None:
            fs, path = filesystem, fsspec.core.strip_protocol(address)
        else:
            fs, path = fsspec.core.url_to_fs(address, **dict(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise DataError(
            "unsupported_format", f"{shown}: no reader for this kind of URI ({_short(exc)})"
        ) from exc
    with _data_errors(shown):
        fs.invalidate_cache(path)
        info = fs.info(path)
        if info.get("type") == "directory":
            parts = _part_files(fs, path, shown, format)
        else:
            parts = [_Part(path, info.get("size"))]
    resolved = format or _format_from_name(parts[0].name, shown)
    return FileSource(shown, fs, parts, resolved, column_names=column_names, batch_rows=batch_rows)


def redact_uri(uri: str) -> str:
    """``uri`` without a password or a query string (e.g. the signature of a
    pre-signed URL), for messages and metadata."""
    parts = urlsplit(uri)
    if not parts.scheme or len(parts.scheme) == 1:  # a plain path (or a Windows drive)
        return uri
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}@{host}"
    query = "..." if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def as_source(source: Any, *, batch_rows: int = 65536) -> TableSource:
    """A ``TableSource`` from a URI, a path, a pyarrow Table, a DataFrame or a source."""
    if isinstance(source, TableSource):
        return source
    if isinstance(source, (str, os.PathLike)):
        return open_source(source, batch_rows=batch_rows)
    return ArrowSource(source, batch_rows=batch_rows)


def format_from_name(name: str) -> str | None:
    """The format a file name's extension implies (".csv.gz" -> "csv"), or None."""
    lowered = _name_part(name).lower()
    suffixes = Path(lowered).suffixes
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes = suffixes[:-1]
    if not suffixes:
        return None
    return _EXTENSIONS.get(suffixes[-1])


def _name_part(path: str) -> str:
    """The path of a URL without its query string; a plain path as it is."""
    return urlsplit(path).path if "://" in path else path


def _format_from_name(path: str, uri: str) -> str:
    found = format_from_name(path)
    if found is None:
        raise DataError(
            "unsupported_format",
            f"{uri}: cannot tell the format from the name {Path(_name_part(path)).name!r}; use a "
            f"{_DATA_ENDINGS} file (optionally .gz) or give the format ({', '.join(FORMATS)})",
        )
    return found


@dataclass(frozen=True)
class _Part:
    """A part file of a folder and, in a partitioned folder, the (key, value) pairs of the
    key=value subfolders above it (a value of None: Hive's default partition, missing)."""

    name: str
    size: int | None
    keys: tuple[tuple[str, str | None], ...] = ()


def _part_files(
    fs: fsspec.AbstractFileSystem, path: str, uri: str, format: str | None
) -> list[_Part]:
    """The data files in the folder ``path`` and its subfolders, sorted by path (the order
    ``pyarrow.dataset`` lists them in); a key=value subfolder (a partitioned dataset, Hive's
    layout) gives its files that key. Names starting with "." or "_" (Spark's _SUCCESS,
    staging folders) are skipped, and so are .json files beside other data files;
    symbolic links are refused, never followed."""
    parts: list[_Part] = []
    links: list[str] = []
    pending: list[tuple[str, tuple[tuple[str, str | None], ...], int]] = [(path, (), 0)]
    while pending:
        folder, keys, depth = pending.pop()
        entries = _folder_entries(fs, folder)
        for entry in entries:
            base = Path(entry["name"]).name
            found = format_from_name(base)
            if entry.get("islink"):
                # a link to a file that is not data is left alone; one to data, to a folder or
                # to what the listing does not say (the worker's confined reads) is refused
                if found is not None or entry.get("type") != "file":
                    links.append(str(Path(entry["name"]).relative_to(path)))
            elif entry.get("type") == "file":
                if found is not None and (format is None or found == _text_family(format)):
                    parts.append(_Part(entry["name"], entry.get("size"), keys))
            elif entry.get("type") == "directory":
                if depth >= _MAX_FOLDER_DEPTH:
                    raise DataError(
                        "unreadable_data",
                        f"{uri}: subfolders nested deeper than {_MAX_FOLDER_DEPTH} levels",
                    )
                pending.append((entry["name"], _with_key(keys, base, uri), depth + 1))
    if links:
        raise DataError(
            "unreadable_data",
            f"{uri}: {sorted(links)[:5]} in the folder are symbolic links, which are not "
            "read; put the files and folders themselves there",
        )
    if not parts:
        hidden = sorted(
            Path(entry["name"]).name
            for entry in fs.ls(path, detail=True)
            if Path(entry["name"]).name.startswith((".", "_"))
        )
        hint = (
            f" (names starting with . or _ are skipped: {', '.join(hidden[:3])})" if hidden else ""
        )
        raise DataError(
            "dataset_not_found",
            f"{uri}: the folder holds no {_DATA_ENDINGS} file{hint}",
        )
    parts.sort(key=lambda part: part.name)
    if not all(_is_plain_json(part.name) for part in parts):
        # .json files beside other data files describe them (a schema, a manifest)
        parts = [part for part in parts if not _is_plain_json(part.name)]
    kinds = {format_from_name(Path(part.name).name) for part in parts}
    if len(kinds) > 1:
        raise DataError(
            "unsupported_format",
            f"{uri}: the folder mixes formats "
            f"({', '.join(sorted(k or '' for k in kinds))}); give format",
        )
    layouts: dict[tuple[str, ...], str] = {}
    for part in parts:
        layouts.setdefault(tuple(key for key, _ in part.keys), part.name)
    if len(layouts) > 1:
        shown = [
            f"{str(Path(name).relative_to(path))} under "
            + ("/".join(f"{key}=..." for key in keys) or "no key=value folder")
            for keys, name in sorted(layouts.items())
        ]
        raise DataError(
            "unreadable_data",
            f"{uri}: the folder's files lie under different partition keys "
            f"({'; '.join(shown[:3])}); every file must lie under the same key=value levels",
        )
    return parts


def _is_plain_json(name: str) -> bool:
    """Whether a file is named .json (compressed or not), not .jsonl or .ndjson."""
    suffixes = Path(name.lower()).suffixes
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] == ".json"


def _folder_entries(fs: fsspec.AbstractFileSystem, path: str) -> list[dict[str, Any]]:
    fs.invalidate_cache(path)  # a filesystem kept between calls may hold an old listing
    entries = sorted(fs.ls(path, detail=True), key=lambda entry: entry["name"])
    return [e for e in entries if not Path(e["name"]).name.startswith((".", "_"))]


def _with_key(
    keys: tuple[tuple[str, str | None], ...], folder: str, uri: str
) -> tuple[tuple[str, str | None], ...]:
    """``keys`` and, for a key=value ``folder``, its key and value (URL escapes decoded,
    Hive's default partition missing)."""
    key, separator, value = folder.partition("=")
    if not (separator and key):
        return keys
    if any(key == seen for seen, _ in keys):
        raise DataError(
            "unreadable_data", f"{uri}: the partition key {key!r} appears twice in one path"
        )
    return (*keys, (key, None if value == _HIVE_NULL else unquote(value)))


def _check_keys_agree(batch: pa.RecordBatch, part: _Part, uri: str) -> None:
    """Raise DataError where a column of ``batch`` that is also a partition key of ``part``
    holds another value than its key=value folder (missing only under Hive's default
    partition). The key's text is read as the column's type, so "07" agrees with 7."""
    for key, value in part.keys:
        if key not in batch.schema.names:
            continue
        column = batch.column(key)
        if value is None:
            differs = pc.is_valid(column)
        else:
            expected = _key_as(value, column.type)
            compared = column
            if expected is None:  # compare as text what cannot be read in the column's type
                try:
                    compared = column.cast(pa.string())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    continue
                expected = pa.scalar(value)
            differs = pc.invert(pc.fill_null(pc.equal(compared, expected), False))
        if not pc.any(differs).as_py():
            continue
        found = column.filter(differs)[0].as_py()
        folder = f"{key}={_HIVE_NULL if value is None else value}"
        raise DataError(
            "unreadable_data",
            f"{uri}: {part.name} lies under the folder {folder} but its column {key!r} "
            f"holds {found!r}; drop the column from the files or rename the folder, so "
            "that each row has one value",
        )


def _key_as(value: str, kind: pa.DataType) -> pa.Scalar | None:
    """A key=value folder's value read in a column's type (a time zone's timestamp from a
    time without one, read as UTC, as pyarrow writes it), or None."""
    try:
        return pa.scalar(value).cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if pa.types.is_timestamp(kind) and kind.tz is not None:
        try:
            return pa.scalar(value).cast(pa.timestamp(kind.unit)).cast(kind)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return None


def _with_keys(
    batch: pa.RecordBatch, wanted: list[str], keys: dict[str, str | None]
) -> pa.RecordBatch:
    """``batch``'s columns in the order of ``wanted``, a partition key's (one that is not a
    column of the files) as its value."""
    if not keys and batch.schema.names == wanted:
        return batch
    arrays = [
        pa.array([keys[name]] * batch.num_rows, type=pa.string())
        if name not in batch.schema.names
        else batch.column(name)
        for name in wanted
    ]
    return pa.RecordBatch.from_arrays(arrays, names=wanted)


def _text_family(format: str) -> str:
    return "tsv" if format == "criteo" else format


def _line_blocks(stream: Any, size: int) -> Iterator[tuple[int, bytes]]:
    """The bytes of ``stream`` in blocks of about ``size`` that end at a line's end (but the
    last), each with the number of its first line (from 1); blocks of blank lines are skipped,
    and so is a UTF-8 byte order mark at the start."""
    pending: list[bytes] = []
    line = 1
    read = stream.read(size).removeprefix(_UTF8_BOM)
    while read:
        end = read.rfind(b"\n")
        if end < 0:
            pending.append(read)
        else:
            block = b"".join([*pending, read[: end + 1]])
            pending = [read[end + 1 :]]
            if block.strip():
                yield line, block
            line += block.count(b"\n")
        read = stream.read(size)
    rest = b"".join(pending)
    if rest.strip():
        yield line, rest


def _json_table(lines: bytes, uri: str, first_line: int) -> pa.Table:
    """JSON Lines as a table: by pyarrow, or by Python's json module, which names a bad line
    (``first_line`` is the number of the block's first), where pyarrow would not read a row
    per line exactly: a line that does not open an object (a blank one too), a key's values
    of two kinds, a key holding a number past float64's exact integers and a number that is
    not a whole one of at most 38 digits (a fraction, say), or no JSON."""
    # pyarrow would take some other lines (and crash on some: a null at the block's start),
    # and read objects one after the other on a line
    objects = lines.count(b"\n{") + lines.startswith(b"{")
    if objects != lines.count(b"\n") + (not lines.endswith(b"\n")):
        return _python_json_table(lines, uri, first_line)
    read_options = pa_json.ReadOptions(block_size=max(len(lines), 1 << 16))
    try:
        table = pa_json.read_json(pa.BufferReader(lines), read_options=read_options)
        # Read some keys again: text that pyarrow took for a time as text, and integers it
        # could hold only as floats (past int64: 64-bit ids) as whole decimals.
        again = [
            (field.name, pa.string() if pa.types.is_timestamp(field.type) else _WHOLE_NUMBERS)
            for field, column in zip(table.schema, table.columns, strict=True)
            if pa.types.is_timestamp(field.type) or _inexact(column)
        ]
        if again:
            exact = pa_json.ParseOptions(
                explicit_schema=pa.schema(again), unexpected_field_behavior="infer"
            )
            names = table.column_names
            table = pa_json.read_json(
                pa.BufferReader(lines), read_options=read_options, parse_options=exact
            ).select(names)
    except pa.ArrowInvalid:  # a fraction among the whole decimals too
        return _python_json_table(lines, uri, first_line)
    if table.num_rows != objects:
        return _python_json_table(lines, uri, first_line)
    return table


def _inexact(column: pa.ChunkedArray) -> bool:
    """Whether a column pyarrow read as floats may hold integers it could not hold exactly."""
    if not pa.types.is_floating(column.type) or column.null_count == len(column):
        return False
    largest = pc.max(pc.abs(column)).as_py()
    return largest is not None and largest >= _EXACT_INTEGERS


def _json_number(text: str) -> float | int:
    """A JSON number with a fraction or an exponent, as ``json.loads`` reads it, but a whole
    one past float64's exact integers exactly (``1e20`` as 10**20), as pyarrow reads it as a
    decimal."""
    value = float(text)
    if math.isfinite(value) and abs(value) >= _EXACT_INTEGERS:
        exact = decimal.Decimal(text)
        if exact == exact.to_integral_value():
            return int(exact)
    return value


def _python_json_table(lines: bytes, uri: str, first_line: int) -> pa.Table:
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines.split(b"\n"), start=first_line):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_float=_json_number)
        except RecursionError as exc:
            raise DataError(
                "unreadable_data", f"{uri}: line {number} nests lists or objects too deeply"
            ) from exc
        except ValueError as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise DataError(
                "unreadable_data",
                f"{uri}: line {number} is not JSON ({reason}): {_excerpt(line)}; JSON Lines "
                "data holds one whole object per line",
            ) from exc
        if not isinstance(row, dict):
            raise DataError(
                "unreadable_data",
                f"{uri}: line {number} holds {type(row).__name__} {_excerpt(line)}, not a "
                "JSON object",
            )
        rows.append(row)
    names = list(dict.fromkeys(key for row in rows for key in row))
    return pa.table({name: _python_texts([row.get(name) for row in rows]) for name in names})


def _python_texts(values: list[Any]) -> pa.Array:
    """JSON values as text, as ``_json_text`` writes pyarrow's; a list or an object as a
    list, which ``_json_text`` refuses by the key's name."""
    if any(isinstance(value, (list, dict)) for value in values):
        return pa.array([[] for _ in values], type=pa.list_(pa.null()))
    texts: list[str | None] = []
    for value in values:
        if value is None or isinstance(value, str):
            texts.append(value)
        elif isinstance(value, bool):
            texts.append("true" if value else "false")
        elif isinstance(value, int):
            texts.append(str(value))
        elif math.isfinite(value) and value.is_integer():  # 1.0, 1e10 and -0.0 as 1, ... and 0
            texts.append(str(int(value)))
        elif math.isfinite(value):
            texts.append(pa.scalar(float(value)).cast(pa.string()).as_py())
        else:
            texts.append(None)
    return pa.array(texts, type=pa.string())


def _json_text(table: pa.Table, name: str, uri: str, named: bool = False) -> pa.Array:
    """Column ``name`` of ``table`` as text (all missing where no object holds the key);
    named: the key is one of the caller's ``column_names``."""
    if name not in table.column_names:
        return pa.nulls(table.num_rows, type=pa.string())
    column = table.column(name).combine_chunks()
    if pa.types.is_floating(column.type):
        # NaN and infinities: missing, as Python reads them; whole numbers in digits, as a
        # key read as integers or decimals writes them (1e10 as 10000000000, not 1e+10)
        column = pc.if_else(pc.is_finite(column), column, pa.scalar(None, type=column.type))
        exact = pc.less(pc.abs(column), _EXACT_INTEGERS)
        whole = pc.and_(pc.equal(pc.floor(column), column), exact)
        return pc.if_else(
            whole,
            pc.cast(pc.if_else(whole, column, 0.0), pa.int64()).cast(pa.string()),
            column.cast(pa.string()),
        )
    if pa.types.is_nested(column.type):
        raise DataError(
            "unreadable_data",
            f"{uri}: the key {name!r} holds lists or objects"
            f"{'' if named else ' in later lines'}, which are not read; flatten them, or leave "
            f"the key out of {'column_names' if named else 'feature_columns'}",
        )
    text = column.cast(pa.string())
    text.validate(full=True)  # pyarrow's JSON reader lets bytes that are not UTF-8 through
    return text


def _excerpt(line: bytes, limit: int = 40) -> str:
    text = line.decode("utf-8", "replace").strip()
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _looks_like_criteo(line: str) -> bool:
    fields = line.split("\t")
    if len(fields) != len(CRITEO_COLUMNS) or fields[0].strip() not in ("0", "1"):
        return False
    return all(value == "" or _INTEGER.match(value.strip()) for value in fields[1:14])


def _check_batch_rows(batch_rows: int) -> None:
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"batch_rows: expected a positive integer, got {batch_rows!r}")


def _check_unique_columns(names: Sequence[str], description: str) -> None:
    seen: set[str] = set()
    duplicates = sorted({name for name in names if name in seen or seen.add(name)})  # type: ignore[func-returns-value]
    if duplicates:
        raise DataError("unreadable_data", f"{description}: duplicate column name(s) {duplicates}")


def _guarded(iterator: Iterator[Any], uri: str) -> Iterator[Any]:
    """Re-raise reading failures of a lazy iterator as DataError."""
    while True:
        with _data_errors(uri):
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item


@contextmanager
def _data_errors(uri: str) -> Iterator[None]:
    """Turn the exceptions of fsspec, pyarrow and decompressors into DataError."""
    try:
        yield
    except DataError:
        raise
    except FileNotFoundError as exc:
        # fsspec's HTTP filesystem says "not found" when the server did not answer at all
        silent = _connection_failure(exc)
        if silent is not None:
            raise DataError(
                "storage_unavailable", f"{uri}: the server did not answer ({_short(silent)})"
            ) from exc
        raise DataError("dataset_not_found", f"{uri}: no such file or object") from exc
    except PermissionError as exc:
        raise DataError("dataset_not_found", f"{uri}: access denied ({exc})") from exc
    except IsADirectoryError as exc:
        raise DataError("dataset_not_found", f"{uri}: is a folder, expected a file") from exc
    except (
        pa.ArrowException,
        OSError,
        EOFError,
        UnicodeDecodeError,
        io.UnsupportedOperation,
    ) as exc:
        raise DataError("unreadable_data", f"{uri}: cannot read the data ({_short(exc)})") from exc
    except ValueError as exc:
        # fsspec's HTTP file, from a server that answers only whole files
        if "range requests" not in str(exc):
            raise
        raise DataError(
            "unreadable_data",
            f"{uri}: the server sends only whole files, and reading this one needs parts of it "
            "(HTTP range requests); download it first, or serve it from a store or server that "
            "answers range requests",
        ) from exc


def _connection_failure(error: BaseException) -> BaseException | None:
    """The refused or timed-out connection (or unresolved host name) behind ``error``."""
    return first_cause(
        error, lambda cause: isinstance(cause, (ConnectionError, TimeoutError, socket.gaierror))
    )


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _URL_QUERY.sub(r"\1?...", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
