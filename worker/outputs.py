"""The result of a job in storage: coreset.parquet, report.json and report.html, then
manifest.json last.

``Manifest`` is the one model of manifest.json: the worker writes it and the API serves it.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from worker.storage import OutputFolder

CORESET_FILE = "coreset.parquet"
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1


class DatasetSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    uri: str
    fingerprint: str = Field(description="Digest of the data as read.")
    rows: int
    clicks: int
    fields: list[str] = Field(default_factory=list)
    field_dims: list[int] = Field(default_factory=list)
    numeric_buckets: dict[str, str] = Field(
        default_factory=dict,
        description="How each numeric column was bucketed: 'criteo rule' or 'N quantiles'.",
    )
    whole_number_columns: list[str] = Field(
        default_factory=list,
        description="Floating-point columns of whole numbers only, read as categories, that "
        "take 32 values or more: numbers (counts, lengths, prices) to name as numeric columns.",
    )
    unread_keys: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="JSON Lines keys that first appear after the first megabyte of the first "
        "file, where the columns are read, so are not read (the first 20): each with where it "
        'first holds a value, {"line": number from 1, "file": path within the folder, for a '
        "folder of files}. Empty when the request names the keys to read in column_names.",
    )
    unread_key_count: int = Field(default=0, description="How many such keys the data holds.")
    label_values: str = Field(
        default="0/1",
        description='How the data wrote its labels: "0/1" (or true/false, yes/no), or "-1/1", '
        "-1 read as a non-click (the coreset's label column holds 0 for it).",
    )


class CoresetSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    uri: str
    rows: int
    clicks: int
    soft_label_mean: float = 0.0
    # The soft labels' mean under the delivered weights: the click rate a model learns.
    weighted_soft_label_mean: float | None = None
    weight_sum: float = 0.0


class Manifest(BaseModel):
    """manifest.json of a succeeded job. Fields beyond these (from newer engines) are kept."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    manifest_version: int = MANIFEST_VERSION
    job_id: str
    request: dict[str, Any] = Field(description="The accepted request, with defaults filled in.")
    engine_version: str
    method: str
    seed: int
    device: str
    host: str = ""
    created_at: str = Field(description="RFC 3339, UTC.")
    dataset: DatasetSummary
    coreset: CoresetSummary
    output_uri: str
    manifest_uri: str
    files: dict[str, str] = Field(default_factory=dict)
    """The output files by role, named relative to output_uri."""
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    noise: dict[str, Any] | None = None
    """Estimated wrong-label rate and the rows set aside."""
    audit: dict[str, Any] | None = None
    """The coreset checked against a random subset of the same size, with a verdict."""
    shards: dict[str, Any] | None = None
    """How the job was spread over workers: the shard plan and the time of every shard job
    (None for a job that ran as one)."""
    diagnostics: dict[str, Any] = Field(default_factory=dict, description="Engine diagnostics.")


def coreset_table(
    rows: np.ndarray, labels: np.ndarray, soft_labels: np.ndarray, weights: np.ndarray,
    uncertainty: np.ndarray,
) -> pa.Table:
    """One row per selected row: row int64, label, soft_label, weight, uncertainty (float32)."""
    return pa.table(
        {
            "row": pa.array(np.asarray(rows, dtype=np.int64)),
            "label": pa.array(np.asarray(labels, dtype=np.float32)),
            "soft_label": pa.array(np.asarray(soft_labels, dtype=np.float32)),
            "weight": pa.array(np.asarray(weights, dtype=np.float32)),
            "uncertainty": pa.array(np.asarray(uncertainty, dtype=np.float32)),
        }
    )


def write_coreset(folder: OutputFolder, table: pa.Table, workdir: str | None = None) -> str:
    """Write the coreset table into ``folder`` (by way of a local file in ``workdir``);
    returns its URI."""
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        local = os.path.join(scratch, CORESET_FILE)
        pq.write_table(table, local)
        return folder.upload(CORESET_FILE, local)


def write_manifest(folder: OutputFolder, manifest: Manifest) -> str:
    """Write manifest.json into ``folder`` (call it last: its presence means the result is
    complete); returns its URI."""
    text = json.dumps(manifest.model_dump(), indent=2, sort_keys=True, default=_json_default)
    return folder.write(MANIFEST_FILE, text.encode())


def result_owner(folder: OutputFolder) -> str | None:
    """The job id of the result ``folder`` holds (its manifest's), or None when it holds none.
    A manifest that is not one names no job: "unknown"."""
    raw = folder.read(MANIFEST_FILE)
    if raw is None:
        return None
    try:
        return str(json.loads(raw)["job_id"])
    except (ValueError, KeyError, TypeError):
        return "unknown"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
