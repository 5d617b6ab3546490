"""Schemathesis hooks for the probing run of test_schemathesis.py (loaded by the schemathesis
command through SCHEMATHESIS_HOOKS).

Some rules of the API depend on the deployment and on what exists, so no schema can state
them: a dataset_uri must lie in the tenant's allowed folders, an output_uri in its prefix and
in a folder no other job claimed, a job id must name a job. Schema-valid (positive) requests
get real values there: the dataset and the job ids the test made (``NACS_PROBE_*``
variables), a fresh output folder, and, as the field descriptions say, no label column among
feature_columns or numeric_columns, and no column_names for that dataset, a Parquet file,
unless a format says to read it as CSV or TSV. Schema-invalid (negative) requests stay as
generated.
"""

from __future__ import annotations

import itertools
import os
import uuid
from typing import Any

import schemathesis

_count = itertools.count()


def _positive(case: Any) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode.is_positive


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    if not _positive(case):
        return case
    turn = next(_count)
    if "job_id" in (case.path_parameters or {}) and turn % 2 == 0:
        ids = os.environ["NACS_PROBE_JOB_IDS"].split(",")
        case.path_parameters["job_id"] = ids[turn // 2 % len(ids)]
    if case.method.upper() == "POST" and case.path == "/jobs" and isinstance(case.body, dict):
        body = case.body
        body["dataset_uri"] = os.environ["NACS_PROBE_DATASET_URI"]
        if body.get("output_uri") is not None:
            body["output_uri"] = f"{os.environ['NACS_PROBE_OUTPUT_PREFIX']}/{uuid.uuid4().hex}"
        label = body.get("label_column", "label")
        for name in ("feature_columns", "numeric_columns"):
            columns = body.get(name)
            if isinstance(columns, list) and label in columns:
                kept = [column for column in columns if column != label]
                body[name] = kept or ([f"{label}-feature"] if name == "feature_columns" else [])
        if body.get("format") not in ("csv", "tsv"):
            body.pop("column_names", None)
    return case
