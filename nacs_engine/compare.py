"""Compare selection methods on one dataset: select, train fresh models, score them, pair the seeds.

``compare_methods`` runs every (method, budget, seed) on a (train, validation,
test) split: it selects a coreset of the training rows once with
``select_coreset`` (the selection's own backbone, from the selection options),
then trains a fresh model of every evaluator family on it (``evaluate_coreset``:
soft labels and weights as delivered, early-stopped on the validation split)
and scores each on the test rows; the family is the row's ``evaluator``. The
method ``"full"`` trains on every training row instead, once per seed and
family; its AUC is the denominator of each coreset's ``recovery`` (coreset AUC
/ full-data AUC of the same seed and family).

Label noise (``NOISE_KINDS``) is added to the TRAINING labels per seed, before
anything else runs (the full-data model sees the same noisy labels);
validation and test stay clean. "symmetric" flips a share of all the labels
(``flip_labels``), "clicks-to-non-clicks" turns a share of the clicks into
non-clicks (``clicks_to_non_clicks``). Each row records the noise and its rate,
and the share of changed labels in the coreset and in the data.

``summarise`` reduces the rows to mean and standard deviation over seeds and
``format_table`` prints them. ``paired_differences`` takes each method's score
less a baseline's seed by seed (the same split, noise, budget and family): mean,
standard error, a 95% Student t interval and the seeds won;
``difference_tables`` prints them for the test AUC and the test log loss.
``check_targets`` and ``check_flipped_shares`` hold a method against random by
the quality targets (``QualityTargets``) and ``format_checks`` prints them.
``RowCache`` keeps finished rows in a JSON-lines file, keyed by ``RUN_FIELDS``
and a hash of the options (``options_hash``), so that an interrupted grid
resumes where it stopped (``compare_methods(cached=cache.lookup,
on_row=cache.append)``). ``nacs evaluate`` is ``compare_methods`` on each seed's own
split, then ``format_table(summarise(...))`` and ``difference_tables``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from nacs_engine.config import METHODS, REFERENCE_METHODS, SelectionConfig
from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.evaluate import EVALUATORS, Evaluation, EvaluationOptions, evaluate_coreset
from nacs_engine.runtime import (
    SharedProgress,
    cpu_lanes,
    one_thread_each,
    resolve_device,
    train_at_once,
)
from nacs_engine.teacher import TeacherCache

if TYPE_CHECKING:
    from nacs_engine.pipeline import CoresetResult

FULL = "full"
COMPARABLE_METHODS: tuple[str, ...] = (*METHODS, FULL)
"""Every method name ``compare_methods`` accepts: the selection methods and "full"."""

CLEAN = "clean"
"""The noise of a row whose labels were left as they are (rate 0)."""

RUN_FIELDS: tuple[str, ...] = (
    "dataset",
    "noise",
    "flip_rate",
    "seed",
    "method",
    "budget",
    "evaluator",
)
"""The fields that name one run; ``compare_methods`` passes them to ``cached``."""

# Each noise kind draws from its own stream of the seed, apart from the engine's streams.
_NOISE_STREAMS = {"symmetric": 101, "clicks-to-non-clicks": 102}

Progress = Callable[[int, int, str], None]
"""progress(runs_done, runs_total, message), called before and after every run."""

_SUMMARY_METRICS: tuple[str, ...] = (
    "test_auc",
    "test_log_loss",
    "test_log_loss_calibrated",
    "recovery",
    "selection_seconds",
    "evaluation_seconds",
    "coreset_click_rate",
    "coreset_flipped_share",
)
LOWER_IS_BETTER: frozenset[str] = frozenset({"test_log_loss", "test_log_loss_calibrated"})
"""Metrics where a method wins a seed by scoring below the baseline."""


# -- label noise ------------------------------------------------------------------


def flip_labels(labels: np.ndarray, flip_rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly round(flip_rate * n) labels chosen at random from ``seed`` (symmetric noise).

    labels: (n,) 0/1; flip_rate in [0, 0.5). Returns (noisy labels (n,)
    float32, flipped (n,) bool).
    """
    _check_rate("flip_rate", flip_rate, 0.5)
    labels = np.asarray(labels, dtype=np.float32)
    n = labels.shape[0]
    flipped = np.zeros(n, dtype=bool)
    count = int(round(flip_rate * n))
    if count:
        flipped[_noise_rng("symmetric", seed).permutation(n)[:count]] = True
    noisy = np.where(flipped, 1.0 - labels, labels).astype(np.float32)
    return noisy, flipped


