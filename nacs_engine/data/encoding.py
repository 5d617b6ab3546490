"""Encoding CTR tables into per-field integer ids, in two bounded-memory passes.

Pass 1 (``Encoder.fit``) reads the batches once and counts every field's
values; values seen at least ``min_count`` times get ids 1..V (most frequent
first, ties by value), every other value maps to id 0, the field's
out-of-vocabulary (OOV) id. Pass 2 (``Encoder.transform``) reads the batches
again and writes the (n, F) int32 ids, into memory when small and into a
memory-mapped file under ``workdir`` when larger than a threshold, so that a
dataset larger than memory can be encoded. The same fitted ``Encoder`` can
transform another split: values it never saw (or saw too rarely) become OOV.

Tokens: categorical values are compared as strings (integer columns as
integers); a missing value is a token of its own. Numeric columns are bucketed
and the buckets are then categorical: by the Criteo rule (``bucketize``), unless it
gives a column of at least ``QUANTILE_BUCKETS`` distinct values fewer than
``MIN_RULE_BUCKETS`` buckets; such a column gets up to ``QUANTILE_BUCKETS``
equal-frequency buckets whose edges come from a sample of it (``numeric_edges``): the
rule would put every value of [0, 1), most z-scores or a year of timestamps into one
to seven buckets. When ``numeric_columns`` is None, a floating-point column with a
fractional value anywhere in the first pass is numeric, as is a text column (CSV) whose
values are all numbers (or missing) with a fraction somewhere, and a column of dates or
times (timestamp, date, time or duration types: numbers in their unit since 1970, a date
in seconds; or text all in ISO 8601, in seconds), always in equal-frequency buckets.

Fingerprint (``EncodedDataset.fingerprint``): a SHA-256 over the schema and
``min_count``, the vocabularies, and, row by row, the encoded ids, the labels,
the raw values of the numeric columns and a hash of every value that falls out
of the vocabulary. It changes when any label or any value of a used column
changes, or when the options change; it does not depend on the URI, the file
format or the batch size.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.data.reading import TableSource, as_source, open_source
from nacs_engine.data.schema import (
    LabelReader,
    TableSchema,
    check_column_names,
    resolve_schema,
    spelling_hint,
)
from nacs_engine.data.storage import DEFAULT_MEMMAP_THRESHOLD_BYTES, FeatureSink
from nacs_engine.errors import DataError

MISSING_TOKEN = "\x00missing"
"""The token of a missing categorical value (cannot occur in text data)."""
MISSING_CODE = np.iinfo(np.int64).min
"""The token of a missing value in integer and numeric fields."""

FractionCallback = Callable[[float, str], None]
"""progress(fraction, message), fraction in [0, 1]; it may raise to stop."""

_MERGE_ROWS = 1 << 20
# A numeric column of at least QUANTILE_BUCKETS distinct values is bucketed by quantiles
# when the Criteo rule gives it fewer buckets than this, else by the rule.
MIN_RULE_BUCKETS = 8
QUANTILE_BUCKETS = 32
# The quantiles' edges come from a uniform sample of this many of a column's values.
SAMPLE_VALUES = 65_536


def bucketize(values: np.ndarray) -> np.ndarray:
    """Bucket numeric values by the Criteo rule.

    values: (n,) float; NaN and infinities are missing.
    Returns (n,) int64 tokens: floor(ln(v)^2) for v > 2, else v truncated to an
    integer; ``MISSING_CODE`` for missing values. As in the rule, a large value
    can share a token with a small one (v = 3 and v = 1 both give 1).
    """
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, MISSING_CODE, dtype=np.int64)
    finite = np.isfinite(v)
    large = finite & (v > 2.0)
    out[large] = np.floor(np.square(np.log(v[large])))
    small = finite & ~large
    out[small] = np.trunc(v[small])
    return out


def numeric_tokens(values: np.ndarray, edges: np.ndarray | None) -> np.ndarray:
    """(n,) int64 tokens of numeric ``values``: ``bucketize``'s when ``edges`` is None, else
    the index of the bucket between ascending ``edges`` (0 below the first; a value equal to
    an edge goes above it); ``MISSING_CODE`` for NaN and infinities."""
    if edges is None:
        return bucketize(values)
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, MISSING_CODE, dtype=np.int64)
    finite = np.isfinite(v)
    out[finite] = np.searchsorted(edges, v[finite], side="right")
    return out


def numeric_edges(
    sample: np.ndarray, rule_buckets: int, *, always: bool = False
) -> np.ndarray | None:
    """The quantile edges of a numeric column from a sample of its finite values, or None
    when the Criteo rule serves: it gives the column ``rule_buckets`` buckets (those seen
    ``min_count`` times), at least ``MIN_RULE_BUCKETS``, or the sample holds fewer than
    ``QUANTILE_BUCKETS`` distinct values; with ``always`` (dates and times, which the rule
    puts in one or two buckets whatever their spread) whenever the sample holds a value. A
    value that holds a bucket's share of the sample or more (a mass of zeros; each of a few
    dates) gets a bucket of its own; the other values share the remaining buckets by
    quantiles."""
    values, counts = np.unique(sample, return_counts=True)
    if values.shape[0] == 0:
        return None
    if not always and (rule_buckets >= MIN_RULE_BUCKETS or values.shape[0] < QUANTILE_BUCKETS):
        return None
    heavy = values[counts >= sample.shape[0] / QUANTILE_BUCKETS]
    rest = sample[~np.isin(sample, heavy)]
    # [v, the next float after v) holds v alone (a value equal to an edge goes above it).
    cuts = [heavy, np.nextafter(heavy, np.inf)]
    if rest.size:
        levels = np.linspace(0.0, 1.0, QUANTILE_BUCKETS - heavy.shape[0] + 1)[1:-1]
        cuts.append(np.quantile(rest, levels))
    return np.unique(np.concatenate(cuts))


class _NumericSample:
    """A uniform sample of one numeric column's finite values: every row draws a key and
    the rows of the smallest keys stay, so the sample does not depend on the batching."""

    def __init__(self, field: int) -> None:
        self._rng = np.random.default_rng(np.random.SeedSequence(entropy=field, spawn_key=(7,)))
        self._keys = np.empty(0, dtype=np.float64)
        self._values = np.empty(0, dtype=np.float64)
        self.finite = 0
        self.missing = 0

    def add(self, values: np.ndarray) -> None:
        keys = np.asarray(self._rng.random(values.shape[0]), dtype=np.float64)
        finite = np.isfinite(values)
        self.finite += int(finite.sum())
        self.missing += int(values.shape[0] - finite.sum())
        self._keys = np.concatenate([self._keys, keys[finite]])
        self._values = np.concatenate([self._values, values[finite]])
        if self._keys.shape[0] > 2 * SAMPLE_VALUES:
            self._shrink()

    def _shrink(self) -> None:
        if self._keys.shape[0] > SAMPLE_VALUES:
            keep = np.argpartition(self._keys, SAMPLE_VALUES - 1)[:SAMPLE_VALUES]
            self._keys, self._values = self._keys[keep], self._values[keep]

    def values(self) -> np.ndarray:
        self._shrink()
        return self._values

    def vocabulary(self, edges: np.ndarray, min_count: int) -> Vocabulary:
        """The quantile buckets' vocabulary, their counts estimated from the sample."""
        sample = self.values()
        counts = np.bincount(np.searchsorted(edges, sample, side="right"), minlength=edges.size + 1)
        scaled = np.rint(counts * (self.finite / max(sample.shape[0], 1))).astype(np.int64)
        values = np.arange(edges.size + 1, dtype=np.int64)
        if self.missing:
            values = np.append(values, MISSING_CODE)
            scaled = np.append(scaled, self.missing)
        return _integer_vocabulary(values, scaled, min_count)


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """The ids of one field's values.

    kind: "int" (integer tokens, numeric buckets included) or "str".
    values: (V,) the values of ids 1..V, in id order (int64 or object of str).
    counts: (V,) int64 how often each was seen in the fitted data.
    """

    kind: str
    values: np.ndarray
    counts: np.ndarray

    @property
    def size(self) -> int:
        """Number of ids, the OOV id 0 included."""
        return int(self.values.shape[0]) + 1

    def lookup(self, tokens: np.ndarray | pa.Array) -> np.ndarray:
        """(n,) int32 ids of the tokens; 0 for values not in the vocabulary.

        tokens: int64 values (kind "int"), or strings as an object array or a
        pyarrow string array (kind "str").
        """
        if self.values.shape[0] == 0:
            return np.zeros(len(tokens), dtype=np.int32)
        if self.kind == "int":
            return self._lookup_integers(np.asarray(tokens, dtype=np.int64))
        if isinstance(tokens, pa.Array):
            # look each distinct value up once, then spread the ids over the rows
            encoded = tokens.dictionary_encode()
            distinct = encoded.dictionary.to_numpy(zero_copy_only=False)
            distinct_ids = (self._index.get_indexer(distinct) + 1).astype(np.int32)
            return distinct_ids[encoded.indices.to_numpy(zero_copy_only=False)]
        return (self._index.get_indexer(np.asarray(tokens, dtype=object)) + 1).astype(np.int32)

    def _lookup_integers(self, tokens: np.ndarray) -> np.ndarray:
        dense = self._dense
        if dense is not None:
            low, table, missing_id = dense
            offset = tokens - low
            inside = (offset >= 0) & (offset < table.shape[0])
            ids = table[np.where(inside, offset, 0)]
            ids[~inside] = 0
            if missing_id:
                ids[tokens == MISSING_CODE] = missing_id
            return ids
        order, sorted_values = self._sorted
        pos = np.searchsorted(sorted_values, tokens)
        np.minimum(pos, sorted_values.shape[0] - 1, out=pos)
        hit = sorted_values[pos] == tokens
        return np.where(hit, order[pos] + 1, 0).astype(np.int32)

    @cached_property
    def _dense(self) -> tuple[int, np.ndarray, int] | None:
        """(lowest value, id of each value from it, id of the missing token) when the
        values span a small range, so that a lookup is one gather."""
        present = self.values != MISSING_CODE
        missing = np.flatnonzero(~present)
        missing_id = int(missing[0]) + 1 if missing.size else 0
        values = self.values[present]
        if values.size == 0:
            return 0, np.zeros(1, dtype=np.int32), missing_id
        low, high = int(values.min()), int(values.max())
        if high - low >= max(1 << 20, 8 * values.size):
            return None
        table = np.zeros(high - low + 1, dtype=np.int32)
        table[values - low] = np.flatnonzero(present) + 1
        return low, table, missing_id

    @cached_property
    def _sorted(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.values, kind="stable")
        return order, self.values[order]

    @cached_property
    def _index(self) -> Any:
        import pandas as pd

        return pd.Index(self.values, dtype=object)

    def digest(self) -> bytes:
        h = hashlib.sha256()
        h.update(_token_hashes(self.values, self.kind).astype("<u8").tobytes())
        return h.digest()


