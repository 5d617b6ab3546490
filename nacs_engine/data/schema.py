"""Which columns are the label, the features and the numeric features; label parsing.

A CTR table has one binary label column and F feature columns. Features are
categorical unless named numeric; numeric features are bucketed (see
``encoding.numeric_tokens``) and then treated as categorical too. By default every
column but the label is a feature, and the Criteo layout's I1-I13 are numeric
(``Encoder.fit`` also makes numeric the floating-point columns with fractional values
when no numeric columns are named).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nacs_engine.data.reading import CRITEO_NUMERIC
from nacs_engine.errors import DataError

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_DIGITS = re.compile(r"\d+")
_LABEL_LIKE = frozenset({"label", "click", "clicked", "is_click", "target", "y"})


@dataclass(frozen=True)
class TableSchema:
    """The resolved roles of the columns of one table.

    label_column: the binary label.
    feature_columns: the F feature columns, in the order of the encoded fields.
    numeric_columns: the subset of feature_columns that are bucketed numbers.
    """

    label_column: str
    feature_columns: tuple[str, ...]
    numeric_columns: tuple[str, ...]

    def is_numeric(self, column: str) -> bool:
        return column in self.numeric_columns

    def to_dict(self) -> dict[str, object]:
        return {
            "label_column": self.label_column,
            "feature_columns": list(self.feature_columns),
            "numeric_columns": list(self.numeric_columns),
        }


def resolve_schema(
    columns: Sequence[str],
    *,
    label_column: str = "label",
    feature_columns: Sequence[str] | None = None,
    numeric_columns: Sequence[str] | None = None,
    layout: str | None = None,
    description: str = "the data",
    header_line: bool = False,
    named_columns: bool = False,
) -> TableSchema:
    """Resolve the column roles against the columns a source actually has.

    header_line: the column names are a text file's first line (a missing label column
    then says whether that line looks like data).
    named_columns: the columns are those the caller named in ``column_names`` (a missing
    column then says to name it there).
    Raises DataError "label_column_missing" or "column_missing" naming the
    column and listing those available; ValueError naming the argument when the
    arguments contradict each other.
    """
    if not isinstance(label_column, str) or not label_column:
        raise ValueError(f"label_column: expected a column name, got {label_column!r}")
    feature_columns = check_column_names("feature_columns", feature_columns)
    numeric_columns = check_column_names("numeric_columns", numeric_columns)
    available = list(columns)
    if label_column not in available:
        likely = [c for c in available if c.strip().lower() in _LABEL_LIKE]
        close = closest_name(label_column, available)
        named = hint = ""
        if close is not None:
            named = (
                f" (did you mean {close!r}? label_column={close!r}, or --label-column {close} "
                "on the command line)"
            )
        elif likely:
            hint = (
                f"; to use {likely[0]!r}, name it the label column (label_column={likely[0]!r}, "
                f"or --label-column {likely[0]} on the command line)"
            )
        if named_columns and close is None and not likely:
            hint += (
                "; the columns read are those named in column_names (--column-names on the "
                "command line): name the label column there too"
            )
        numbers = [c for c in available if _NUMBER.match(c.strip())]
        if header_line and numbers:
            hint += (
                f"; the first line, read as the header, holds numbers ({_listing(numbers[:3])}): "
                "if it is data, give the columns' names in column_names (--column-names on the "
                "command line)"
            )
        separators = [mark for mark in (";", "|", "\t") if any(mark in c for c in available)]
        if len(available) == 1 and separators:
            hint += (
                f"; the one column's name holds {separators[0]!r}: the file is read as "
                "comma-separated (CSV) or tab-separated (format 'tsv') text, and no other "
                "separator"
            )
        raise DataError(
            "label_column_missing",
            f"label_column: {description} has no column {label_column!r}{named}; "
            f"available columns: {_listing(available)}{hint}",
        )
    if feature_columns is None:
        features = tuple(c for c in available if c != label_column)
    else:
        if not feature_columns:
            raise ValueError("feature_columns: give at least one column, or None for all")
        if label_column in feature_columns:
            raise ValueError(f"feature_columns: includes the label column {label_column!r}")
        _require(
            feature_columns, available, label_column, "feature_columns", description, named_columns
        )
        features = tuple(feature_columns)
    if not features:
        raise DataError(
            "column_missing",
            f"feature_columns: {description} has no column besides the label {label_column!r}",
        )
    if numeric_columns is None:
        numeric = tuple(c for c in CRITEO_NUMERIC if c in features) if layout == "criteo" else ()
    else:
        _require(
            numeric_columns, available, label_column, "numeric_columns", description, named_columns
        )
        outside = [c for c in numeric_columns if c not in features]
        if outside:
            raise ValueError(
                f"numeric_columns: {outside} are not among the feature columns"
                + (f" (the label column is {label_column!r})" if label_column in outside else "")
            )
        numeric = tuple(numeric_columns)
    return TableSchema(label_column, features, numeric)


class LabelReader:
    """Reads the label column of a dataset, batch by batch, as float32 0/1.

    Accepts integers 0/1, floats 0.0/1.0, booleans and the strings "0", "1", "0.0", "1.0",
    "true", "false", "t", "f", "yes", "no", "y", "n" (any case); and labels written -1/1
    (integers, floats or the strings "-1", "-1.0", "+1", "+1.0", as LIBSVM writes them),
    -1 read as a non-click. A dataset keeps one convention: a -1 in a dataset that also holds
    a 0 (or false, no) is an error, since either could be the non-click; and data encoded
    with an encoding fitted on other data (``fitted``: that data's ``convention``) must keep
    its convention. Anything else, nulls included, is DataError "labels_not_binary" naming
    the column and an offending value.
    """

    def __init__(
        self, name: str, description: str = "the data", fitted: str | None = None
    ) -> None:
        self.name = name
        self.description = description
        self.fitted = fitted
        # The first row (counting from 0) of each non-click convention seen, None if none.
        self.minus_one_row: int | None = None
        self.zero_row: int | None = None

    @property
    def convention(self) -> str:
        """How the non-clicks are written: "-1/1" when a label read was -1 (or the data the
        encoding was fitted on wrote them so), else "0/1"."""
        minus = self.minus_one_row is not None or self.fitted == "-1/1"
        return "-1/1" if minus else "0/1"

    @property
    def seen(self) -> str | None:
        """The convention the labels read so far show: None while they hold no non-click."""
        if self.minus_one_row is None and self.zero_row is None:
            return None
        return self.convention

    def read(self, column: pa.Array | pa.ChunkedArray, first_row: int = 0) -> np.ndarray:
        """The (n,) float32 0/1 labels of one batch's label column, whose first row is row
        ``first_row`` of the data (for messages)."""
        values = _label_values(column, self.name, self.description, first_row)
        minus = values < 0.0
        if self.minus_one_row is None and minus.any():
            self.minus_one_row = first_row + int(np.argmax(minus))
        if self.zero_row is None and (values == 0.0).any():
            self.zero_row = first_row + int(np.argmax(values == 0.0))
        column_name = f"label_column: {self.name!r} in {self.description}"
        if self.minus_one_row is not None and self.zero_row is not None:
            raise DataError(
                "labels_not_binary",
                f"{column_name} holds both -1 (row {self.minus_one_row}, counting from 0) and 0 "
                f"(row {self.zero_row}): labels are 0/1 or -1/1, one or the other, so which "
                "one is the non-click is unclear",
            )
        fitted_on = {"-1/1": self.zero_row, "0/1": self.minus_one_row}.get(self.fitted or "")
        if fitted_on is not None:
            written = "0" if self.fitted == "-1/1" else "-1"
            raise DataError(
                "labels_not_binary",
                f"{column_name} holds {written} (row {fitted_on}, counting from 0), and the data "
                f"the encoding was fitted on wrote its labels {self.fitted}: encode data "
                "written one way with an encoding fitted on data written the same way",
            )
        values[minus] = 0.0
        return values


def _label_values(
    column: pa.Array | pa.ChunkedArray, name: str, description: str, first_row: int
) -> np.ndarray:
    """The (n,) float32 labels of a batch, each -1, 0 or 1, as written."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise DataError(
            "labels_not_binary",
            f"label_column: {name!r} in {description} has a missing value "
            f"(row {first_row + _first_null(column)}, counting from 0); every row needs a "
            f"label, {_BINARY}",
        )
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if pa.types.is_boolean(kind):
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float32)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        values = np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False))
        bad = ~((values == 0.0) | (values == 1.0) | (values == -1.0))
        if bad.any():
            raise _not_binary(name, description, column[int(np.argmax(bad))].as_py())
        return values.astype(np.float32)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = pc.utf8_lower(pc.utf8_trim_whitespace(column))
        ones = pc.is_in(
            text, value_set=pa.array(["1", "1.0", "+1", "+1.0", "true", "t", "yes", "y"])
        )
        zeros = pc.is_in(text, value_set=pa.array(["0", "0.0", "false", "f", "no", "n"]))
        minus = pc.is_in(text, value_set=pa.array(["-1", "-1.0"]))
        ok = np.asarray(pc.or_(pc.or_(ones, zeros), minus).to_numpy(zero_copy_only=False))
        if not ok.all():
            raise _not_binary(name, description, column[int(np.argmin(ok))].as_py())
        values = np.asarray(ones.to_numpy(zero_copy_only=False), dtype=np.float32)
        values[np.asarray(minus.to_numpy(zero_copy_only=False))] = -1.0
        return values
    raise DataError(
        "labels_not_binary",
        f"label_column: {name!r} in {description} has type {kind}; {_BINARY}",
    )


