"""The audit: does the coreset train a better model than a random subset of the same size?

``holdout_split`` holds back min(10%, 50,000) of the rows, drawn at random from
the job's seed, before anything else runs: the teacher never trains on them and
the selection never picks them. ``audit_coreset`` then trains, for each of
``audit_seeds`` seeds and each evaluator family (logistic regression on one-hot
features, and the proxy's own architecture), one model on the coreset as
delivered (its soft labels and weights) and one on a stratified random subset of
the candidates of the same size with the given labels (a new subset per seed),
each early-stopped on a third of the held-back rows (at most ``STOP_ROWS``; it
stops at the first epoch that does not raise the AUC there by more than
``STOP_MIN_GAIN`` over the last that did, and keeps its best epoch) and scored
on the rest. Per family it reports both models' mean AUC and log loss, the mean
paired difference of the AUC and of the log loss with their standard errors, and
a verdict: "better" when the coreset's AUC is higher by more than two standard
errors, "worse" when lower by more, else "level". A standard error has two
parts, added in squares: the spread of the paired differences over the seeds
(the models' training and the random subsets' draws), and the sampling of the
scored rows, which every seed shares (from each row's part of the seed-averaged
difference: DeLong's placement values for the AUC, the row's loss difference for
the log loss; that part also carries some of the seeds' noise, so the sum errs
high); the seeds alone would read the noise of a few dozen held-back clicks as a
difference. The audit's verdict is "worse" when any family's is, "better" when
every family's is, else "level". The held-back labels are the user's own, noise
included: the audit measures what the user would see.

With ``guard="fallback"`` and a "worse" verdict, the rows delivered become the
best of the coreset, the first random subset and their even mixture (half the
coreset's rows with their soft labels and weights, half the random subset's),
by mean AUC on the scored rows over families and seeds (for "random", over
the seeds' own subsets: what a random subset is expected to reach); the audit
says which (``delivered``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from nacs_engine.baselines import random_rows
from nacs_engine.config import SelectionConfig
from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.evaluate import (
    EvaluationOptions,
    auc_components,
    evaluate_coreset,
    row_log_losses,
)
from nacs_engine.pipeline import CoresetResult
from nacs_engine.runtime import (
    SharedProgress,
    cpu_lanes,
    numpy_generator,
    resolve_device,
    train_at_once,
)

HOLDOUT_SHARE = 0.1
# Every audit model scores the held-back rows (the stopping part every epoch): past 50,000
# (10,000 to stop on, 40,000 scored) more of them cost time in every job; on 1M generated
# rows 200,000 of them moved the paired AUC differences by at most 0.002.
MAX_HOLDOUT_ROWS = 50_000
# Fewer held-back rows than this, or held-back parts with one class, and no audit runs.
MIN_HOLDOUT_ROWS = 100
# Fewer rows of either class than this among the scored rows, and no audit runs: one click
# gives no spread to read their sampling error from.
MIN_SCORED_CLASS_ROWS = 2
STOP_ROWS = 10_000
# An audit model's epoch counts toward its early stopping only when the held-back AUC rises
# by more than this (``EvaluationOptions.min_gain``): a model on soft labels otherwise keeps
# creeping up by a few ten-thousandths an epoch, to the 20-epoch cap.
STOP_MIN_GAIN = 0.001
# Epochs without such a rise before an audit model stops. With 1 (and two seeds) the audit's
# sign agreed with the offline evaluation as often as with 2 (and three seeds), on 113 of the
# shared grid's 120 settings, in half the time (1M rows: 2.0-2.9 s against 4.2-5.4 s).
STOP_PATIENCE = 1
# The coreset wins or loses when its mean AUC differs by more than this many standard errors.
VERDICT_STANDARD_ERRORS = 2.0
LOGISTIC = "logistic"

Report = Callable[[str, float, str], None]


@dataclass(frozen=True)
class Holdout:
    """Candidates and the held-back rows, all ascending dataset positions."""

    candidates: np.ndarray
    stop: np.ndarray
    score: np.ndarray


def holdout_split(labels: np.ndarray, k: int, seed: int) -> Holdout | str:
    """Hold back rows for the audit, or say why none are held back.

    labels: (n,) 0/1; k: the coreset size, which the candidates must still hold.
    """
    labels = np.asarray(labels)
    n = int(labels.shape[0])
    held = int(min(MAX_HOLDOUT_ROWS, round(HOLDOUT_SHARE * n)))
    if held < MIN_HOLDOUT_ROWS:
        return f"the data has too few rows to hold back {MIN_HOLDOUT_ROWS} for the audit"
    if n - held < k:
        return "the budget leaves too few rows to hold any back for the audit"
    order = numpy_generator(seed, "audit", 0).permutation(n)
    stop_rows = min(STOP_ROWS, held // 3)
    stop, score = np.sort(order[:stop_rows]), np.sort(order[stop_rows:held])
    for part, least in ((stop, 1), (score, MIN_SCORED_CLASS_ROWS)):
        clicks = int(labels[part].sum())
        fewest = min(clicks, part.shape[0] - clicks)
        if fewest == 0:
            return "the held-back rows hold one class only"
        if fewest < least:
            return (
                f"the scored held-back rows hold fewer than {least} rows of one class: too "
                "few to measure the difference on"
            )
    return Holdout(candidates=np.sort(order[held:]), stop=stop, score=score)


def selection_holdout(labels: np.ndarray, k: int, config: SelectionConfig) -> Holdout | str:
    """The audit's held-back rows of a selection as ``config`` says, or why none are held
    back (the audit is off, or the data cannot spare them)."""
    if not config.audit:
        return "the audit is off (audit=false)"
    return holdout_split(labels, k, config.seed)


def audit_families(config: SelectionConfig) -> tuple[str, ...]:
    """The evaluator families of the audit: logistic regression and the proxy's backbone."""
    return (LOGISTIC, config.backbone)


