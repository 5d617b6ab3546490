"""The JSON job contract: what a job request holds.

``JobOptions`` is built from ``nacs_engine.config.option_fields()`` so every
option's type, range and description are written once, in the engine's
configuration; the HTTP schema and the engine cannot disagree.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_type_hints

from annotated_types import Ge, Le
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from nacs_engine.config import SelectionConfig, option_fields

DataFormat = Literal["parquet", "csv", "tsv", "jsonl", "criteo"]
# The formats column_names applies to (None: the format the file's name says).
_NAMED_COLUMN_FORMATS = (None, "csv", "tsv", "jsonl")

_CONFIG_HINTS = get_type_hints(SelectionConfig, include_extras=True)
_DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"
# The largest integer every JSON reader holds exactly (a double's 53-bit mantissa): larger seeds
# compare differently in a reader that parses numbers as doubles than in this service.
_LARGEST_SEED = 2**53 - 1
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


def _whole_number(value: Any) -> Any:
    """A float without a fractional part as the int it equals: JSON Schema's ``integer`` counts
    1.0 as an integer, so the API accepts what its schema allows. Other values pass as they
    are (strict validation refuses 2.5, "3" and true)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _integer_or_whole_float(hint: Any) -> Any:
    """``hint``, accepting whole-number floats where it is an integer (or an optional one)."""
    if _holds_int(hint):
        return Annotated[hint, BeforeValidator(_whole_number)]
    return hint


def _holds_int(hint: Any) -> bool:
    return hint is int or any(_holds_int(arg) for arg in get_args(hint))


def _options_model() -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for option in option_fields():
        hint = _CONFIG_HINTS[option.name]
        extra: dict[str, Any] = {}
        if option.name == "device":
            extra["pattern"] = _DEVICE_PATTERN
        if option.name == "seed":
            hint = Annotated[int, Ge(0), Le(_LARGEST_SEED)]
        fields[option.name] = (
            _integer_or_whole_float(hint),
            Field(default=option.default, description=option.metadata.get("doc"), **extra),
        )
    return create_model(
        "JobOptions",
        __config__=_STRICT,
        __doc__="Options of the selection; each has a default and a documented range.",
        **fields,
    )


if TYPE_CHECKING:  # the types the engine's configuration gives these, as a checker sees them
    JobOptions = BaseModel
    RatioBudget = float | None
    SizeBudget = int | None
    from nacs_engine.config import Method as MethodName
else:
    JobOptions = _options_model()
    RatioBudget = _CONFIG_HINTS["ratio"]
    SizeBudget = _integer_or_whole_float(_CONFIG_HINTS["size"])
    MethodName = _CONFIG_HINTS["method"]
_ColumnName = Annotated[str, Field(min_length=1, max_length=256)]


# Exactly one budget, as the schema says it: a number ``ratio`` and no ``size`` (absent or null),
# or an integer ``size`` and no ``ratio``.
_NUMBER, _INTEGER, _NULL = {"type": "number"}, {"type": "integer"}, {"type": "null"}
_ONE_BUDGET: dict[str, Any] = {
    "oneOf": [
        {"required": ["ratio"], "properties": {"ratio": _NUMBER, "size": _NULL}},
        {"required": ["size"], "properties": {"size": _INTEGER, "ratio": _NULL}},
    ]
}


# The longest dataset_uri or output_uri a request may give, as given and as resolved.
MAX_URI_LENGTH = 4096


def _column_list(description: str, **limits: Any) -> Any:
    """A request field listing column names, each once: a repeat is refused at submit
    (``JobRequest.submit_problem``), not when a stored request is read back."""
    unique: dict[str, Any] = {"uniqueItems": True}
    return Field(max_length=10_000, json_schema_extra=unique, description=description, **limits)