_BINARY = "labels must be binary (0/1, 0.0/1.0, -1/1, true/false, yes/no or '0'/'1')"


def _not_binary(name: str, description: str, value: object) -> DataError:
    return DataError(
        "labels_not_binary",
        f"label_column: {name!r} in {description} has the value {value!r}; {_BINARY}",
    )


def _first_null(column: pa.Array) -> int:
    return int(np.argmax(np.asarray(column.is_null().to_numpy(zero_copy_only=False))))


def check_column_names(argument: str, names: Sequence[str] | None) -> tuple[str, ...] | None:
    """``names`` as a tuple of distinct non-empty strings (None stays None);
    ValueError naming ``argument`` otherwise."""
    if names is None:
        return None
    if isinstance(names, (str, bytes)):
        raise ValueError(f"{argument}: expected a list of column names, got {names!r}")
    try:
        names = tuple(names)
    except TypeError as exc:
        raise ValueError(f"{argument}: expected a list of column names, got {names!r}") from exc
    if not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{argument}: expected a list of column names, got {list(names)!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{argument}: duplicate column name(s) {duplicates}")
    return names


def _require(
    names: Sequence[str],
    available: Sequence[str],
    label_column: str,
    argument: str,
    description: str,
    named_columns: bool = False,
) -> None:
    missing = [n for n in names if n not in available]
    if missing:
        # The label column cannot be a feature: it is no likely meaning of a misspelt one.
        hint = spelling_hint(missing, [c for c in available if c != label_column])
        raise DataError(
            "column_missing",
            f"{argument}: {description} has no column(s) {missing}{hint}; "
            f"available columns: {_listing(available)}"
            + ("; the columns read are those named in column_names: name these there too"
               if named_columns else ""),
        )


def closest_name(name: str, candidates: Iterable[str]) -> str | None:
    """The one of ``candidates`` that ``name`` most likely misspells: the same but for
    case and surrounding spaces, else the closest by ``difflib`` (a ratio of at least 0.75,
    e.g. 'cupon' for 'coupon') among those that differ from it in more than their digits;
    None when none is close."""
    pool = [c for c in candidates if c != name]
    folded = name.strip().casefold()
    for candidate in pool:
        if candidate.strip().casefold() == folded:
            return candidate
    # Names that differ only in their digits ('I14', 'I4') are columns of a numbered series.
    letters = _DIGITS.sub("", folded)
    pool = [c for c in pool if _DIGITS.sub("", c.strip().casefold()) != letters]
    found = difflib.get_close_matches(name, pool, n=1, cutoff=0.75)
    return found[0] if found else None


def spelling_hint(names: Sequence[str], candidates: Iterable[str]) -> str:
    """' (did you mean ...?)' for those of ``names`` close to one of ``candidates``, else ''
    (to follow the names in a message)."""
    pool = list(candidates)
    pairs = [(name, closest_name(name, pool)) for name in names]
    guesses = [(name, close) for name, close in pairs if close is not None]
    if not guesses:
        return ""
    if len(names) == 1:
        return f" (did you mean {guesses[0][1]!r}?)"
    return " (did you mean " + ", ".join(f"{c!r} for {n!r}" for n, c in guesses) + "?)"


def _listing(names: Sequence[str], limit: int = 50) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