@dataclass(frozen=True)
class Held:
    """The held-back rows as datasets: early stopping on ``stop``, scores on ``score``."""

    stop: EncodedDataset
    score: EncodedDataset


def held_rows(data: EncodedDataset, holdout: Holdout) -> Held:
    return Held(data.subset(holdout.stop), data.subset(holdout.score))


@dataclass(frozen=True)
class Arm:
    """Rows (dataset positions), targets and weights one audited model trains on."""

    rows: np.ndarray
    targets: np.ndarray
    weights: np.ndarray | None


@dataclass(frozen=True)
class Arms:
    """What the audit's models train on: the coreset as delivered, and one stratified random
    subset of the candidates of the same size per seed, with the given labels."""

    coreset: Arm
    randoms: tuple[Arm, ...]


@dataclass(frozen=True)
class AuditModel:
    """One model of the audit: its family, its seed and the arm it trains on."""

    family: str
    seed: int
    arm: str  # "coreset" or "random"

    def arm_of(self, arms: Arms) -> Arm:
        return arms.coreset if self.arm == "coreset" else arms.randoms[self.seed]

    def __str__(self) -> str:
        return f"{self.family}, seed {self.seed + 1}, {self.arm}"


def audit_arms(
    labels: np.ndarray, holdout: Holdout, result: CoresetResult, config: SelectionConfig
) -> Arms:
    labels = np.asarray(labels, dtype=np.float32)
    return Arms(
        coreset=Arm(result.rows, result.soft_labels, result.weights),
        randoms=tuple(
            _random_arm(labels, holdout.candidates, result.size, config.seed, s)
            for s in range(config.audit_seeds)
        ),
    )


def audit_models(config: SelectionConfig) -> list[AuditModel]:
    """The audit's models, in the order one process trains them."""
    return [
        AuditModel(family, seed, arm)
        for family in audit_families(config)
        for seed in range(config.audit_seeds)
        for arm in ("coreset", "random")
    ]


def longest_first(models: list[AuditModel]) -> list[int]:
    """The positions of ``models`` in the order to start them so that parallel lanes or
    workers end together: the backbone's before logistic regression's, the coreset's (soft
    labels train longer) before random's."""
    return sorted(
        range(len(models)),
        key=lambda index: (models[index].family == LOGISTIC, models[index].arm != "coreset"),
    )