def clicks_to_non_clicks(
    labels: np.ndarray, rate: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Turn exactly round(rate * clicks) of the clicks, chosen at random from ``seed``, into
    non-clicks.

    labels: (n,) 0/1; rate in [0, 1). Returns (noisy labels (n,) float32,
    flipped (n,) bool: the clicks turned into 0).
    """
    _check_rate("flip_rate", rate, 1.0)
    labels = np.asarray(labels, dtype=np.float32)
    clicks = np.flatnonzero(labels == 1.0)
    flipped = np.zeros(labels.shape[0], dtype=bool)
    count = int(round(rate * clicks.shape[0]))
    if count:
        flipped[
            clicks[_noise_rng("clicks-to-non-clicks", seed).permutation(clicks.shape[0])[:count]]
        ] = True
    noisy = np.where(flipped, 0.0, labels).astype(np.float32)
    return noisy, flipped


@dataclass(frozen=True)
class NoiseKind:
    """A way of corrupting training labels: corrupt(labels, rate, seed) -> (noisy, flipped)."""

    name: str
    corrupt: Callable[[np.ndarray, float, int], tuple[np.ndarray, np.ndarray]]
    # Rates lie in [0, max_rate).
    max_rate: float


NOISE_KINDS: dict[str, NoiseKind] = {
    "symmetric": NoiseKind("symmetric", flip_labels, 0.5),
    "clicks-to-non-clicks": NoiseKind("clicks-to-non-clicks", clicks_to_non_clicks, 1.0),
}
"""Every kind of label noise by name."""


def add_label_noise(
    labels: np.ndarray, kind: str, rate: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels (n,) float32, changed (n,) bool) after noise ``kind`` at ``rate``."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise_kind: expected one of {', '.join(NOISE_KINDS)}, got {kind!r}")
    return NOISE_KINDS[kind].corrupt(labels, rate, seed)


def noise_label(noise: str, rate: float) -> str:
    """How a noise setting reads in a table: "clean", "symmetric 20%"."""
    return CLEAN if noise == CLEAN or not rate else f"{noise} {100 * rate:g}%"


def budget_label(budget: float | int) -> str:
    """How a budget reads in a table: "5%" for the ratio 0.05, "700" for the size 700."""
    if isinstance(budget, float):
        return f"{100 * budget:g}%"
    return str(budget)


# -- the runs ---------------------------------------------------------------------


def compare_methods(
    train: EncodedDataset,
    validation: EncodedDataset,
    test: EncodedDataset,
    *,
    methods: Sequence[str] = ("nacs", "random", FULL),
    budgets: Sequence[float | int] = (0.01,),
    seeds: Sequence[int] = (0, 1, 2),
    selection_options: Mapping[str, Any] | None = None,
    evaluation_options: EvaluationOptions | None = None,
    evaluators: Sequence[str] | None = None,
    noise_kind: str = "symmetric",
    flip_rate: float = 0.0,
    device: str = "cpu",
    dataset_name: str = "data",
    progress: Progress | None = None,
    cached: Callable[[dict[str, Any]], Mapping[str, Any] | None] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Select and evaluate every (method, budget, seed, evaluator); one result dict per run.

    Per seed and budget every method selects first; then the fresh models of its
    coresets (and, at the first budget, the full-data ones) train at once on a CPU, one
    per torch thread, each on one thread (``_at_once``): the scores of training them one
    after the other on one thread, whatever else runs beside them.

    methods: names from ``COMPARABLE_METHODS`` ("full" trains on all training rows).
    budgets: ratios (floats in (0, 1)) or sizes (ints >= 1) of the training rows.
    seeds: each seed drives the label noise, the selection and the fresh models.
    selection_options: ``SelectionConfig`` fields other than ratio, size and
        method (for example ``{"rounds": 5, "class_balance": "none"}``); a
        ``seed`` there is overridden by each of ``seeds``.
    evaluation_options: how the fresh models are trained (``EvaluationOptions``);
        its backbone is replaced by each evaluator's.
    evaluators: evaluator families from ``EVALUATORS``; each coreset is
        selected once and evaluated with every family (default: the family of
        ``evaluation_options``, else the selection's backbone).
    noise_kind, flip_rate: the label noise of ``NOISE_KINDS`` added to the
        training labels per seed, and its rate (0: clean labels).
    device: "cpu", "cuda", "auto"; used by selection and evaluation.
    cached(run) -> row or None: called with the ``RUN_FIELDS`` of every run
        before it runs; a row it returns is used as that run's result, and the
        run is skipped (a selection runs only for the evaluators it lacks).
    on_row(row): called with every row this call computes, as soon as it is done.
    variants: more selections to run beside ``methods``, by name: each maps to
        option values over ``selection_options`` ("method" among them, default
        "nacs"), and its rows carry the name as their method. Every selection
        of a seed shares one teacher where their teacher options agree.

    Each row holds dataset, seed, noise ("clean" at rate 0, else the kind),
    flip_rate (the rate), evaluator, method, budget (as a label), budget_rows,
    test_auc, test_log_loss, test_log_loss_calibrated (after Platt scaling on
    the validation split), validation_auc, recovery (test AUC over the "full" model's of the
    seed and family; None without "full", and in a row given to ``on_row`` before that model
    ended: the rows returned carry it), selection_seconds, evaluation_seconds, best_epoch,
    coreset_click_rate, data_click_rate, coreset_flipped_share, data_flipped_share (the
    shares of changed labels; None on clean labels), soft_label_shift (mean |soft label -
    given label|), and what the selection said of itself (``_audit_fields``): audit_verdict
    (the audit's, over its families), audit_family_verdict, audit_auc_difference and
    audit_auc_difference_se (those of the row's evaluator family), estimated_flip_rate,
    set_aside_rows, teacher_trusted and narrow_trust.
    """
    methods, budgets, seeds = _check_arguments(
        train, validation, test, methods, budgets, seeds, noise_kind, flip_rate
    )
    options = dict(selection_options or {})
    reserved = sorted(set(options) & {"ratio", "size", "method"})
    if reserved:
        raise ValueError(f"selection_options: {', '.join(reserved)} are set by compare_methods")
    # The seed of each run comes from ``seeds``; a seed among the options is overridden.
    options.pop("seed", None)
    options.setdefault("device", device)
    # Every option is checked once, here, before the first (possibly long) run.
    SelectionConfig.from_dict({"size": 1, "method": "nacs", **options})
    variant_options = {
        name: {"method": "nacs", **dict(values)} for name, values in (variants or {}).items()
    }
    for name, values in variant_options.items():
        if name in methods or name == FULL:
            raise ValueError(f"variants: {name!r} is also a method name")
        SelectionConfig.from_dict({**options, "size": 1, **values})
    if evaluation_options is None:
        evaluation_options = EvaluationOptions(backbone=options.get("backbone", "deepfm"))
    if not isinstance(evaluation_options, EvaluationOptions):
        raise ValueError(
            "evaluation_options: expected EvaluationOptions, "
            f"got {type(evaluation_options).__name__}"
        )
    families = _check_evaluators(evaluators, evaluation_options)
    family_options = {family: replace(evaluation_options, backbone=family) for family in families}
    lookup = cached or (lambda run: None)
    emit = on_row or (lambda row: None)
    report = progress or (lambda done, total, message: None)
    noise = CLEAN if flip_rate == 0 else noise_kind

    selecting = [m for m in methods if m != FULL] + list(variant_options)
    total = len(seeds) * len(families) * (len(selecting) * len(budgets) + (FULL in methods))
    rows: list[dict[str, Any]] = []
    done = 0

    def run_fields(seed: int, method: str, budget: str, family: str) -> dict[str, Any]:
        return {
            "dataset": dataset_name,
            "noise": noise,
            "flip_rate": flip_rate,
            "seed": seed,
            "method": method,
            "budget": budget,
            "evaluator": family,
        }

    def announce(seed: int, label: str, name: Any, row: Mapping[str, Any]) -> None:
        """Count the run ``name`` = (method, family) done, and report its AUC."""
        nonlocal done
        method, family = name
        if method == FULL:
            where = f"full data, {family}, seed {seed}"
        else:
            where = f"{method} at {label}, seed {seed}, {family}"
        done += 1
        report(done, total, f"{dataset_name}: {where}: AUC {row['test_auc']:.4f}")

    def finished(
        seed: int,
        label: str,
        full_auc: dict[str, float],
        computed: dict[Any, dict[str, Any]],
        name: Any,
        fields: dict[str, Any],
    ) -> None:
        """The row of a model that ended (``name`` = (method, family)): kept, emitted and
        reported."""
        method, family = name
        if method == FULL:
            row = run_fields(seed, FULL, "100%", family) | fields
            full_auc[family] = row["test_auc"]
        else:
            row = run_fields(seed, method, label, family) | fields
            row["recovery"] = row["test_auc"] / full_auc[family] if family in full_auc else None
        computed[name] = row
        emit(row)
        announce(seed, label, name, row)

    for seed in seeds:
        # Every budget and method of a seed selects over the same rows: one teacher each.
        teachers = TeacherCache()
        seeded_train, flipped = train, None
        if flip_rate > 0:
            noisy, flipped = add_label_noise(train.labels, noise_kind, flip_rate, seed)
            seeded_train = replace(train, labels=noisy)
        full_auc: dict[str, float] = {}
        full_found = {
            family: lookup(run_fields(seed, FULL, "100%", family)) if FULL in methods else None
            for family in families
        }
        for index, budget in enumerate(budgets):
            label = budget_label(budget)
            # Every selection of the budget first, then their models (and, with the first
            # budget, the full-data ones) trained at once; a row goes out as its model ends.
            found = {
                (method, family): lookup(run_fields(seed, method, label, family))
                for method in selecting
                for family in families
            }
            full_jobs: dict[Any, ModelJob] = {}
            if FULL in methods and index == 0:
                for family in families:
                    if full_found[family] is None:
                        full_jobs[FULL, family] = partial(
                            _evaluate_full,
                            seeded_train,
                            validation,
                            test,
                            family_options[family],
                            seed,
                            device,
                            flipped,
                        )
            selection_jobs: dict[Any, ModelJob] = {}
            for method in selecting:
                missing = [family for family in families if found[method, family] is None]
                if not missing:
                    continue
                report(done, total, f"{dataset_name}: {method} at {label}, seed {seed}: selecting")
                chosen = variant_options.get(method, {"method": method})
                config = SelectionConfig.from_dict(
                    {**options, **chosen, **_budget_field(budget), "seed": seed}
                )
                selection = _select(seeded_train, config, teachers)
                for family in missing:
                    selection_jobs[method, family] = partial(
                        _evaluate_selection,
                        seeded_train,
                        validation,
                        test,
                        selection,
                        family_options[family],
                        seed,
                        device,
                        flipped,
                    )
            # The full-data models, the largest, first and last: seldom both at once.
            first = dict(list(full_jobs.items())[:1])
            last = {name: job for name, job in full_jobs.items() if name not in first}
            jobs = {**first, **selection_jobs, **last}
            computed: dict[Any, dict[str, Any]] = {}
            if jobs:
                report(done, total, f"{dataset_name}: {len(jobs)} models at {label}, seed {seed}")
            _at_once(jobs, device, partial(finished, seed, label, full_auc, computed))
            if FULL in methods and index == 0:
                for family in families:
                    previous = full_found[family]
                    if previous is None:
                        row = computed[FULL, family]
                    else:
                        row = dict(previous)
                        full_auc[family] = row["test_auc"]
                        announce(seed, label, (FULL, family), row)
                    rows.append(row)
            for method in selecting:
                for family in families:
                    previous = found[method, family]
                    if previous is None:
                        row = computed[method, family]
                    else:
                        row = dict(previous)
                        announce(seed, label, (method, family), row)
                    if family in full_auc:
                        row["recovery"] = row["test_auc"] / full_auc[family]
                    rows.append(row)
    return rows


# -- reading the rows -------------------------------------------------------------


def summarise(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of every (dataset, noise, rate, evaluator, method,
    budget).

    Returns one dict per group, in the order groups first appear, with
    dataset, noise, flip_rate, evaluator, method, budget, budget_rows, seeds
    (the count) and, for each metric m of test_auc, test_log_loss,
    test_log_loss_calibrated, recovery, selection_seconds, evaluation_seconds,
    coreset_click_rate and coreset_flipped_share, m_mean and m_std (sample
    standard deviation; 0 for one seed; None when the metric is missing). A
    row without a recovery gets one from the "full" row of its seed and family
    when the rows hold it.
    """
    rows = _with_recovery([_settled(row) for row in rows])
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        key = (*_setting(row), row["method"], row["budget"])
        groups.setdefault(key, []).append(row)
    summary = []
    for (dataset, noise, flip_rate, evaluator, method, budget), members in groups.items():
        entry: dict[str, Any] = {
            "dataset": dataset,
            "noise": noise,
            "flip_rate": flip_rate,
            "evaluator": evaluator,
            "method": method,
            "budget": budget,
            "budget_rows": members[0]["budget_rows"],
            "seeds": len(members),
        }
        for metric in _SUMMARY_METRICS:
            values = [float(m[metric]) for m in members if m.get(metric) is not None]
            if not values:
                entry[f"{metric}_mean"] = entry[f"{metric}_std"] = None
                continue
            entry[f"{metric}_mean"] = float(np.mean(values))
            entry[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def student_t_quantile(probability: float, degrees_of_freedom: int) -> float:
    """The ``probability`` quantile of Student's t distribution, probability in (0.5, 1).

    Inverts the exact CDF for integer degrees of freedom (Abramowitz and
    Stegun 26.7.3-4, finite sums in theta = atan(t / sqrt(df))) by bisection,
    to about 1e-12. ``student_t_quantile(0.975, df)`` is the factor of the 95%
    interval mean ± t * stderr.
    """
    if (
        isinstance(degrees_of_freedom, bool)
        or not isinstance(degrees_of_freedom, int)
        or degrees_of_freedom < 1
    ):
        raise ValueError(
            f"degrees_of_freedom: expected a positive integer, got {degrees_of_freedom!r}"
        )
    if not isinstance(probability, (int, float)) or not 0.5 < probability < 1.0:
        raise ValueError(f"probability: expected a number in (0.5, 1), got {probability!r}")
    target = 2.0 * probability - 1.0  # P(|T| <= t)
    low, high = 0.0, 1.0
    while _t_central_mass(high, degrees_of_freedom) < target:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if _t_central_mass(middle, degrees_of_freedom) < target:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * high:
            break
    return 0.5 * (low + high)


def paired_differences(
    rows: Iterable[Mapping[str, Any]],
    *,
    metric: str = "test_auc",
    baselines: Sequence[str] | None = None,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Each method's ``metric`` less a baseline's, seed by seed (same split, noise, budget and
    family).

    baselines: the methods compared against (default: every method of
    ``REFERENCE_METHODS`` the rows hold). Every other method except "full" is
    compared with each of them; a baseline itself only with the first
    ("random" by default), so that e.g. stratified sampling's own gain shows.

    Returns one dict per (dataset, noise, flip_rate, evaluator, budget, method,
    baseline) with the seeds both ran: those fields, budget_rows, metric,
    seeds, mean and std (sample) of the differences, stderr = std /
    sqrt(seeds), ci_low and ci_high (the ``confidence`` interval mean ± t *
    stderr, Student t with seeds - 1 degrees of freedom; None below two seeds),
    wins (seeds where the method is strictly better: above the baseline,
    or below it for the metrics of ``LOWER_IS_BETTER``) and ties (seeds where both score
    the same, e.g. a method that fell back to the baseline's rows).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a number in (0, 1), got {confidence!r}")
    values: dict[tuple[Any, ...], dict[int, float]] = {}  # in the order groups first appear
    budget_rows: dict[tuple[Any, ...], int] = {}
    for row in rows:
        row = _settled(row)
        if row.get(metric) is not None:
            key = (*_setting(row), row["budget"], row["method"])
            values.setdefault(key, {})[row["seed"]] = float(row[metric])
            budget_rows[key[:-1]] = row.get("budget_rows", 0)
    methods_present = list(dict.fromkeys(key[-1] for key in values))
    if baselines is None:
        baselines = [m for m in REFERENCE_METHODS if m in methods_present]
    baselines = list(baselines)
    lower_better = metric in LOWER_IS_BETTER
    result = []
    for key, ours in values.items():
        *setting, budget, method = key
        if method == FULL:
            continue
        against = baselines if method not in REFERENCE_METHODS else baselines[:1]
        for baseline in against:
            if baseline == method:
                continue
            theirs = values.get((*setting, budget, baseline), {})
            seeds = sorted(set(ours) & set(theirs))
            if not seeds:
                continue
            differences = np.array([ours[seed] - theirs[seed] for seed in seeds])
            entry = dict(zip(("dataset", "noise", "flip_rate", "evaluator"), setting, strict=True))
            entry |= {
                "budget": budget,
                "budget_rows": budget_rows[tuple(setting) + (budget,)],
                "method": method,
                "baseline": baseline,
                "metric": metric,
                **_mean_and_interval(differences, confidence),
                "wins": int((differences < 0).sum() if lower_better else (differences > 0).sum()),
                "ties": int((differences == 0).sum()),
            }
            result.append(entry)
    return result


def difference_tables(
    rows: Sequence[Mapping[str, Any]],
    *,
    baselines: Sequence[str] | None = None,
    metrics: Sequence[str] = ("test_auc", "test_log_loss"),
) -> str:
    """Markdown tables of ``paired_differences``, one per (dataset, noise, evaluator).

    Each line is a (budget, method, baseline) with, per metric, the mean
    difference ± its standard error, the 95% interval and the seeds won
    (for the log loss, the seeds where the method's is lower), with the ties.
    """
    per_metric = {
        metric: paired_differences(rows, metric=metric, baselines=baselines) for metric in metrics
    }
    lines_of: dict[tuple[Any, ...], dict[tuple[Any, ...], dict[str, Mapping[str, Any]]]] = {}
    for metric, differences in per_metric.items():
        for d in differences:
            table = (d["dataset"], d["noise"], d["flip_rate"], d["evaluator"])
            line = (d["budget_rows"], d["budget"], d["method"], d["baseline"])
            lines_of.setdefault(table, {}).setdefault(line, {})[metric] = d
    out = []
    for (dataset, noise, flip_rate, evaluator), lines in lines_of.items():
        header = ["budget", "method", "baseline", "seeds"]
        for metric in metrics:
            name = _METRIC_NAMES.get(metric, metric)
            header += [f"{name} difference (mean ± s.e.)", "95% interval", "wins"]
        out.append(
            f"{dataset}, {noise_label(noise, flip_rate)}, {evaluator}: "
            "method less baseline, seed by seed"
        )
        out.append("")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for (_, budget, method, baseline), by_metric in sorted(
            lines.items(), key=lambda item: item[0][0]
        ):
            seeds = max(d["seeds"] for d in by_metric.values())
            cells = [str(budget), str(method), str(baseline), str(seeds)]
            for metric in metrics:
                found = by_metric.get(metric)
                if found is None:
                    cells += ["-", "-", "-"]
                    continue
                ties = found.get("ties", 0)
                cells += [
                    _plus_minus(found),
                    _interval(found),
                    f"{found['wins']}/{found['seeds']}" + (f" ({ties} tied)" if ties else ""),
                ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).rstrip("\n")


def format_table(summary: Sequence[Mapping[str, Any]], *, sort_by_budget: bool = True) -> str:
    """A markdown table of ``summarise`` output: one line per (evaluator, method, budget).

    Columns: dataset, label noise, evaluator, budget, rows, method, test AUC,
    log loss, log loss after Platt scaling, recovery, share of changed labels
    in the coreset (only when some run had noise), selection seconds. Values
    are mean ± std over the seeds.
    """
    entries = [_settled(e) for e in summary]
    if sort_by_budget:
        datasets = _first_seen(e["dataset"] for e in entries)
        noises = _first_seen(e["noise"] for e in entries)
        families = _first_seen(e["evaluator"] for e in entries)

        def key(entry: Mapping[str, Any]) -> tuple[Any, ...]:
            full = entry["method"] == FULL
            dataset, noise, flip_rate, evaluator = _setting(entry)
            noise_order = (noise != CLEAN, noises[noise], flip_rate)
            return (
                datasets[dataset],
                noise_order,
                families[evaluator],
                0 if full else 1,
                entry["budget_rows"],
            )

        entries = sorted(entries, key=key)
    noisy = any(e.get("coreset_flipped_share_mean") is not None for e in entries)
    header = ["dataset", "noise", "evaluator", "budget", "rows", "method", "test AUC", "log loss"]
    header += ["calibrated log loss", "recovery"]
    if noisy:
        header.append("flipped in coreset")
    header.append("select s")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in entries:
        cells = [
            str(e["dataset"]),
            noise_label(e["noise"], e["flip_rate"]),
            str(e["evaluator"]),
            str(e["budget"]),
            f"{e['budget_rows']:,}",
            str(e["method"]),
            _spread(e, "test_auc", 4),
            _spread(e, "test_log_loss", 4),
            _spread(e, "test_log_loss_calibrated", 4),
            _spread(e, "recovery", 3),
        ]
        if noisy:
            cells.append(_spread(e, "coreset_flipped_share", 3))
        cells.append(_spread(e, "selection_seconds", 1))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- the cache of finished rows ---------------------------------------------------


def options_hash(options: Mapping[str, Any]) -> str:
    """A short hash (10 hex digits) of JSON-serialisable options, independent of key order."""
    text = json.dumps(options, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


class RowCache:
    """Rows of finished runs in a JSON-lines file, one per (``RUN_FIELDS``, options hash).

    ``lookup(run)`` returns the row of a run made with the same options
    (``options_hash``), else None; ``append(row)`` adds the row, tagged with
    that hash, to the file and to the lookup. Appends from several processes
    are whole lines (each under an exclusive lock); a line cut short by an
    interruption is ignored when the file is read again.
    """

    def __init__(self, path: str | os.PathLike[str], options_hash: str) -> None:
        self.path = os.fspath(path)
        self.options_hash = options_hash
        self._rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in read_rows(self.path):
            if row.get("options_hash") == options_hash and all(f in row for f in RUN_FIELDS):
                self._rows[self._key(row)] = row

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, run: Mapping[str, Any]) -> dict[str, Any] | None:
        return self._rows.get(self._key(run))

    def append(self, row: Mapping[str, Any]) -> None:
        tagged = dict(row) | {"options_hash": self.options_hash}
        line = json.dumps(tagged, default=float) + "\n"
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.write(line)
                handle.flush()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        self._rows[self._key(tagged)] = tagged

    def rows(self) -> list[dict[str, Any]]:
        """Every row of this options hash, in the order first written."""
        return list(self._rows.values())

    @staticmethod
    def _key(run: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(run[f] for f in RUN_FIELDS)


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file ([] when it does not exist); unreadable lines are skipped."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


# -- the quality targets ----------------------------------------------------------


@dataclass(frozen=True)
class QualityTargets:
    """What a selection method must do against random, paired over seeds.

    - test AUC: mean difference at least ``auc_margin`` at every setting, and
      at least ``noisy_auc_margin`` with symmetric flips at ``noisy_rate`` at
      budgets up to ``noisy_max_budget``;
    - test log loss (before recalibration): mean difference at most ``log_loss_margin``;
    - with symmetric flips at ``noisy_rate``, at the budgets ``flipped_budgets``:
      the coreset's flipped share at most ``flipped_ratio_learnable`` times the
      data's on data whose clean full-data model reaches ``learnable_auc``,
      else at most ``flipped_ratio_other`` times.
    """

    auc_margin: float = 0.0
    noisy_auc_margin: float = 0.01
    noisy_rate: float = 0.2
    noisy_max_budget: float = 0.10
    log_loss_margin: float = 0.01
    flipped_budgets: tuple[float, ...] = (0.05, 0.10)
    flipped_ratio_learnable: float = 0.5
    flipped_ratio_other: float = 0.8
    learnable_auc: float = 0.75


def full_data_auc(
    rows: Iterable[Mapping[str, Any]],
) -> dict[tuple[str, str], dict[str, float | int]]:
    """Mean test AUC (and seeds) of the "full" rows on clean labels, per (dataset, evaluator)."""
    values: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        row = _settled(row)
        if row["method"] == FULL and row["noise"] == CLEAN and row.get("test_auc") is not None:
            values.setdefault((row["dataset"], row["evaluator"]), []).append(float(row["test_auc"]))
    return {key: {"mean": float(np.mean(v)), "seeds": len(v)} for key, v in values.items()}


def check_targets(
    rows: Sequence[Mapping[str, Any]],
    *,
    method: str = "nacs",
    baseline: str = "random",
    targets: QualityTargets | None = None,
) -> list[dict[str, Any]]:
    """``method`` against ``baseline`` by the test AUC and log loss targets, per setting.

    One dict per (dataset, noise, flip_rate, evaluator, budget) where both
    ran: those fields, seeds, auc (the paired difference: mean, stderr,
    ci_low, ci_high), auc_target, auc_pass, log_loss (likewise),
    log_loss_target and log_loss_pass (differences are method less baseline;
    a pass compares the mean over seeds with the target).
    """
    targets = targets or QualityTargets()
    found: dict[tuple[Any, ...], dict[str, Mapping[str, Any]]] = {}
    for metric in ("test_auc", "test_log_loss"):
        for d in paired_differences(rows, metric=metric, baselines=[baseline]):
            if d["method"] == method:
                key = (
                    d["dataset"],
                    d["noise"],
                    d["flip_rate"],
                    d["evaluator"],
                    d["budget_rows"],
                    d["budget"],
                )
                found.setdefault(key, {})[metric] = d
    checks = []
    datasets = _first_seen(key[0] for key in found)
    noises = _first_seen(key[1] for key in found)
    families = _first_seen(key[3] for key in found)

    def order(key: tuple[Any, ...]) -> tuple[Any, ...]:
        dataset, noise, flip_rate, evaluator, budget_rows, _ = key
        return (
            datasets[dataset],
            noise != CLEAN,
            noises[noise],
            flip_rate,
            families[evaluator],
            budget_rows,
        )

    for key, by_metric in sorted(found.items(), key=lambda item: order(item[0])):
        dataset, noise, flip_rate, evaluator, _, budget = key
        ratio = _budget_ratio(budget)
        auc_target = targets.auc_margin
        if (
            noise == "symmetric"
            and math.isclose(flip_rate, targets.noisy_rate)
            and ratio is not None
            and ratio <= targets.noisy_max_budget + 1e-12
        ):
            auc_target = max(auc_target, targets.noisy_auc_margin)
        entry: dict[str, Any] = {
            "dataset": dataset,
            "noise": noise,
            "flip_rate": flip_rate,
            "evaluator": evaluator,
            "budget": budget,
            "method": method,
            "baseline": baseline,
            "seeds": max(d["seeds"] for d in by_metric.values()),
        }
        auc = by_metric.get("test_auc")
        log_loss = by_metric.get("test_log_loss")
        entry["auc"] = auc
        entry["auc_target"] = auc_target
        entry["auc_pass"] = None if auc is None else auc["mean"] >= auc_target
        entry["log_loss"] = log_loss
        entry["log_loss_target"] = targets.log_loss_margin
        entry["log_loss_pass"] = (
            None if log_loss is None else log_loss["mean"] <= targets.log_loss_margin
        )
        checks.append(entry)
    return checks


def check_flipped_shares(
    rows: Sequence[Mapping[str, Any]],
    *,
    method: str = "nacs",
    targets: QualityTargets | None = None,
    learnable_evaluator: str = "deepfm",
) -> list[dict[str, Any]]:
    """The share of flipped labels in ``method``'s coresets against the data's, per setting.

    One dict per (dataset, budget) with symmetric flips at ``targets.noisy_rate``
    and a budget of ``targets.flipped_budgets``: dataset, flip_rate, budget,
    seeds, coreset_share and data_share (means over seeds; a coreset's share
    does not depend on the evaluator), ratio, full_auc (the clean full-data
    AUC of ``learnable_evaluator``, else of the best family the rows hold;
    None without "full" rows), target (``flipped_ratio_learnable`` when
    full_auc reaches ``learnable_auc``, else ``flipped_ratio_other``) and
    passed (ratio <= target).
    """
    targets = targets or QualityTargets()
    full = full_data_auc(rows)
    shares: dict[tuple[Any, ...], dict[int, tuple[float, float]]] = {}
    for row in rows:
        row = _settled(row)
        ratio = _budget_ratio(row["budget"])
        if (
            row["method"] != method
            or row["noise"] != "symmetric"
            or not math.isclose(row["flip_rate"], targets.noisy_rate)
            or ratio is None
            or not any(math.isclose(ratio, b) for b in targets.flipped_budgets)
            or row.get("coreset_flipped_share") is None
        ):
            continue
        key = (row["dataset"], row["flip_rate"], row["budget_rows"], row["budget"])
        shares.setdefault(key, {})[row["seed"]] = (
            float(row["coreset_flipped_share"]),
            float(row["data_flipped_share"]),
        )
    checks = []
    datasets = _first_seen(key[0] for key in shares)
    ordered = sorted(shares.items(), key=lambda item: (datasets[item[0][0]], *item[0][1:3]))
    for (dataset, flip_rate, _, budget), by_seed in ordered:
        coreset_share = float(np.mean([s[0] for s in by_seed.values()]))
        data_share = float(np.mean([s[1] for s in by_seed.values()]))
        full_auc = _learnability(full, dataset, learnable_evaluator)
        if full_auc is None:
            target = None
        elif full_auc >= targets.learnable_auc:
            target = targets.flipped_ratio_learnable
        else:
            target = targets.flipped_ratio_other
        ratio = coreset_share / data_share if data_share > 0 else None
        checks.append(
            {
                "dataset": dataset,
                "flip_rate": flip_rate,
                "budget": budget,
                "method": method,
                "seeds": len(by_seed),
                "coreset_share": coreset_share,
                "data_share": data_share,
                "ratio": ratio,
                "full_auc": full_auc,
                "target": target,
                "passed": None if target is None or ratio is None else ratio <= target,
            }
        )
    return checks


def format_checks(
    differences: Sequence[Mapping[str, Any]], flipped: Sequence[Mapping[str, Any]] = ()
) -> str:
    """Markdown tables of ``check_targets`` and ``check_flipped_shares``, and the count of
    passes."""
    lines = []
    passes = fails = 0
    if differences:
        lines += [
            "| dataset | noise | evaluator | budget | seeds | AUC difference [95% interval] "
            "| target "
            "| pass | log loss difference [95% interval] | target | pass |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in differences:
            cells = [
                str(c["dataset"]),
                noise_label(c["noise"], c["flip_rate"]),
                str(c["evaluator"]),
                str(c["budget"]),
                str(c["seeds"]),
            ]
            for metric, sign in (("auc", ">="), ("log_loss", "<=")):
                d = c[metric]
                cells.append(
                    "-"
                    if d is None
                    else f"{d['mean']:+.4f}"
                    + (f" {_interval(d)}" if d["ci_low"] is not None else "")
                )
                cells.append(f"{sign} {c[metric + '_target']:+.2f}")
                cells.append(_verdict(c[metric + "_pass"]))
                passes += c[metric + "_pass"] is True
                fails += c[metric + "_pass"] is False
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if flipped:
        lines += [
            "| dataset | flips | budget | seeds | flipped in coreset | in data | ratio "
            "| full-data AUC | target | pass |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in flipped:
            lines.append(
                f"| {c['dataset']} | {100 * c['flip_rate']:g}% | {c['budget']} | {c['seeds']} "
                f"| {c['coreset_share']:.3f} | {c['data_share']:.3f} | {_number(c['ratio'], 2)} "
                f"| {_number(c['full_auc'], 4)} | "
                + ("-" if c["target"] is None else f"<= {c['target']:.1f}x")
                + f" | {_verdict(c['passed'])} |"
            )
            passes += c["passed"] is True
            fails += c["passed"] is False
        lines.append("")
    lines.append(f"{passes} of {passes + fails} checks pass")
    return "\n".join(lines)


def check_audit_agreement(
    rows: Sequence[Mapping[str, Any]], *, method: str = "nacs", baseline: str | None = None
) -> list[dict[str, Any]]:
    """Whether each job's own audit told the same story as the offline evaluation.

    One dict per (dataset, noise, flip_rate, evaluator, budget) where
    ``method``'s rows carry an audit of that family (the audit trains the
    logistic family and the selection's backbone): dataset, noise, flip_rate,
    evaluator, budget, seeds, audit (the mean over seeds of the audit's AUC
    difference, coreset less its random subset, on the held-out rows of the
    training split), offline (the mean paired test AUC difference of
    ``method`` less ``baseline``), baseline, verdicts (the audit's verdict per seed,
    counted), agree (the two means have the same sign) and settled (the offline
    difference's 95% interval excludes zero: the offline evaluation itself knows the sign).
    baseline: by default the audit's own, "stratified" (its random subsets keep the click
    rate), in each setting where the rows hold that method, else "random".
    """
    audits: dict[tuple[Any, ...], dict[int, tuple[float, str | None]]] = {}
    for row in rows:
        row = _settled(row)
        if row["method"] == method and row.get("audit_auc_difference") is not None:
            key = (*_setting(row), row["budget"])
            audits.setdefault(key, {})[row["seed"]] = (
                float(row["audit_auc_difference"]),
                row.get("audit_family_verdict"),
            )
    offline: dict[tuple[Any, ...], tuple[dict[str, Any], str]] = {}
    # the preferred baseline last, so that it replaces the other where both are paired
    for name in ("random", "stratified") if baseline is None else (baseline,):
        for d in paired_differences(rows, metric="test_auc", baselines=[name]):
            if d["method"] == method:
                key = (d["dataset"], d["noise"], d["flip_rate"], d["evaluator"], d["budget"])
                offline[key] = (d, name)
    checks = []
    datasets = _first_seen(key[0] for key in audits)
    noises = _first_seen(key[1] for key in audits)

    def order(key: tuple[Any, ...]) -> tuple[Any, ...]:
        dataset, noise, flip_rate, evaluator, budget = key
        return (
            datasets[dataset],
            noise != CLEAN,
            noises[noise],
            flip_rate,
            evaluator,
            _budget_ratio(budget) or 0.0,
        )

    for key, by_seed in sorted(audits.items(), key=lambda item: order(item[0])):
        if key not in offline:
            continue
        paired, paired_with = offline[key]
        audit_mean = float(np.mean([value for value, _ in by_seed.values()]))
        verdicts: dict[str, int] = {}
        for _, verdict in by_seed.values():
            verdicts[str(verdict)] = verdicts.get(str(verdict), 0) + 1
        dataset, noise, flip_rate, evaluator, budget = key
        checks.append(
            {
                "dataset": dataset,
                "noise": noise,
                "flip_rate": flip_rate,
                "evaluator": evaluator,
                "budget": budget,
                "seeds": len(by_seed),
                "audit": audit_mean,
                "offline": float(paired["mean"]),
                "baseline": paired_with,
                "verdicts": verdicts,
                "agree": (audit_mean >= 0) == (paired["mean"] >= 0),
                "settled": paired["ci_low"] is not None
                and (paired["ci_low"] > 0 or paired["ci_high"] < 0),
            }
        )
    return checks


def format_audit_agreement(checks: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of ``check_audit_agreement`` and the share of settings that agree."""
    if not checks:
        return "No audited rows."
    lines = [
        "| dataset | noise | evaluator | budget | seeds | audit: AUC difference | verdicts "
        "| offline: AUC difference | same sign |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        verdicts = ", ".join(f"{name} {count}" for name, count in sorted(c["verdicts"].items()))
        lines.append(
            f"| {c['dataset']} | {noise_label(c['noise'], c['flip_rate'])} | {c['evaluator']} "
            f"| {c['budget']} | {c['seeds']} | {c['audit']:+.4f} | {verdicts} "
            f"| {c['offline']:+.4f} | {'yes' if c['agree'] else 'no'} |"
        )
    agreeing = sum(bool(c["agree"]) for c in checks)
    decisive = contradicting = 0
    for c in checks:
        for verdict, count in c["verdicts"].items():
            if verdict in ("better", "worse"):
                decisive += count
                contradicting += count * ((verdict == "better") != (c["offline"] >= 0))
    baselines = " and ".join(dict.fromkeys(str(c["baseline"]) for c in checks))
    lines.append("")
    lines.append(
        f"The audit agrees in sign with the offline evaluation (less {baselines}) on "
        f"{agreeing} of {len(checks)} settings ({agreeing / len(checks):.0%}); of its "
        f"{decisive} decisive verdicts (better or worse), {contradicting} contradict the "
        "offline sign."
    )
    settled = [c for c in checks if c["settled"]]
    lines.append(
        f"Of the {len(settled)} settings where the offline 95% interval excludes zero, the "
        f"audit agrees on {sum(bool(c['agree']) for c in settled)}."
    )
    return "\n".join(lines)


def leave_one_dataset_out(
    rows: Sequence[Mapping[str, Any]],
    candidates: Sequence[str],
    *,
    default: str = "nacs",
    baseline: str = "random",
) -> dict[str, Any]:
    """Choose among ``candidates`` (methods or variants) with each dataset held out.

    A candidate's score on a dataset is the mean, over the settings (noise,
    rate, evaluator, budget) where every candidate ran, of its paired test AUC
    difference from ``baseline``. For each held-out dataset the candidate with
    the best mean score on the other datasets is chosen, and its score on the
    held-out one reported. Returns ``scores`` {candidate: {dataset: score}},
    ``below`` {candidate: {dataset: settings with a negative difference}},
    ``settings`` {dataset: count} and ``held_out``: one dict per dataset with
    dataset, chosen, chosen_score, default_score and best (the candidate best
    on that dataset itself).
    """
    found: dict[tuple[Any, ...], dict[str, float]] = {}
    for d in paired_differences(rows, metric="test_auc", baselines=[baseline]):
        if d["method"] in candidates:
            key = (d["dataset"], d["noise"], d["flip_rate"], d["evaluator"], d["budget"])
            found.setdefault(key, {})[d["method"]] = float(d["mean"])
    complete = {key: by for key, by in found.items() if all(c in by for c in candidates)}
    datasets = list(_first_seen(key[0] for key in complete))
    scores: dict[str, dict[str, float]] = {c: {} for c in candidates}
    below: dict[str, dict[str, int]] = {c: {} for c in candidates}
    settings = {dataset: 0 for dataset in datasets}
    for dataset in datasets:
        members = [by for key, by in complete.items() if key[0] == dataset]
        settings[dataset] = len(members)
        for c in candidates:
            values = [by[c] for by in members]
            scores[c][dataset] = float(np.mean(values))
            below[c][dataset] = sum(value < 0 for value in values)
    held_out = []
    for dataset in datasets:
        others = [d for d in datasets if d != dataset]
        if not others:
            continue
        chosen = max(candidates, key=lambda c: float(np.mean([scores[c][d] for d in others])))
        held_out.append(
            {
                "dataset": dataset,
                "chosen": chosen,
                "chosen_score": scores[chosen][dataset],
                "default_score": scores[default][dataset] if default in scores else None,
                "best": max(candidates, key=lambda c: scores[c][dataset]),
            }
        )
    return {"scores": scores, "below": below, "settings": settings, "held_out": held_out}


def format_leave_one_dataset_out(result: Mapping[str, Any]) -> str:
    """Markdown: every candidate's score per dataset, then the choice with each held out."""
    scores, below, settings = result["scores"], result["below"], result["settings"]
    datasets = list(settings)
    lines = [
        "| candidate | " + " | ".join(f"{d} ({settings[d]} settings)" for d in datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for c, by in scores.items():
        cells = [f"{by[d]:+.4f} ({below[c][d]} below)" for d in datasets]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| held out | chosen on the others | its AUC gain there | the default's | best there |",
        "|---|---|---|---|---|",
    ]
    for h in result["held_out"]:
        default = "-" if h["default_score"] is None else f"{h['default_score']:+.4f}"
        lines.append(
            f"| {h['dataset']} | {h['chosen']} | {h['chosen_score']:+.4f} | {default} "
            f"| {h['best']} |"
        )
    return "\n".join(lines)


# -- the runs, one at a time ------------------------------------------------------


@dataclass(frozen=True)
class _Selection:
    result: Any  # pipeline.CoresetResult
    seconds: float


def _select(train: EncodedDataset, config: SelectionConfig, teachers: TeacherCache) -> _Selection:
    from nacs_engine.pipeline import select_coreset

    started = time.perf_counter()
    result = select_coreset(train, config, teacher_cache=teachers)
    return _Selection(result, time.perf_counter() - started)


# A run's model: given a check to call after every step and epoch (it raises to stop the
# model), the run's fields.
ModelJob = Callable[[Callable[[Any, Any], None]], dict[str, Any]]


def _at_once(
    jobs: Mapping[Any, ModelJob], device: str, on_result: Callable[[Any, dict[str, Any]], None]
) -> None:
    """Train ``jobs`` at once on a CPU, one lane per torch thread (as the teacher's and the
    audit's models train), each model on one thread, and call ``on_result(name, fields)``
    here, in this thread, as each ends. One thread per model gives a run the same scores
    whatever else runs beside it, and keeps two models on two cores from stalling when
    another process takes a core, where a model spread over both threads waits at each
    operation for the thread that lost its core (4-6x slower beside one busy process,
    1.25x now: bench/evaluate_speed.py). A failure, or an exception from ``on_result``
    (an interrupt among them), stops the models still training at their next step and is
    raised."""
    resolved = resolve_device(device)
    names = list(jobs)
    lanes = cpu_lanes(resolved, len(names))
    shared = SharedProgress()

    def check(*_: Any) -> None:
        shared.call(lambda: None)

    with one_thread_each(resolved):
        train_at_once(
            [partial(jobs[name], check) for name in names],
            lanes,
            shared,
            on_result=lambda index, fields: on_result(names[index], fields),
        )


def _evaluate_full(
    train: EncodedDataset,
    validation: EncodedDataset,
    test: EncodedDataset,
    options: EvaluationOptions,
    seed: int,
    device: str,
    flipped: np.ndarray | None,
    check: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    evaluation = evaluate_coreset(
        train,
        validation,
        test,
        rows=None,
        options=options,
        seed=seed,
        device=device,
        progress=check,
        on_batch=check,
    )
    click_rate = float(np.mean(train.labels, dtype=np.float64))
    share = float(flipped.mean()) if flipped is not None else None
    return {
        "budget_rows": train.n_rows,
        "test_auc": evaluation.test_auc,
        "test_log_loss": evaluation.test_log_loss,
        "test_log_loss_calibrated": evaluation.test_log_loss_calibrated,
        "validation_auc": evaluation.validation_auc,
        "recovery": 1.0,
        "selection_seconds": 0.0,
        "evaluation_seconds": evaluation.seconds,
        "best_epoch": evaluation.best_epoch,
        "coreset_click_rate": click_rate,
        "data_click_rate": click_rate,
        "coreset_flipped_share": share,
        "data_flipped_share": share,
        "soft_label_shift": 0.0,
    }


def evaluate_result(
    train: EncodedDataset,
    validation: EncodedDataset,
    test: EncodedDataset,
    result: CoresetResult,
    options: EvaluationOptions,
    seed: int,
    device: str = "cpu",
    progress: Callable[[int, float], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """A fresh model of ``options`` trained on ``result``'s rows of ``train`` as delivered
    (its soft labels and weights), early-stopped on ``validation`` and scored on ``test``;
    progress(epoch, score) and on_batch(done, total) as in ``evaluate_coreset``."""
    return evaluate_coreset(
        train,
        validation,
        test,
        rows=result.rows,
        soft_labels=result.soft_labels,
        weights=result.weights,
        options=options,
        seed=seed,
        device=device,
        progress=progress,
        on_batch=on_batch,
    )


def _evaluate_selection(
    train: EncodedDataset,
    validation: EncodedDataset,
    test: EncodedDataset,
    selection: _Selection,
    options: EvaluationOptions,
    seed: int,
    device: str,
    flipped: np.ndarray | None,
    check: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    result = selection.result
    evaluation = evaluate_result(
        train, validation, test, result, options, seed, device, progress=check, on_batch=check
    )
    return {
        "budget_rows": result.size,
        "test_auc": evaluation.test_auc,
        "test_log_loss": evaluation.test_log_loss,
        "test_log_loss_calibrated": evaluation.test_log_loss_calibrated,
        "validation_auc": evaluation.validation_auc,
        "selection_seconds": selection.seconds,
        "evaluation_seconds": evaluation.seconds,
        "best_epoch": evaluation.best_epoch,
        "coreset_click_rate": float(np.mean(result.labels, dtype=np.float64)),
        "data_click_rate": float(np.mean(train.labels, dtype=np.float64)),
        "coreset_flipped_share": float(flipped[result.rows].mean())
        if flipped is not None
        else None,
        "data_flipped_share": float(flipped.mean()) if flipped is not None else None,
        "soft_label_shift": float(np.abs(result.soft_labels - result.labels).mean()),
    } | _audit_fields(result.diagnostics, options.backbone)


def _audit_fields(diagnostics: Mapping[str, Any], family: str) -> dict[str, Any]:
    """What the selection's own audit and noise estimate said, for this row's family."""
    audit = diagnostics.get("audit") or {}
    by_family = (audit.get("families") or {}).get(family) or {}
    noise = diagnostics.get("noise") or {}
    return {
        "audit_verdict": audit.get("verdict"),
        "audit_family_verdict": by_family.get("verdict"),
        "audit_auc_difference": by_family.get("auc_difference"),
        "audit_auc_difference_se": by_family.get("auc_difference_se"),
        "estimated_flip_rate": noise.get("flip_rate"),
        "set_aside_rows": noise.get("set_aside_rows"),
        # False: the teacher ranked the given labels no better than chance could, and the
        # estimate was not used (nothing set aside, given labels, a draw within each class)
        "teacher_trusted": noise.get("teacher_trusted"),
        # True: trusted by fewer than three standard errors of chance, with more than half
        # of a class set aside (``nacs_engine.nacs.narrow_trust``)
        "narrow_trust": noise.get("narrow_trust"),
    }


def _budget_field(budget: float | int) -> dict[str, float | int]:
    return {"ratio": budget} if isinstance(budget, float) else {"size": budget}


# -- helpers ----------------------------------------------------------------------

_METRIC_NAMES = {
    "test_auc": "test AUC",
    "test_log_loss": "log loss",
    "test_log_loss_calibrated": "calibrated log loss",
}


def _settled(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """``row`` with its noise and evaluator set: rows that lack them had symmetric flips and
    DeepFM."""
    if "noise" in row and "evaluator" in row:
        return row
    rate = row.get("flip_rate", 0.0)
    return {
        "noise": CLEAN if not rate else "symmetric",
        "evaluator": "deepfm",
        "flip_rate": rate,
    } | dict(row)


def _setting(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (row["dataset"], row["noise"], row["flip_rate"], row["evaluator"])


def _with_recovery(rows: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    full = {
        (*_setting(row), row["seed"]): float(row["test_auc"])
        for row in rows
        if row["method"] == FULL and row.get("test_auc") is not None and "seed" in row
    }
    out = []
    for row in rows:
        key = (*_setting(row), row.get("seed"))
        if row.get("recovery") is None and key in full and row.get("test_auc") is not None:
            row = dict(row) | {"recovery": float(row["test_auc"]) / full[key]}
        out.append(row)
    return out


def _mean_and_interval(differences: np.ndarray, confidence: float) -> dict[str, float | int | None]:
    n = int(differences.shape[0])
    mean = float(differences.mean())
    if n < 2:
        return {
            "seeds": n,
            "mean": mean,
            "std": None,
            "stderr": None,
            "ci_low": None,
            "ci_high": None,
        }
    std = float(np.std(differences, ddof=1))
    stderr = std / math.sqrt(n)
    half = student_t_quantile(0.5 + confidence / 2.0, n - 1) * stderr
    return {
        "seeds": n,
        "mean": mean,
        "std": std,
        "stderr": stderr,
        "ci_low": mean - half,
        "ci_high": mean + half,
    }


def _t_central_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` degrees of freedom (A&S 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:
        total, term = 0.0, math.cos(theta)
        for j in range(1, (df - 1) // 2 + 1):
            total += term
            term *= (2 * j) / (2 * j + 1) * cos2
        return (2.0 / math.pi) * (theta + sin * total)
    total, term = 0.0, 1.0
    for j in range(df // 2):
        total += term
        term *= (2 * j + 1) / (2 * j + 2) * cos2
    return sin * total


def _budget_ratio(budget: Any) -> float | None:
    """0.05 for the label "5%"; None for a size."""
    text = str(budget)
    if text.endswith("%"):
        try:
            return float(text[:-1]) / 100.0
        except ValueError:
            return None
    return None


def _first_seen(values: Iterable[Any]) -> dict[Any, int]:
    """Each distinct value and the rank of its first appearance."""
    ranks: dict[Any, int] = {}
    for value in values:
        ranks.setdefault(value, len(ranks))
    return ranks


def _learnability(
    full: Mapping[tuple[str, str], Mapping[str, float | int]], dataset: str, evaluator: str
) -> float | None:
    if (dataset, evaluator) in full:
        return float(full[(dataset, evaluator)]["mean"])
    means = [float(v["mean"]) for (d, _), v in full.items() if d == dataset]
    return max(means) if means else None


def _plus_minus(d: Mapping[str, Any]) -> str:
    if d["stderr"] is None:
        return f"{d['mean']:+.4f}"
    return f"{d['mean']:+.4f} ± {d['stderr']:.4f}"


def _interval(d: Mapping[str, Any]) -> str:
    if d["ci_low"] is None:
        return "-"
    return f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"


def _verdict(passed: bool | None) -> str:
    return "-" if passed is None else ("yes" if passed else "**no**")


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _noise_rng(kind: str, seed: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence(entropy=seed, spawn_key=(_NOISE_STREAMS[kind],))
    )


# -- checks and formatting --------------------------------------------------------


def _check_arguments(
    train: Any,
    validation: Any,
    test: Any,
    methods: Sequence[str],
    budgets: Sequence[float | int],
    seeds: Sequence[int],
    noise_kind: str,
    flip_rate: float,
) -> tuple[list[str], list[float | int], list[int]]:
    for name, value in (("train", train), ("validation", validation), ("test", test)):
        if not isinstance(value, EncodedDataset):
            raise ValueError(f"{name}: expected an EncodedDataset, got {type(value).__name__}")
    for name, value in (("validation", validation), ("test", test)):
        if tuple(value.field_dims) != tuple(train.field_dims):
            raise ValueError(
                f"{name}: its field_dims differ from the training data's (encode them together)"
            )
    if isinstance(methods, str) or not methods:
        raise ValueError("methods: expected a non-empty list of method names")
    unknown = [m for m in methods if m not in COMPARABLE_METHODS]
    if unknown:
        raise ValueError(
            f"methods: unknown {', '.join(map(repr, unknown))}; "
            f"expected {', '.join(COMPARABLE_METHODS)}"
        )
    if len(set(methods)) != len(methods):
        raise ValueError("methods: each method may appear once")
    checked_budgets: list[float | int] = []
    if isinstance(budgets, (str, bytes)) or not budgets:
        raise ValueError("budgets: expected a non-empty list of ratios or sizes")
    for budget in budgets:
        if isinstance(budget, (bool, np.bool_)):
            raise ValueError(f"budgets: expected ratios in (0, 1) or sizes >= 1, got {budget!r}")
        if isinstance(budget, (int, np.integer)):
            if not 2 <= budget < train.n_rows:
                raise ValueError(f"budgets: size {budget} must lie in [2, {train.n_rows})")
            checked_budgets.append(int(budget))
        elif isinstance(budget, (float, np.floating)) and 0.0 < budget < 1.0:
            if int(round(budget * train.n_rows)) < 2:
                raise ValueError(
                    f"budgets: ratio {budget} of {train.n_rows} rows selects fewer than 2 rows"
                )
            checked_budgets.append(float(budget))
        else:
            raise ValueError(f"budgets: expected ratios in (0, 1) or sizes >= 1, got {budget!r}")
    if isinstance(seeds, (str, bytes)) or not seeds:
        raise ValueError("seeds: expected a non-empty list of non-negative integers")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seeds: expected non-negative integers, got {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds: each seed may appear once")
    if noise_kind not in NOISE_KINDS:
        raise ValueError(
            f"noise_kind: expected one of {', '.join(NOISE_KINDS)}, got {noise_kind!r}"
        )
    _check_rate("flip_rate", flip_rate, NOISE_KINDS[noise_kind].max_rate)
    return list(methods), checked_budgets, [int(s) for s in seeds]


def _check_evaluators(evaluators: Sequence[str] | None, options: EvaluationOptions) -> list[str]:
    if evaluators is None:
        return [options.backbone]
    if isinstance(evaluators, str) or not evaluators:
        raise ValueError("evaluators: expected a non-empty list of evaluator families")
    unknown = [e for e in evaluators if e not in EVALUATORS]
    if unknown:
        raise ValueError(
            f"evaluators: unknown {', '.join(map(repr, unknown))}; expected {', '.join(EVALUATORS)}"
        )
    if len(set(evaluators)) != len(evaluators):
        raise ValueError("evaluators: each family may appear once")
    return list(evaluators)


def _check_rate(name: str, value: Any, maximum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a number in [0, {maximum:g}), got {value!r}")
    if not 0.0 <= value < maximum:
        raise ValueError(f"{name}: expected a number in [0, {maximum:g}), got {value!r}")


def _spread(entry: Mapping[str, Any], metric: str, digits: int) -> str:
    mean = entry.get(f"{metric}_mean")
    if mean is None:
        return "-"
    std = entry.get(f"{metric}_std") or 0.0
    if entry.get("seeds", 1) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
