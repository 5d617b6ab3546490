"""The cross-fitted teacher: an out-of-fold click probability for every candidate row.

The candidate rows are dealt at random into K folds (``config.teacher_folds``, by
default ``automatic_folds``: 5 on small data, 2 from 1M rows on).
For each fold a fresh proxy model (``config.backbone``, its embedding size,
dropout, Adam learning rate and weight decay) trains on the rows of the other
folds with their given labels, early-stopped on the validation score of a
sample of its own fold (at most ``VALIDATION_ROWS`` rows), for at most
``ROW_VISITS`` / its training rows epochs (1 to ``MAX_EPOCHS``): one epoch from
1M candidates on with two folds, more on small data (``config.teacher_epochs`` sets
it). It then scores its own fold. Each row's probability therefore comes from a model
that never trained on it, so it can disagree with a wrong label (what the noise estimate and the
set-aside read), and it carries what the proxy learned from all the other rows
(what the soft labels pass on to the user's model).

The out-of-fold logits are recalibrated by Platt scaling fitted on all the
candidates (two parameters): early-stopped proxies rank well, but their
probabilities drift, most at the extremes and where clicks are rare.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from nacs_engine.config import SelectionConfig
from nacs_engine.evaluate import auc, log_loss, logistic, platt_scaling
from nacs_engine.models.layers import use_generator
from nacs_engine.models.registry import CTRModel, build_model
from nacs_engine.runtime import (
    SharedProgress,
    cpu_lanes,
    numpy_generator,
    seeded_scope,
    torch_generator,
    train_at_once,
)
from nacs_engine.train import FitResult, as_feature_tensor, default_batch_size, fit_early_stopping

# Training rows times epochs one fold's model may take: one epoch at 500,000 rows.
ROW_VISITS = 500_000
MAX_EPOCHS = 20
PATIENCE = 1
VALIDATION_ROWS = 20_000
INFERENCE_BATCH_ROWS = 16_384
# Share of the teacher's progress given to each fold's training; the rest is scoring.
_TRAIN_SHARE = 0.85

Progress = Callable[[float, str], None]


@dataclass
class Teacher:
    """The fold models and their out-of-fold probabilities for the candidates.

    rows: (m,) int64 dataset positions of the candidates, ascending.
    folds: (m,) int8 fold of each candidate.
    models: one proxy per fold, in eval mode; ``models[f]`` never trained on fold f.
    logits: (m,) float64 out-of-fold logits, before calibration.
    probabilities: (m,) float64 calibrated out-of-fold click probabilities.
    calibration: (a, b) of the Platt scaling sigmoid(a * logit + b).
    epochs, best_epochs, max_epochs: per fold, the epochs trained, the epoch whose weights
    were kept (0 for a fold trained by a shard job of an earlier version), and the most it
    could train (``fold_max_epochs``).
    validation_scores: per fold, the best validation score (AUC, or minus the
        log loss where the fold's sample holds one class only).
    seconds: wall time of the cross-fitting.
    """

    rows: np.ndarray
    folds: np.ndarray
    models: list[CTRModel]
    logits: np.ndarray
    probabilities: np.ndarray
    calibration: tuple[float, float]
    epochs: list[int]
    validation_scores: list[float]
    seconds: float
    best_epochs: list[int]
    max_epochs: list[int]

    def summary(self) -> dict[str, object]:
        return {
            "folds": len(self.models),
            "epochs": list(self.epochs),
            "best_epochs": list(self.best_epochs),
            "max_epochs": list(self.max_epochs),
            "validation_scores": [round(float(s), 6) for s in self.validation_scores],
            "calibration": [float(self.calibration[0]), float(self.calibration[1])],
            "seconds": self.seconds,
        }


# Folds: as many as keep one epoch of all fold models within this many training rows.
FOLD_ROW_BUDGET = 1_000_000
MIN_FOLDS = 2
MAX_FOLDS = 5


def automatic_folds(candidates: int) -> int:
    """Folds of the teacher over ``candidates`` rows: 1 + ``FOLD_ROW_BUDGET`` / rows, within 2-5.

    Each of K fold models trains on (K - 1) / K of the rows, so one epoch of all
    of them costs (K - 1) epochs over the data: more folds give each model more
    rows (a better teacher on small data) at a price that large data cannot pay.
    """
    return int(min(MAX_FOLDS, max(MIN_FOLDS, 1 + FOLD_ROW_BUDGET // max(candidates, 1))))


def fold_epochs(training_rows: int) -> int:
    """The most epochs a fold's model trains: ``ROW_VISITS`` / rows, within [1, ``MAX_EPOCHS``]."""
    return int(min(MAX_EPOCHS, max(1, ROW_VISITS // max(training_rows, 1))))


def fold_max_epochs(config: SelectionConfig, training_rows: int) -> int:
    """The most epochs a fold's model trains: ``config.teacher_epochs``, else ``fold_epochs``."""
    return int(config.teacher_epochs or fold_epochs(training_rows))


def _score(labels: np.ndarray, logits: np.ndarray) -> float:
    """Validation score, higher is better: AUC, or minus the log loss for one class."""
    if 0.0 < labels.mean() < 1.0:
        return auc(labels, logits)
    return -log_loss(labels, logistic(logits.astype(np.float64)))


@torch.no_grad()
def _fold_logits(model: nn.Module, features: np.ndarray, device: torch.device) -> np.ndarray:
    out = np.empty(features.shape[0], dtype=np.float64)
    for start in range(0, features.shape[0], INFERENCE_BATCH_ROWS):
        stop = min(features.shape[0], start + INFERENCE_BATCH_ROWS)
        x = as_feature_tensor(features[start:stop]).to(device)
        out[start:stop] = model(x).double().cpu().numpy()
    return out


@torch.no_grad()
def _rows_logits(
    model: nn.Module, features: Any, dataset_rows: np.ndarray, device: torch.device
) -> np.ndarray:
    """Logits (r,) float64 of ``dataset_rows`` (ascending), read ``INFERENCE_BATCH_ROWS`` rows
    at a time: the same batches as ``_fold_logits`` over ``features[dataset_rows]``."""
    out = np.empty(dataset_rows.shape[0], dtype=np.float64)
    for start in range(0, dataset_rows.shape[0], INFERENCE_BATCH_ROWS):
        stop = min(dataset_rows.shape[0], start + INFERENCE_BATCH_ROWS)
        x = as_feature_tensor(np.asarray(features[dataset_rows[start:stop]])).to(device)
        out[start:stop] = model(x).double().cpu().numpy()
    return out


def teacher_folds(candidates: int, config: SelectionConfig) -> int:
    """The teacher's fold count over ``candidates`` rows: the option, or ``automatic_folds``."""
    return int(config.teacher_folds or automatic_folds(int(candidates)))


def fold_assignment(candidates: int, config: SelectionConfig) -> np.ndarray:
    """(m,) int8 fold of each of ``candidates`` rows, dealt at random from ``config.seed``."""
    k_folds = teacher_folds(candidates, config)
    if candidates < 2 * k_folds:
        raise ValueError(f"rows: the teacher needs at least {2 * k_folds} rows, got {candidates}")
    rng = numpy_generator(config.seed, "teacher_folds")
    return (rng.permutation(candidates) % k_folds).astype(np.int8)


@dataclass
class FoldResult:
    """One fold of the teacher: its model, trained on the other folds, and its own fold's
    out-of-fold logits.

    logits: (r,) float64 logits of the fold's candidates, in ascending row order.
    """

    fold: int
    model: CTRModel
    logits: np.ndarray
    epochs: int
    validation_score: float
    seconds: float
    best_epoch: int
    max_epochs: int


def train_fold(
    features: Any,
    labels: np.ndarray,
    rows: np.ndarray,
    folds: np.ndarray,
    fold: int,
    field_dims: tuple[int, ...],
    config: SelectionConfig,
    *,
    device: torch.device,
    progress: Progress | None = None,
) -> FoldResult:
    """Train fold ``fold``'s model on the candidates of the other folds and score its own.

    features: (n, F) ids, or anything that returns them for ``features[dataset_rows]``
    (ascending rows); labels: (n,) 0/1; rows: (m,) ascending dataset positions of the
    candidates; folds: (m,) ``fold_assignment``. progress(fraction, message) reports the
    share of this fold done (training, then scoring); exceptions from it propagate.
    """
    started = time.perf_counter()
    report = progress or (lambda fraction, message: None)
    rows = np.asarray(rows, dtype=np.int64)
    k_folds = int(folds.max()) + 1
    y = np.asarray(labels, dtype=np.float32)[rows]
    inside = np.flatnonzero(folds != fold)
    outside = np.flatnonzero(folds == fold)
    max_epochs = fold_max_epochs(config, int(inside.shape[0]))
    model, fit = _train_fold(
        features, y, rows, inside, outside, field_dims, config, fold, k_folds, device, report,
        max_epochs,
    )
    logits = _rows_logits(model, features, rows[outside], device)
    report(1.0, f"teacher {fold + 1}/{k_folds}: best epoch {fit.best_epoch}")
    return FoldResult(
        fold=fold,
        model=model,
        logits=logits,
        epochs=fit.epochs_run,
        validation_score=fit.best_score,
        seconds=time.perf_counter() - started,
        best_epoch=fit.best_epoch,
        max_epochs=max_epochs,
    )


def assemble_teacher(
    rows: np.ndarray,
    folds: np.ndarray,
    labels: np.ndarray,
    results: list[FoldResult],
    seconds: float,
) -> Teacher:
    """The teacher from its folds' results (one per fold, in fold order): out-of-fold logits
    for every candidate, recalibrated by Platt scaling over all of them."""
    rows = np.asarray(rows, dtype=np.int64)
    if [result.fold for result in results] != list(range(int(folds.max()) + 1)):
        raise ValueError("results: expected one result per fold, in fold order")
    y = np.asarray(labels, dtype=np.float32)[rows]
    logits = np.empty(rows.shape[0], dtype=np.float64)
    for result in results:
        logits[folds == result.fold] = result.logits
    if 0.0 < y.mean() < 1.0:
        a, b = platt_scaling(logits, y.astype(np.float64))
    else:
        a, b = 1.0, 0.0
    probabilities = logistic(a * logits + b)
    return Teacher(
        rows=rows,
        folds=folds,
        models=[result.model for result in results],
        logits=logits,
        probabilities=probabilities,
        calibration=(a, b),
        epochs=[result.epochs for result in results],
        validation_scores=[result.validation_score for result in results],
        seconds=seconds,
        best_epochs=[result.best_epoch for result in results],
        max_epochs=[result.max_epochs for result in results],
    )


def cross_fit(
    features: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    field_dims: tuple[int, ...],
    config: SelectionConfig,
    *,
    device: torch.device,
    progress: Progress | None = None,
) -> Teacher:
    """Cross-fit ``config.teacher_folds`` proxies on ``rows`` of (``features``, ``labels``).

    features: (n, F) ids (an array or memory map); labels: (n,) 0/1;
    rows: (m,) ascending dataset positions of the candidates (m >= 2 folds).
    progress(fraction, message) is called after every few training steps and
    after every fold; exceptions from it propagate. The folds run one after the
    other here; a worker may run each as a job of its own (``train_fold``) and
    join them (``assemble_teacher``) with the same result.
    """
    started = time.perf_counter()
    report = progress or (lambda fraction, message: None)
    rows = np.asarray(rows, dtype=np.int64)
    folds = fold_assignment(int(rows.shape[0]), config)
    k_folds = int(folds.max()) + 1
    shared = SharedProgress()
    done = [0.0] * k_folds

    def fold_progress(fraction: float, message: str, fold: int) -> None:
        def update() -> None:
            done[fold] = fraction
            report(sum(done) / k_folds, message)

        shared.call(update)

    jobs = [
        partial(
            train_fold,
            features,
            labels,
            rows,
            folds,
            fold,
            field_dims,
            config,
            device=device,
            progress=partial(fold_progress, fold=fold),
        )
        for fold in range(k_folds)
    ]
    results = train_at_once(jobs, cpu_lanes(device, k_folds), shared)
    return assemble_teacher(rows, folds, labels, results, time.perf_counter() - started)


def _train_fold(
    features: Any,
    y: np.ndarray,
    rows: np.ndarray,
    inside: np.ndarray,
    outside: np.ndarray,
    field_dims: tuple[int, ...],
    config: SelectionConfig,
    fold: int,
    k_folds: int,
    device: torch.device,
    report: Progress,
    max_epochs: int,
) -> tuple[CTRModel, FitResult]:
    """Train fold ``fold``'s model on candidates ``inside`` for at most ``max_epochs``,
    early-stopped on a sample of ``outside``."""
    sample = outside
    if sample.shape[0] > VALIDATION_ROWS:
        sample = np.sort(
            numpy_generator(config.seed, "teacher_validation", fold).choice(
                outside, size=VALIDATION_ROWS, replace=False
            )
        )
    validation_features = np.ascontiguousarray(features[rows[sample]])
    validation_labels = y[sample].astype(np.float64)
    epochs_done = [0]

    def validate(model: nn.Module) -> float:
        return _score(validation_labels, _fold_logits(model, validation_features, device))

    def on_epoch(epoch: int, score: float) -> None:
        epochs_done[0] = epoch

    def on_batch(done: int, total: int) -> None:
        # Early stopping may end the fold sooner: the fraction assumes every epoch runs.
        within = (epochs_done[0] + done / total) / max_epochs
        report(
            _TRAIN_SHARE * within,
            f"teacher {fold + 1}/{k_folds}: epoch {epochs_done[0] + 1}, batch {done}/{total}",
        )

    # The training rows stay int32 (4 bytes an id): the model takes either integer type.
    training_features = torch.from_numpy(np.ascontiguousarray(features[rows[inside]]))
    with seeded_scope(config.seed, "teacher_init", device, fold):
        model = build_model(
            config.backbone, field_dims, embed_dim=config.embed_dim, dropout=config.dropout
        ).to(device)
    # On a CPU the dropout masks come from the model's own generator (folds may train at
    # once in threads); on a GPU from the global one, seeded alike: the same numbers.
    if device.type == "cpu":
        use_generator(model, torch_generator(config.seed, "teacher_dropout", index=fold))
        dropout_scope: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    else:
        dropout_scope = seeded_scope(config.seed, "teacher_dropout", device, fold)
    with dropout_scope:
        fit = fit_early_stopping(
            model,
            training_features,
            torch.from_numpy(y[inside]),
            None,
            validate=validate,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            batch_size=config.batch_size or default_batch_size(int(inside.shape[0])),
            max_epochs=max_epochs,
            patience=PATIENCE,
            device=device,
            generator=torch_generator(config.seed, "teacher_batches", index=fold),
            on_epoch=on_epoch,
            on_batch=on_batch,
        )
    del training_features
    model.eval()
    return model, fit


@torch.no_grad()
def embeddings(
    teacher: Teacher,
    features: np.ndarray,
    labels: np.ndarray,
    positions: np.ndarray,
    kind: str,
    *,
    device: torch.device,
) -> torch.Tensor:
    """(r, d) float32 embeddings of candidates ``positions`` (into ``teacher.rows``), all of one fold.

    kind: "features" (the penultimate layer h, d = H), "gradient" (the head's
    last-layer gradient (p - y) [h, 1], d = H + 1), "normalized-gradient" (that
    vector scaled to unit length) or "scalar" (the residual p - y, d = 1); p is
    the fold model's own probability and y the given label.
    """
    positions = np.asarray(positions, dtype=np.int64)
    fold_ids = np.unique(teacher.folds[positions])
    if fold_ids.shape[0] > 1:
        raise ValueError("positions: expected candidates of one fold (their models differ)")
    model = teacher.models[int(fold_ids[0])] if fold_ids.shape[0] else teacher.models[0]
    dataset_rows = teacher.rows[positions]
    y = torch.from_numpy(np.asarray(labels, dtype=np.float32)[dataset_rows])
    parts: list[torch.Tensor] = []
    for start in range(0, positions.shape[0], INFERENCE_BATCH_ROWS):
        stop = min(positions.shape[0], start + INFERENCE_BATCH_ROWS)
        x = as_feature_tensor(features[dataset_rows[start:stop]]).to(device)
        logit, h = model.logits_and_features(x)  # (b,), (b, H)
        residual = torch.sigmoid(logit.float()) - y[start:stop].to(device)  # (b,)
        if kind == "features":
            part = h.float()
        elif kind == "scalar":
            part = residual[:, None]
        elif kind in ("gradient", "normalized-gradient"):
            ones = torch.ones(h.shape[0], 1, dtype=h.dtype, device=h.device)
            part = residual[:, None] * torch.cat([h.float(), ones.float()], dim=1)  # (b, H + 1)
            if kind == "normalized-gradient":
                part = part / part.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            raise ValueError(
                f"kind: expected features, gradient, normalized-gradient or scalar, got {kind!r}"
            )
        parts.append(part)
    if not parts:
        return torch.empty(0, 1, dtype=torch.float32, device=device)
    return torch.cat(parts)


# Options a teacher depends on, besides the data, the labels and the candidates.
TEACHER_OPTIONS: tuple[str, ...] = (
    "backbone",
    "teacher_folds",
    "teacher_epochs",
    "embed_dim",
    "dropout",
    "learning_rate",
    "weight_decay",
    "batch_size",
    "seed",
    "device",
)


class TeacherCache:
    """Teachers kept for reuse by several selections over the same rows.

    A teacher depends only on the features, the labels, the candidate rows and
    ``TEACHER_OPTIONS``; selections that share them (another budget, another
    selection strategy) reuse it. The cache holds a reference to each features
    array it has seen, so that identity can key it.
    """

    def __init__(self) -> None:
        self._entries: list[tuple[np.ndarray, tuple[object, ...], Teacher]] = []

    def get(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        rows: np.ndarray,
        field_dims: tuple[int, ...],
        config: SelectionConfig,
        *,
        device: torch.device,
        progress: Progress | None = None,
    ) -> Teacher:
        key = self._key(labels, rows, field_dims, config)
        for cached_features, cached_key, teacher in self._entries:
            if cached_features is features and cached_key == key:
                return teacher
        teacher = cross_fit(
            features, labels, rows, field_dims, config, device=device, progress=progress
        )
        self.put(features, labels, rows, field_dims, config, teacher)
        return teacher

    def put(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        rows: np.ndarray,
        field_dims: tuple[int, ...],
        config: SelectionConfig,
        teacher: Teacher,
    ) -> None:
        """Keep ``teacher`` (cross-fitted elsewhere, e.g. fold by fold) for ``get``."""
        self._entries.append((features, self._key(labels, rows, field_dims, config), teacher))

    @staticmethod
    def _key(
        labels: np.ndarray, rows: np.ndarray, field_dims: tuple[int, ...], config: SelectionConfig
    ) -> tuple[object, ...]:
        return (
            _digest(labels),
            _digest(np.asarray(rows, dtype=np.int64)),
            tuple(field_dims),
            tuple(getattr(config, name) for name in TEACHER_OPTIONS),
        )


def _digest(values: np.ndarray) -> str:
    array = np.ascontiguousarray(values)
    return (
        f"{array.dtype}{array.shape}" + hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest()
    )