@dataclass(frozen=True)
class AuditScore:
    """One audit model's AUC and log loss on the scored rows, and its logits there."""

    auc: float
    log_loss: float
    logits: np.ndarray  # (scored rows,) float32


Scores = dict[AuditModel, AuditScore]


def audit_coreset(
    data: EncodedDataset,
    holdout: Holdout,
    result: CoresetResult,
    config: SelectionConfig,
    *,
    report: Report | None = None,
) -> tuple[CoresetResult, dict[str, Any]]:
    """Audit ``result`` (selected from ``holdout.candidates``); returns the result to
    deliver (``result`` unless the guard falls back) and the audit's report."""
    started = time.perf_counter()
    progress = report or (lambda phase, fraction, message: None)
    arms = audit_arms(data.labels, holdout, result, config)
    held = held_rows(data, holdout)
    models = audit_models(config)
    scores = train_audit_models(data, held, arms, models, config, progress)
    return conclude_audit(
        data, holdout, result, config, arms, scores,
        seconds=time.perf_counter() - started, report=progress, held=held,
    )


def train_audit_models(
    data: EncodedDataset,
    held: Held,
    arms: Arms,
    models: list[AuditModel],
    config: SelectionConfig,
    progress: Report,
) -> Scores:
    """The scores of ``models``. On a CPU with more than one torch thread they train at once,
    as many as there are threads (``train_at_once``), the longest first
    (``longest_first``): the small models of the audit keep one core busy each, where two
    threads on one model gain little (at 1M rows on two cores, 6.1-7.0 s against
    9.5-10.2 s). Each model draws from its own generators, so the scores
    are those of training them one after the other on a lane's torch threads (one, up to
    twice as many threads as models)."""
    shared = SharedProgress()
    trained = [0]

    def report(phase: str, fraction: float, message: str, finished: bool = False) -> None:
        def update() -> None:
            trained[0] += finished
            progress(phase, trained[0] / len(models), message)

        shared.call(update)

    def train(model: AuditModel) -> AuditScore:
        score = train_audit_model(data, held, model.arm_of(arms), model, config, report, 0.0)
        report("auditing", 1.0, f"audit: {model}", finished=True)
        return score

    lanes = cpu_lanes(resolve_device(config.device), len(models))
    order = [models[index] for index in longest_first(models)]
    results = dict(
        zip(order, train_at_once([partial(train, m) for m in order], lanes, shared), strict=True)
    )
    return {model: results[model] for model in models}


def conclude_audit(
    data: EncodedDataset,
    holdout: Holdout,
    result: CoresetResult,
    config: SelectionConfig,
    arms: Arms,
    scores: Scores,
    *,
    seconds: float,
    report: Report,
    held: Held | None = None,
) -> tuple[CoresetResult, dict[str, Any]]:
    """The audit's report from the scores of every model of ``audit_models(config)``, and
    the result to deliver (with ``guard="fallback"``, the mixture's models train here).
    seconds: the time the models took."""
    started = time.perf_counter()
    families = audit_families(config)
    scored_labels = np.asarray(data.labels[holdout.score], dtype=np.float64)
    by_family = {
        family: _summary(
            {
                name: [scores[AuditModel(family, seed, name)] for seed in range(config.audit_seeds)]
                for name in ("coreset", "random")
            },
            scored_labels,
        )
        for family in families
    }
    verdicts = [entry["verdict"] for entry in by_family.values()]
    verdict = (
        "worse"
        if "worse" in verdicts
        else "better"
        if all(v == "better" for v in verdicts)
        else "level"
    )
    audit: dict[str, Any] = {
        "validation_rows": int(holdout.stop.shape[0] + holdout.score.shape[0]),
        "stopping_rows": int(holdout.stop.shape[0]),
        "scored_rows": int(holdout.score.shape[0]),
        "seeds": int(config.audit_seeds),
        "families": by_family,
        "verdict": verdict,
        "guard": config.guard,
        "delivered": "coreset",
    }
    delivered = result
    if config.guard == "fallback" and verdict == "worse":
        held = held or held_rows(data, holdout)
        mixture = _mixture(arms.coreset, arms.randoms[0], result.size, config.seed)
        mixture_aucs = [
            train_audit_model(
                data, held, mixture, AuditModel(family, seed, "mixture"), config, report, 1.0
            ).auc
            for family in families
            for seed in range(config.audit_seeds)
        ]
        means = {
            name: float(np.mean([scores[m].auc for m in scores if m.arm == name]))
            for name in ("coreset", "random")
        }
        means["mixture"] = float(np.mean(mixture_aucs))
        choice = max(means, key=lambda name: means[name])
        audit["fallback_auc"] = means
        audit["delivered"] = choice
        if choice != "coreset":
            labels = np.asarray(data.labels, dtype=np.float32)
            delivered = _as_result(
                result, arms.randoms[0] if choice == "random" else mixture, labels, choice
            )
    audit["seconds"] = seconds + time.perf_counter() - started
    report("auditing", 1.0, f"audit: {verdict}; delivered the {audit['delivered']}")
    return delivered, audit