class Encoder:
    """Per-field vocabularies fitted on one source, applied to any source.

    label_column, feature_columns, numeric_columns: the column roles (see
        ``schema.resolve_schema``); feature_columns None means every column but
        the label.
    min_count: values seen fewer times map to the field's OOV id 0.
    """

    def __init__(
        self,
        *,
        label_column: str = "label",
        feature_columns: Sequence[str] | None = None,
        numeric_columns: Sequence[str] | None = None,
        min_count: int = 10,
    ) -> None:
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count: expected a positive integer, got {min_count!r}")
        if not isinstance(label_column, str) or not label_column:
            raise ValueError(f"label_column: expected a column name, got {label_column!r}")
        self.label_column = label_column
        self.requested_features = check_column_names("feature_columns", feature_columns)
        self.requested_numeric = check_column_names("numeric_columns", numeric_columns)
        self.min_count = min_count
        self.schema: TableSchema | None = None
        self.vocabularies: tuple[Vocabulary, ...] = ()
        # Per field: the quantile edges of a numeric field bucketed by quantiles, else None.
        self.bucket_edges: tuple[np.ndarray | None, ...] = ()
        self.fitted_rows = 0
        self.fitted_clicks = 0
        self.fitted_on = ""
        self.whole_number_columns: tuple[str, ...] = ()
        # How the fitted data wrote its non-clicks: "0/1", or "-1/1" (``LabelReader``); None
        # when it held none.
        self.fitted_labels: str | None = None

    @property
    def is_fitted(self) -> bool:
        return self.schema is not None

    def fitted_digest(self) -> str:
        """A hex digest of what the fit learned and counted: the encoding (schema,
        vocabularies in id order, bucket edges) and the rows and clicks it read. Data read
        again with the same digest encodes to the same ids, barring labels moved between
        rows."""
        digest = _encoding_hash(self, self._fitted_schema())
        digest.update(f"rows={self.fitted_rows};clicks={self.fitted_clicks}".encode())
        return str(digest.hexdigest())

    @property
    def field_names(self) -> tuple[str, ...]:
        return self._fitted_schema().feature_columns

    @property
    def field_dims(self) -> tuple[int, ...]:
        return tuple(v.size for v in self.vocabularies)

    def fit(self, source: Any, *, progress: FractionCallback | None = None) -> Encoder:
        """Count the values of ``source`` (a URI, table or ``TableSource``) and build vocabularies."""
        source = as_source(source)
        schema = resolve_schema(
            source.columns,
            label_column=self.label_column,
            feature_columns=self.requested_features,
            numeric_columns=self.requested_numeric,
            layout=source.layout,
            description=source.description,
            header_line=source.header_line,
            named_columns=source.named_columns,
        )
        columns = [schema.label_column, *schema.feature_columns]
        counters = [_ValueCounter() for _ in schema.feature_columns]
        samples: dict[int, _NumericSample] = {}
        # Floating-point columns not named numeric: counted both ways until the pass shows
        # whether any of their values has a fraction (then they are numeric). Columns of
        # dates and times are numeric (as categories nearly every value would be rare).
        as_text: dict[int, _ValueCounter] = {}
        detected: set[int] = set()
        temporal: set[int] = set()
        # whether a text column being tried as numbers held dates and times (ISO 8601 text)
        text_times: dict[int, bool] = {}
        kinds: list[str] | None = None
        floating: set[int] = set()
        rows = 0
        clicks = 0.0
        label_reader = LabelReader(schema.label_column, source.description)
        for batch, fraction in source.batches(columns):
            try:
                labels = label_reader.read(batch.column(0), first_row=rows)
            except DataError as error:
                if schema.label_column not in source.keys_without_values:
                    raise
                raise DataError(
                    "column_missing",
                    f"column_names: no object of the first {rows + batch.num_rows:,} rows of "
                    f"{source.description} holds the label key {schema.label_column!r}"
                    f"{spelling_hint([schema.label_column], source.unnamed_keys)}; check the "
                    "spelling",
                ) from error
            rows += batch.num_rows
            clicks += float(labels.sum(dtype=np.float64))
            if kinds is None:
                temporal = {
                    i
                    for i in range(len(schema.feature_columns))
                    if _is_temporal(batch.column(i + 1))
                }
                if self.requested_numeric is None:
                    detected = {
                        i
                        for i in temporal
                        if schema.feature_columns[i] not in schema.numeric_columns
                    }
                kinds = [
                    _field_kind(
                        batch.column(i + 1), name in schema.numeric_columns or i in detected
                    )
                    for i, name in enumerate(schema.feature_columns)
                ]
                if self.requested_numeric is None:
                    as_text = {
                        i: _ValueCounter()
                        for i, name in enumerate(schema.feature_columns)
                        if name not in schema.numeric_columns
                        and (_is_floating(batch.column(i + 1)) or _is_text(batch.column(i + 1)))
                    }
                    floating = {i for i in as_text if _is_floating(batch.column(i + 1))}
                samples = {
                    i: _NumericSample(i)
                    for i, name in enumerate(schema.feature_columns)
                    if name in schema.numeric_columns or i in as_text or i in detected
                }
            for i, name in enumerate(schema.feature_columns):
                column = batch.column(i + 1)
                if i in samples:
                    if i in as_text:
                        as_text[i].add(_tokens(column, kinds[i], name, source.description))
                        try:
                            read: tuple[np.ndarray, bool] | None = _read_numbers(
                                column, name, source.description
                            )
                        except DataError:  # not numbers nor dates: categories
                            read = None
                        seen = np.isfinite(read[0]).any() if read is not None else False
                        if read is None or (seen and text_times.setdefault(i, read[1]) != read[1]):
                            # not all numbers, or numbers and dates in turn: categories
                            counters[i] = as_text.pop(i)
                            del samples[i]
                            detected.discard(i)
                            temporal.discard(i)
                            continue
                        values = read[0]
                        if read[1]:  # ISO dates and times, as their Parquet types are
                            detected.add(i)
                            temporal.add(i)
                        elif i not in detected and _has_fraction(values):
                            detected.add(i)
                    else:  # named numeric: ISO dates and times among them get their buckets
                        values, times = _read_numbers(column, name, source.description)
                        if times:
                            temporal.add(i)
                    samples[i].add(values)
                    counters[i].add(bucketize(values))
                else:
                    counters[i].add(_tokens(column, kinds[i], name, source.description))
            _report(progress, fraction, f"counted {rows:,} rows of {source.description}")
        if rows == 0 or kinds is None:
            raise DataError("empty_dataset", f"{source.description}: the data has no rows")
        absent = [name for name in columns if name in source.keys_without_values]
        if absent:
            keys = ", ".join(map(repr, absent))
            raise DataError(
                "column_missing",
                f"column_names: no object of {source.description} holds a value for {keys}"
                f"{spelling_hint(absent, source.unnamed_keys)}; check the spelling, or leave "
                "the key out",
            )
        if detected:
            numeric = {schema.feature_columns[i] for i in detected} | set(schema.numeric_columns)
            schema = replace(
                schema, numeric_columns=tuple(c for c in schema.feature_columns if c in numeric)
            )
        # Floating-point columns of whole numbers only (pandas' integers with missing
        # values), read as categories: worth naming as numeric where they take many values
        # (counted before min_count, which may leave a long tail of counts few of them).
        whole_numbers = []
        for i in sorted(floating - detected):
            if i in as_text:
                values = as_text[i].distinct()
                if np.isin(values, [MISSING_TOKEN, "nan"], invert=True).sum() >= QUANTILE_BUCKETS:
                    whole_numbers.append(schema.feature_columns[i])
        vocabularies: list[Vocabulary] = []
        edges: list[np.ndarray | None] = []
        for i, counter in enumerate(counters):
            cut = None
            if i in as_text and i not in detected:
                vocabulary = as_text[i].vocabulary(kinds[i], self.min_count)
            elif i in samples:
                vocabulary = counter.vocabulary("int", self.min_count)
                rule_buckets = int(np.count_nonzero(vocabulary.values != MISSING_CODE))
                cut = numeric_edges(samples[i].values(), rule_buckets, always=i in temporal)
                if cut is not None:
                    vocabulary = samples[i].vocabulary(cut, self.min_count)
            else:
                vocabulary = counter.vocabulary(kinds[i], self.min_count)
            vocabularies.append(vocabulary)
            edges.append(cut)
        self.vocabularies = tuple(vocabularies)
        self.bucket_edges = tuple(edges)
        self.whole_number_columns = tuple(whole_numbers)
        self.fitted_labels = label_reader.seen
        self.schema = schema
        self.fitted_rows = rows
        self.fitted_clicks = int(round(clicks))
        self.fitted_on = source.description
        return self

    def transform(
        self,
        source: Any,
        *,
        workdir: str | os.PathLike[str] | None = None,
        progress: FractionCallback | None = None,
        memmap_threshold_bytes: int = DEFAULT_MEMMAP_THRESHOLD_BYTES,
        expected_rows: int | None = None,
    ) -> EncodedDataset:
        """Encode ``source`` with the fitted vocabularies.

        workdir: folder for the memory-mapped features when they exceed
            ``memmap_threshold_bytes`` (default: the system temp folder). The file
            is unlinked once mapped (on POSIX), so nothing is left behind.
        expected_rows: the row count when known (e.g. from ``fit`` on the same
            source), to preallocate the output.
        """
        schema = self._fitted_schema()
        source = as_source(source)
        if (
            isinstance(memmap_threshold_bytes, bool)
            or not isinstance(memmap_threshold_bytes, int)
            or memmap_threshold_bytes < 0
        ):
            raise ValueError(
                f"memmap_threshold_bytes: expected a non-negative integer, got {memmap_threshold_bytes!r}"
            )
        if schema.label_column not in source.columns:
            resolve_schema(
                source.columns,
                label_column=schema.label_column,
                description=source.description,
                header_line=source.header_line,
                named_columns=source.named_columns,
            )
        missing = [c for c in schema.feature_columns if c not in source.columns]
        if missing:
            raise DataError(
                "column_missing",
                f"feature_columns: {source.description} has no column(s) {missing}, which the "
                f"encoder was fitted on (from {self.fitted_on})",
            )
        n_fields = len(schema.feature_columns)
        hint = expected_rows if expected_rows is not None else source.total_rows
        sink = FeatureSink(n_fields, hint, memmap_threshold_bytes, workdir, source.description)
        hasher = _Fingerprint(self, schema)
        labels_parts: list[np.ndarray] = []
        oov_counts = np.zeros(n_fields, dtype=np.int64)
        columns = [schema.label_column, *schema.feature_columns]
        rows = 0
        label_reader = LabelReader(schema.label_column, source.description, self.fitted_labels)
        try:
            for batch, fraction in source.batches(columns):
                labels = label_reader.read(batch.column(0), first_row=rows)
                ids = np.empty((batch.num_rows, n_fields), dtype=np.int32)  # (b, F)
                for i, name in enumerate(schema.feature_columns):
                    vocab = self.vocabularies[i]
                    column = batch.column(i + 1)
                    if name in schema.numeric_columns:
                        values = _numeric_values(column, name, source.description)
                        hasher.add_numeric(i, values)
                        tokens = numeric_tokens(values, self.bucket_edges[i])
                    else:
                        tokens = _tokens(column, vocab.kind, name, source.description)
                    field_ids = vocab.lookup(tokens)
                    ids[:, i] = field_ids
                    oov = field_ids == 0
                    oov_counts[i] += int(oov.sum())
                    hasher.add_field(i, rows, oov, tokens, vocab.kind)
                hasher.add_rows(ids, labels)
                sink.append(ids)
                labels_parts.append(labels)
                rows += batch.num_rows
                _report(progress, fraction, f"encoded {rows:,} rows of {source.description}")
            if rows == 0:
                raise DataError("empty_dataset", f"{source.description}: the data has no rows")
            features, storage = sink.finish()
        except BaseException:
            sink.discard()
            raise
        labels_all = np.concatenate(labels_parts).astype(np.float32, copy=False)
        n_clicks = int(labels_all.sum(dtype=np.float64))
        metadata = {
            "source": source.description,
            "format": getattr(source, "format", "table"),
            "layout": source.layout,
            **schema.to_dict(),
            "min_count": self.min_count,
            "n_rows": rows,
            "n_clicks": n_clicks,
            "click_rate": n_clicks / rows,
            "label_values": label_reader.convention,
            "numeric_buckets": {
                name: "criteo rule"
                if cut is None
                else f"{int(np.count_nonzero(vocab.values != MISSING_CODE))} quantile buckets"
                for name, cut, vocab in zip(
                    schema.feature_columns, self.bucket_edges, self.vocabularies, strict=True
                )
                if name in schema.numeric_columns
            },
            "whole_number_columns": list(self.whole_number_columns),
            "unread_keys": source.unread_keys,
            "unread_key_count": source.unread_key_count,
            "oov_share": {
                name: float(count) / rows
                for name, count in zip(schema.feature_columns, oov_counts.tolist(), strict=True)
            },
            "fitted_on": self.fitted_on,
            "storage": storage,
        }
        return EncodedDataset(
            features=features,
            labels=labels_all,
            field_names=schema.feature_columns,
            field_dims=self.field_dims,
            fingerprint=hasher.hexdigest(),
            metadata=metadata,
        )

    def fit_transform(
        self,
        source: Any,
        *,
        workdir: str | os.PathLike[str] | None = None,
        progress: FractionCallback | None = None,
        memmap_threshold_bytes: int = DEFAULT_MEMMAP_THRESHOLD_BYTES,
    ) -> EncodedDataset:
        """Fit on ``source`` and encode it (two passes); progress spans both."""
        source = as_source(source)
        self.fit(source, progress=_scaled(progress, 0.0, 0.5))
        return self.transform(
            source,
            workdir=workdir,
            progress=_scaled(progress, 0.5, 1.0),
            memmap_threshold_bytes=memmap_threshold_bytes,
            expected_rows=self.fitted_rows,
        )

    def _fitted_schema(self) -> TableSchema:
        if self.schema is None:
            raise ValueError("encoder: not fitted yet; call fit(source) first")
        return self.schema