class JobRequest(BaseModel):
    """A selection job: which data, what budget (exactly one of ratio and size), which method and
    options, where to write."""

    model_config = ConfigDict(**_STRICT, json_schema_extra=_ONE_BUDGET)

    dataset_uri: str = Field(
        min_length=1,
        max_length=MAX_URI_LENGTH,
        description="file://, s3://, gs:// or https:// URI (or an absolute local path) of a "
        "Parquet, CSV, TSV or JSON Lines dataset.",
    )
    ratio: RatioBudget = Field(
        default=None, description=SelectionConfig.__dataclass_fields__["ratio"].metadata["doc"]
    )
    size: SizeBudget = Field(
        default=None, description=SelectionConfig.__dataclass_fields__["size"].metadata["doc"]
    )
    label_column: _ColumnName = Field(
        default="label",
        description="Column of 0/1 labels (or booleans, or text: 0/1, true/false, yes/no).",
    )
    feature_columns: list[_ColumnName] | None = _column_list(
        "Feature columns, at least one, each once, not the label column; by default every "
        "column but the label.",
        default=None,
        min_length=1,
    )
    numeric_columns: list[_ColumnName] = _column_list(
        "Numeric columns (not the label column), bucketed before encoding; when none are "
        "named, columns of numbers with a fractional value and of dates are numeric (unless "
        "numeric_detection is false).",
        default_factory=list,
    )
    numeric_detection: bool = Field(
        default=True,
        description="When no numeric_columns are named: read columns of numbers with a "
        "fractional value and of dates as numeric; false: every column is a category.",
    )
    format: DataFormat | None = Field(
        default=None,
        description="parquet, csv, tsv, jsonl (JSON Lines) or criteo; by default from the file "
        "name.",
    )
    column_names: list[_ColumnName] | None = _column_list(
        "The names of a CSV or TSV file's columns, in order, for a file without a header line "
        "(its first line is then data); by default the first line names them. For JSON Lines, "
        "the keys to read, wherever they first appear; by default the keys of the first "
        "megabyte.",
        default=None,
        min_length=1,
    )
    method: MethodName = Field(
        default="nacs", description=SelectionConfig.__dataclass_fields__["method"].metadata["doc"]
    )
    options: JobOptions = Field(default_factory=JobOptions)
    output_uri: str | None = Field(
        default=None,
        max_length=MAX_URI_LENGTH,
        description="Where to write the result; by default a folder for the job under the "
        "tenant's prefix.",
    )

    @field_validator("dataset_uri", "output_uri")
    @classmethod
    def _no_control_characters(cls, value: str | None) -> str | None:
        if value is not None and re.search(r"[\x00-\x1f\x7f]", value):
            raise ValueError("must not contain control characters")
        return value.strip() if value is not None else None

    @field_validator("column_names")
    @classmethod
    def _named_text_columns(
        cls, value: list[str] | None, info: ValidationInfo
    ) -> list[str] | None:
        given = info.data.get("format")
        if value is not None and given not in _NAMED_COLUMN_FORMATS:
            raise ValueError(
                f"only for a CSV or TSV file without a header line, or JSON Lines, not {given}"
            )
        return value

    @model_validator(mode="after")
    def _one_budget(self) -> JobRequest:
        if (self.ratio is None) == (self.size is None):
            raise ValueError(
                "ratio, size: give exactly one budget, a ratio in (0, 1) or a size of at least 1"
            )
        if self.label_column in (self.feature_columns or []):
            raise ValueError("feature_columns: must not contain the label column")
        if self.label_column in self.numeric_columns:
            raise ValueError("numeric_columns: must not contain the label column")
        return self

    def submit_problem(self) -> tuple[str, str] | None:
        """The field and the message of what a new request gets wrong that its job would fail
        on: a column named twice, column_names for a file whose name says it is not CSV, TSV
        or JSON Lines. Not a validator: requests stored before these checks must still read back."""
        for name, columns in (
            ("feature_columns", self.feature_columns or []),
            ("numeric_columns", self.numeric_columns),
            ("column_names", self.column_names or []),
        ):
            repeated = sorted({column for column in columns if columns.count(column) > 1})
            if repeated:
                return name, f"{name}: duplicate column name(s) {repeated}"
        if self.column_names is not None and self.format is None:
            from nacs_engine.data.reading import format_from_name

            named = format_from_name(self.dataset_uri)
            if named not in _NAMED_COLUMN_FORMATS:
                return "column_names", (
                    "column_names: only for a CSV or TSV file without a header line, or JSON "
                    f"Lines; the dataset's name says {named} (give format to read it otherwise)"
                )
        return None

    def to_config(self) -> SelectionConfig:
        """The engine's configuration for this request."""
        return SelectionConfig(
            ratio=self.ratio, size=self.size, method=self.method, **self.options.model_dump()
        )