def _random_arm(labels: np.ndarray, candidates: np.ndarray, k: int, seed: int, index: int) -> Arm:
    rng = numpy_generator(seed, "audit", index + 1)
    positions, _ = random_rows(labels[candidates], k, "stratified", rng)
    rows = candidates[positions]
    return Arm(rows, labels[rows].astype(np.float32), None)


def _mixture(coreset: Arm, random: Arm, k: int, seed: int) -> Arm:
    """Half the coreset's rows (its targets and weights), the rest from the random subset."""
    rng = numpy_generator(seed, "audit", 0)
    half = k // 2
    mine = np.sort(rng.choice(k, size=half, replace=False))
    theirs = np.setdiff1d(random.rows, coreset.rows[mine], assume_unique=True)
    theirs = np.sort(rng.choice(theirs, size=k - half, replace=False))
    rows = np.concatenate([coreset.rows[mine], theirs])
    targets = np.concatenate(
        [coreset.targets[mine], random.targets[np.searchsorted(random.rows, theirs)]]
    )
    weights = np.ones(k, dtype=np.float32)
    if coreset.weights is not None:
        weights[:half] = coreset.weights[mine]
    order = np.argsort(rows, kind="stable")
    return Arm(rows[order], targets[order].astype(np.float32), (weights / weights.mean())[order])


def train_audit_model(
    data: EncodedDataset,
    held: Held,
    arm: Arm,
    model: AuditModel,
    config: SelectionConfig,
    progress: Report,
    fraction: float,
) -> AuditScore:
    """The scores on the scored rows of ``model`` trained on ``arm`` (rows of ``data``)."""
    family, seed = model.family, model.seed
    options = EvaluationOptions(backbone=family, min_gain=STOP_MIN_GAIN, patience=STOP_PATIENCE)
    if family != LOGISTIC:
        options = replace(
            options,
            embed_dim=config.embed_dim,
            dropout=config.dropout,
            learning_rate=config.learning_rate,
        )
    evaluation = evaluate_coreset(
        data.subset(arm.rows),
        held.stop,
        held.score,
        rows=np.arange(arm.rows.shape[0]),
        soft_labels=arm.targets,
        weights=arm.weights,
        options=options,
        seed=seed,
        device=config.device,
        # Every epoch passes through the job's progress, where a cancel request stops it.
        progress=lambda epoch, score: progress(
            "auditing", fraction, f"audit: {family}, epoch {epoch}"
        ),
        keep_test_logits=True,
    )
    assert evaluation.test_logits is not None
    return AuditScore(evaluation.test_auc, evaluation.test_log_loss, evaluation.test_logits)