def load_dataset(
    uri: Any,
    *,
    label_column: str = "label",
    feature_columns: Sequence[str] | None = None,
    numeric_columns: Sequence[str] | None = None,
    format: str | None = None,
    column_names: Sequence[str] | None = None,
    min_count: int = 10,
    storage_options: dict[str, Any] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    batch_rows: int = 65536,
    progress: FractionCallback | None = None,
    memmap_threshold_bytes: int = DEFAULT_MEMMAP_THRESHOLD_BYTES,
) -> EncodedDataset:
    """Read and encode the dataset at ``uri`` (or a pyarrow Table / DataFrame).

    See ``reading.open_source`` for uri, format, column_names, storage_options
    and batch_rows, ``Encoder`` for the column roles and min_count. progress is
    called once per batch of each of the two passes with the overall fraction;
    exceptions it raises propagate.

    Raises DataError with code "dataset_not_found", "unreadable_data",
    "unsupported_format", "label_column_missing", "column_missing",
    "labels_not_binary" or "empty_dataset".
    """
    if isinstance(uri, (str, os.PathLike)):
        source: TableSource = open_source(
            uri,
            format=format,
            column_names=column_names,
            storage_options=storage_options,
            batch_rows=batch_rows,
        )
    else:
        if format is not None or column_names is not None or storage_options is not None:
            raise ValueError("format, column_names, storage_options: only for a URI, not a table")
        source = as_source(uri, batch_rows=batch_rows)
    encoder = Encoder(
        label_column=label_column,
        feature_columns=feature_columns,
        numeric_columns=numeric_columns,
        min_count=min_count,
    )
    return encoder.fit_transform(
        source, workdir=workdir, progress=progress, memmap_threshold_bytes=memmap_threshold_bytes
    )


