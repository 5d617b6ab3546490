"""The result of a job in storage: coreset.parquet, then manifest.json last."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from worker.settings import WorkerSettings
from worker.storage import join_uri, upload_file, write_bytes

CORESET_FILE = "coreset.parquet"
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1


def coreset_table(rows: np.ndarray, labels: np.ndarray, soft_labels: np.ndarray, weights: np.ndarray, uncertainty: np.ndarray) -> pa.Table:
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


def write_coreset(output_uri: str, table: pa.Table, settings: WorkerSettings) -> str:
    """Write the coreset table under ``output_uri``; returns its URI."""
    uri = join_uri(output_uri, CORESET_FILE)
    with tempfile.TemporaryDirectory(dir=settings.workdir) as folder:
        local = os.path.join(folder, CORESET_FILE)
        pq.write_table(table, local)
        upload_file(local, uri, settings)
    return uri


def write_manifest(output_uri: str, manifest: dict[str, Any], settings: WorkerSettings) -> str:
    """Write manifest.json under ``output_uri`` (call it last: its presence means the result is complete)."""
    uri = join_uri(output_uri, MANIFEST_FILE)
    write_bytes(uri, json.dumps(manifest, indent=2, sort_keys=True, default=_json_default).encode(), settings)
    return uri


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