def _summary(scores: dict[str, list[AuditScore]], labels: np.ndarray) -> dict[str, Any]:
    """One family's report from its models' scores per arm (seed by seed) on the scored rows,
    whose given labels are ``labels``."""
    coreset = np.array([(s.auc, s.log_loss) for s in scores["coreset"]], dtype=np.float64)
    random = np.array([(s.auc, s.log_loss) for s in scores["random"]], dtype=np.float64)
    difference = coreset - random  # (seeds, 2)
    seeds = difference.shape[0]
    over_seeds = difference.std(axis=0, ddof=1) / math.sqrt(seeds) if seeds > 1 else np.zeros(2)
    over_rows = _row_errors(scores["coreset"], scores["random"], labels)
    errors = np.sqrt(over_seeds**2 + over_rows**2)
    mean = difference.mean(axis=0)
    if mean[0] > VERDICT_STANDARD_ERRORS * errors[0] and mean[0] > 0:
        verdict = "better"
    elif mean[0] < -VERDICT_STANDARD_ERRORS * errors[0] and mean[0] < 0:
        verdict = "worse"
    else:
        verdict = "level"
    return {
        "coreset": {"auc": float(coreset[:, 0].mean()), "log_loss": float(coreset[:, 1].mean())},
        "random": {"auc": float(random[:, 0].mean()), "log_loss": float(random[:, 1].mean())},
        "auc_difference": float(mean[0]),
        "auc_difference_se": float(errors[0]),
        "auc_difference_se_seeds": float(over_seeds[0]),
        "auc_difference_se_rows": float(over_rows[0]),
        "log_loss_difference": float(mean[1]),
        "log_loss_difference_se": float(errors[1]),
        "log_loss_difference_se_seeds": float(over_seeds[1]),
        "log_loss_difference_se_rows": float(over_rows[1]),
        "verdict": verdict,
    }


def _row_errors(
    coreset: list[AuditScore], random: list[AuditScore], labels: np.ndarray
) -> np.ndarray:
    """Standard errors (AUC, log loss) of the seed-averaged paired differences from the
    sampling of the scored rows: each row's part of the difference, averaged over the
    seeds, varies from row to row; the AUC's parts within each class (DeLong)."""
    auc_parts = np.mean(
        [auc_components(labels, c.logits) - auc_components(labels, r.logits)
         for c, r in zip(coreset, random, strict=True)],
        axis=0,
    )
    loss_parts = np.mean(
        [row_log_losses(labels, _sigmoid(c.logits)) - row_log_losses(labels, _sigmoid(r.logits))
         for c, r in zip(coreset, random, strict=True)],
        axis=0,
    )
    positive = labels > 0.5
    auc_variance = sum(
        _mean_variance(auc_parts[members]) for members in (positive, ~positive)
    )
    return np.sqrt([auc_variance, _mean_variance(loss_parts)])


def _mean_variance(values: np.ndarray) -> float:
    """The variance of the mean of ``values`` (0 for fewer than two)."""
    if values.shape[0] < 2:
        return 0.0
    return float(values.var(ddof=1) / values.shape[0])


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    # The tanh form does not overflow for large negative logits.
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=np.float64)))


def _as_result(result: CoresetResult, arm: Arm, labels: np.ndarray, choice: str) -> CoresetResult:
    """The delivered rows of the fallback, as a CoresetResult with the coreset's diagnostics."""
    given = labels[arm.rows].astype(np.float32)
    weights = np.ones(arm.rows.shape[0], dtype=np.float32) if arm.weights is None else arm.weights
    uncertainty = np.zeros(arm.rows.shape[0], dtype=np.float32)
    kept = np.isin(arm.rows, result.rows)
    positions = np.searchsorted(result.rows, arm.rows[kept])
    uncertainty[kept] = result.uncertainty[positions]
    diagnostics = dict(result.diagnostics)
    diagnostics["coreset_clicks"] = int(given.sum(dtype=np.float64))
    diagnostics["delivered"] = choice
    return CoresetResult(
        rows=arm.rows.astype(np.int64),
        labels=given,
        soft_labels=np.asarray(arm.targets, dtype=np.float32),
        weights=np.asarray(weights, dtype=np.float32),
        uncertainty=uncertainty,
        diagnostics=diagnostics,
    )