# -- tokens -----------------------------------------------------------------------


def _field_kind(column: pa.Array, numeric: bool) -> str:
    kind = column.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    # uint64 ids (Avazu's) may not fit an int64 token: they are compared as text.
    integer = pa.types.is_integer(kind) and not pa.types.is_uint64(kind)
    return "int" if numeric or integer else "str"


def _text_times(column: pa.Array, not_numbers: pa.ArrowException) -> pa.Array:
    """Seconds since 1970 of ISO 8601 date-time texts, with or without a zone; raises
    ``not_numbers`` when they are not such texts either."""
    for kind in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        try:
            micros = column.cast(kind).cast(pa.int64()).cast(pa.float64())
        except pa.ArrowException:
            continue
        return pc.divide(micros, 1e6)
    raise not_numbers


def _is_temporal(column: pa.Array) -> bool:
    """A column of dates, times or durations: numbers in their unit since 1970 or midnight."""
    kind = _value_type(column)
    return bool(
        pa.types.is_timestamp(kind)
        or pa.types.is_date(kind)
        or pa.types.is_time(kind)
        or pa.types.is_duration(kind)
    )


def _value_type(column: pa.Array) -> pa.DataType:
    """The type of a column's values (a dictionary-encoded column's: its dictionary's)."""
    return column.type.value_type if pa.types.is_dictionary(column.type) else column.type


