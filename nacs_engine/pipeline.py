"""select_coreset: the one entry point of the engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from nacs_engine.baselines import random_rows
from nacs_engine.config import SelectionConfig
from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.errors import DataError

ProgressCallback = Callable[[str, float, str], None]
"""progress(phase, fraction, message): phase is "selecting" or "denoising",
fraction in [0, 1] within the phase. It may raise SelectionCancelled to stop."""


@dataclass(frozen=True)
class CoresetResult:
    """The selected rows and what the engine says about each.

    rows: (k,) int64 positions in the dataset, ascending.
    labels: (k,) float32 original labels.
    soft_labels: (k,) float32 corrected labels in [0, 1].
    weights: (k,) float32, mean 1.
    uncertainty: (k,) float32 denoising score (0 where the method has none).
    diagnostics: per-phase times (seconds), class mix, device, gains, ...
    """

    rows: np.ndarray
    labels: np.ndarray
    soft_labels: np.ndarray
    weights: np.ndarray
    uncertainty: np.ndarray
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.rows.shape[0])


def select_coreset(
    data: EncodedDataset,
    config: SelectionConfig,
    *,
    progress: ProgressCallback | None = None,
    teacher_cache: Any | None = None,
    defer_audit: bool = False,
) -> CoresetResult:
    """Select a coreset of ``data`` as ``config`` says.

    Every method but the random baselines holds back rows for the audit
    (``config.audit``; ``nacs_engine.audit``) before it selects, and audits the
    coreset after; the audit's report, or why none ran, is
    ``diagnostics["audit"]``. teacher_cache: a ``nacs_engine.teacher.TeacherCache``
    shared by selections over the same data (None: none is kept). defer_audit: return the
    coreset before the audit, which the caller runs (``worker.shards``: one RQ job per model)
    and joins with ``with_audit``.
    Raises DataError (a ValueError with a code) when the data cannot meet the
    budget or its labels are not binary.
    """
    if not isinstance(data, EncodedDataset):
        raise ValueError(f"data: expected an EncodedDataset, got {type(data).__name__}")
    if not isinstance(config, SelectionConfig):
        raise ValueError(f"config: expected a SelectionConfig, got {type(config).__name__}")
    report = progress or (lambda phase, fraction, message: None)
    try:
        k = config.budget(data.n_rows)
    except ValueError as error:
        raise DataError(budget_error_code(config, data.n_rows), str(error)) from None
    labels = np.asarray(data.labels, dtype=np.float32)
    started = time.perf_counter()
    if config.is_baseline:
        report("selecting", 0.0, f"{config.method}: drawing {k} rows")
        rows, weights = random_rows(labels, k, config.method, np.random.default_rng(config.seed))
        report("selecting", 1.0, f"{config.method}: {k} rows drawn")
        selected = labels[rows]
        return CoresetResult(
            rows=rows,
            labels=selected,
            soft_labels=selected.copy(),
            weights=weights,
            uncertainty=np.zeros(k, dtype=np.float32),
            diagnostics=_class_mix(labels, selected)
            | {
                "method": config.method,
                "device": "cpu",
                "phase_seconds": {"selecting": time.perf_counter() - started},
                "audit": {"skipped": "a random baseline is not audited against random"},
            },
        )
    from nacs_engine.audit import audit_coreset, selection_holdout

    holdout = selection_holdout(labels, k, config)
    candidates = None if isinstance(holdout, str) else holdout.candidates
    if config.method == "nacs-paper":
        from nacs_engine.paper import run_nacs_paper

        if candidates is None:
            result = run_nacs_paper(data, config, k, report)
        else:
            within = run_nacs_paper(data.subset(candidates), config, k, report)
            result = replace(within, rows=candidates[within.rows])
    else:
        from nacs_engine.nacs import run_nacs

        result = run_nacs(data, config, k, report, candidates=candidates, teacher_cache=teacher_cache)
    if isinstance(holdout, str):
        return replace(result, diagnostics=result.diagnostics | {"audit": {"skipped": holdout}})
    if defer_audit:
        return result
    return with_audit(*audit_coreset(data, holdout, result, config, report=report))


def budget_error_code(config: SelectionConfig, n_rows: int) -> str:
    """The code of a budget that ``n_rows`` rows cannot meet: no rows, a size above them, or
    a ratio that selects no row."""
    if n_rows <= 0:
        return "empty_dataset"
    return "budget_too_small" if config.size is None else "budget_too_large"


def with_audit(delivered: CoresetResult, audit: dict[str, Any]) -> CoresetResult:
    """The result to deliver with the audit's report in its diagnostics."""
    seconds = dict(delivered.diagnostics.get("phase_seconds") or {}) | {"auditing": audit["seconds"]}
    return replace(delivered, diagnostics=delivered.diagnostics | {"audit": audit, "phase_seconds": seconds})


def _class_mix(labels: np.ndarray, selected: np.ndarray) -> dict[str, Any]:
    return {
        "data_rows": int(labels.shape[0]),
        "data_clicks": int(labels.sum()),
        "coreset_rows": int(selected.shape[0]),
        "coreset_clicks": int(selected.sum()),
    }