def _is_text(column: pa.Array) -> bool:
    kind = _value_type(column)
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _is_floating(column: pa.Array) -> bool:
    return bool(pa.types.is_floating(_value_type(column)))


def _has_fraction(values: np.ndarray) -> bool:
    """Whether a finite value is not a whole number (as categories, nearly every such value
    would be rare; whole numbers stored as floats, ids with missing values from pandas,
    stay categories)."""
    finite = values[np.isfinite(values)]
    return bool(finite.size) and bool(np.any(finite != np.floor(finite)))


def _tokens(column: pa.Array, kind: str, name: str, description: str) -> np.ndarray:
    """(n,) tokens of one categorical batch column: int64 numpy (kind "int") or a pyarrow
    string array without nulls (kind "str"); numeric columns go through ``numeric_tokens``."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if kind == "int":
        try:
            column = column.cast(pa.int64())
        except pa.ArrowException as exc:
            raise DataError(
                "unreadable_data",
                f"{description}: column {name!r} has non-integer values ({_first_line(exc)}); the "
                "encoder was fitted on integers in this column",
            ) from exc
        return np.asarray(
            column.fill_null(MISSING_CODE).to_numpy(zero_copy_only=False), dtype=np.int64
        )
    try:
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            column = pc.binary_join(column.cast(pa.list_(pa.string())), "|")
        if not pa.types.is_string(column.type):
            column = column.cast(pa.string())
    except pa.ArrowException as exc:
        raise DataError(
            "unreadable_data",
            f"{description}: column {name!r} of type {column.type} cannot be read as categories "
            f"({_first_line(exc)})",
        ) from exc
    return column.fill_null(MISSING_TOKEN)


# How text data writes a missing number (compared in lower case, trimmed).
_MISSING_NUMBERS = pa.array(["", "null", "na", "n/a", "#n/a", "nan", "none", "?", "-"])


def _numeric_values(column: pa.Array, name: str, description: str) -> np.ndarray:
    """(n,) float64 values of a numeric column, NaN where missing (null, or text such as
    "", "NA", "N/A", "#N/A", "null", "None", "?" or "-"). Dates and times count in their
    own unit since 1970 (a date as seconds), as do ISO 8601 texts of them
    ("2024-05-01 12:30:00", "2024-05-01T12:30:00Z", "2024-05-01")."""
    return _read_numbers(column, name, description)[0]


def _read_numbers(column: pa.Array, name: str, description: str) -> tuple[np.ndarray, bool]:
    """``_numeric_values`` of a column, and whether they were read from ISO 8601 text."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    times = False
    try:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            try:
                values = column.cast(pa.float64())
            except pa.ArrowException:
                column = pc.utf8_trim_whitespace(column)
                missing = pc.is_in(pc.utf8_lower(column), value_set=_MISSING_NUMBERS)
                column = pc.if_else(missing, pa.scalar(None, column.type), column)
                try:
                    values = column.cast(pa.float64())
                except pa.ArrowException as not_numbers:
                    values, times = _text_times(column, not_numbers), True
        elif _is_temporal(column):
            if pa.types.is_date(column.type):
                column = column.cast(pa.timestamp("s"))
            values = column.cast(pa.int64()).cast(pa.float64())
        else:
            values = column.cast(pa.float64())
    except pa.ArrowException as exc:
        raise DataError(
            "unreadable_data",
            f"numeric_columns: column {name!r} in {description} has a value that is not a number "
            f"({_first_line(exc)})",
        ) from exc
    return (
        np.asarray(values.fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float64),
        times,
    )


def _canonical_strings(tokens: np.ndarray | pa.Array, kind: str) -> np.ndarray:
    """(n,) object array of the tokens as text, the same whether a column was read
    as integers (Parquet) or as text (CSV); missing values become MISSING_TOKEN."""
    if isinstance(tokens, pa.Array):
        return np.asarray(tokens.to_numpy(zero_copy_only=False), dtype=object)
    if kind != "int":
        return np.asarray(tokens, dtype=object)
    tokens = np.asarray(tokens, dtype=np.int64)
    text = tokens.astype(str).astype(object)
    text[tokens == MISSING_CODE] = MISSING_TOKEN
    return text


def _token_hashes(tokens: np.ndarray, kind: str) -> np.ndarray:
    """(n,) uint64 hashes of the tokens' text, the same in every process."""
    import pandas as pd

    return pd.util.hash_array(_canonical_strings(tokens, kind), categorize=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# -- counting ---------------------------------------------------------------------


class _ValueCounter:
    """Counts of one field's tokens, merged batch after batch in bounded memory."""

    def __init__(self) -> None:
        self._values: list[pa.Array] = []
        self._counts: list[pa.Array] = []
        self._pending = 0
        self._merged = 0

    def add(self, tokens: np.ndarray | pa.Array) -> None:
        if not isinstance(tokens, pa.Array):
            tokens = pa.array(tokens, from_pandas=False)
        counted = pc.value_counts(tokens)
        self._values.append(counted.field("values"))
        self._counts.append(counted.field("counts"))
        self._pending += len(counted)
        if self._pending > max(_MERGE_ROWS, 2 * self._merged):
            self._merge()

    def _merge(self) -> None:
        if len(self._values) <= 1:
            return
        table = pa.table(
            {"value": pa.concat_arrays(self._values), "count": pa.concat_arrays(self._counts)}
        )
        grouped = table.group_by("value").aggregate([("count", "sum")])
        self._values = [grouped.column("value").combine_chunks()]
        self._counts = [grouped.column("count_sum").combine_chunks()]
        self._merged = len(grouped)
        self._pending = self._merged

    def distinct(self) -> np.ndarray:
        """The values counted so far, each once (the counts stay)."""
        self._merge()
        if not self._values:
            return np.array([], dtype=object)
        return np.asarray(self._values[0].to_numpy(zero_copy_only=False), dtype=object)

    def vocabulary(self, kind: str, min_count: int) -> Vocabulary:
        self._merge()
        if not self._values:
            empty = np.empty(0, dtype=np.int64 if kind == "int" else object)
            return Vocabulary(kind, empty, np.empty(0, dtype=np.int64))
        values = self._values[0]
        counts = np.asarray(self._counts[0].to_numpy(zero_copy_only=False), dtype=np.int64)
        if kind == "int":
            self._values, self._counts = [], []
            integers = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)
            return _integer_vocabulary(integers, counts, min_count)
        keep = np.flatnonzero(counts >= min_count)
        kept_counts = counts[keep]
        kept = values.take(pa.array(keep))
        order_table = pa.table({"value": kept, "count": pa.array(kept_counts)})
        order = np.asarray(
            pc.sort_indices(
                order_table, sort_keys=[("count", "descending"), ("value", "ascending")]
            ).to_numpy()
        )
        kept_values = np.asarray(kept.to_numpy(zero_copy_only=False), dtype=object)
        self._values, self._counts = [], []
        return Vocabulary(kind, kept_values[order], kept_counts[order])


def _integer_vocabulary(values: np.ndarray, counts: np.ndarray, min_count: int) -> Vocabulary:
    """The vocabulary of integer tokens ``values`` seen ``counts`` times: those seen at least
    ``min_count`` times, most frequent first, ties in text order as for text columns (so that
    ids do not depend on the file format)."""
    keep = np.flatnonzero(counts >= min_count)
    kept_values, kept_counts = values[keep], counts[keep]
    text = _canonical_strings(kept_values, "int").astype(str)
    order = np.lexsort((text, -kept_counts))
    return Vocabulary("int", kept_values[order], kept_counts[order])


# -- output -----------------------------------------------------------------------


def _encoding_hash(encoder: Encoder, schema: TableSchema) -> Any:
    """SHA-256 (a hashlib object) over what the encoder learned: the schema, min_count, the
    vocabularies (their values in id order) and the bucket edges."""
    header = json.dumps(
        {"schema": schema.to_dict(), "min_count": encoder.min_count}, sort_keys=True
    ).encode()
    digest = hashlib.sha256(header)
    for vocab in encoder.vocabularies:
        digest.update(vocab.digest())
    if any(edges is not None for edges in encoder.bucket_edges):
        for field, edges in enumerate(encoder.bucket_edges):
            digest.update(f"{field}:".encode())
            if edges is not None:
                digest.update(np.ascontiguousarray(edges, dtype="<f8").tobytes())
    return digest


class _Fingerprint:
    """SHA-256 over the encoding and the rows, independent of how rows are batched."""

    def __init__(self, encoder: Encoder, schema: TableSchema) -> None:
        self._header = _encoding_hash(encoder, schema)
        self._ids = hashlib.sha256()
        self._labels = hashlib.sha256()
        self._fields = [hashlib.sha256() for _ in schema.feature_columns]
        self._numeric = [hashlib.sha256() for _ in schema.feature_columns]

    def add_rows(self, ids: np.ndarray, labels: np.ndarray) -> None:
        self._ids.update(np.ascontiguousarray(ids, dtype="<i4").tobytes())
        self._labels.update(np.ascontiguousarray(labels, dtype="<f4").tobytes())

    def add_field(
        self,
        field: int,
        first_row: int,
        oov: np.ndarray,
        tokens: np.ndarray | pa.Array,
        kind: str,
    ) -> None:
        """Hash the positions and values of the tokens that fell out of the vocabulary."""
        where = np.flatnonzero(oov)
        if where.size == 0:
            return
        pairs = np.empty((where.size, 2), dtype="<u8")  # (m, 2): row position, value hash
        pairs[:, 0] = where + first_row
        chosen = tokens.take(pa.array(where)) if isinstance(tokens, pa.Array) else tokens[where]
        pairs[:, 1] = _token_hashes(chosen, kind)
        self._fields[field].update(pairs.tobytes())

    def add_numeric(self, field: int, values: np.ndarray) -> None:
        canonical = np.where(np.isnan(values), np.nan, values).astype("<f8")
        self._numeric[field].update(canonical.tobytes())

    def hexdigest(self) -> str:
        h = self._header.copy()
        h.update(self._ids.digest())
        h.update(self._labels.digest())
        for oov, numeric in zip(self._fields, self._numeric, strict=True):
            h.update(oov.digest())
            h.update(numeric.digest())
        return h.hexdigest()


def _report(progress: FractionCallback | None, fraction: float | None, message: str) -> None:
    if progress is not None:
        progress(0.0 if fraction is None else float(fraction), message)


def _scaled(progress: FractionCallback | None, start: float, end: float) -> FractionCallback | None:
    if progress is None:
        return None

    def scaled(fraction: float, message: str) -> None:
        progress(start + (end - start) * min(max(fraction, 0.0), 1.0), message)

    return scaled


def encode_splits(
    train: Any,
    *others: Any,
    label_column: str = "label",
    feature_columns: Sequence[str] | None = None,
    numeric_columns: Sequence[str] | None = None,
    min_count: int = 10,
    workdir: str | os.PathLike[str] | None = None,
) -> tuple[EncodedDataset, ...]:
    """Fit the vocabularies on ``train`` and encode it and every other split with them.

    Each split is a URI, a pyarrow Table, a DataFrame or a ``TableSource``; values
    of the other splits that train lacks (or has fewer than min_count times) map
    to the OOV id. Returns (train, *others) encoded, with the same field_dims.
    """
    encoder = Encoder(
        label_column=label_column,
        feature_columns=feature_columns,
        numeric_columns=numeric_columns,
        min_count=min_count,
    )
    encoded = [encoder.fit_transform(train, workdir=workdir)]
    encoded.extend(encoder.transform(split, workdir=workdir) for split in others)
    return tuple(encoded)
