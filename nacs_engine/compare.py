"""Compare selection methods on one dataset: select, train a fresh model, score it.

``compare_methods`` runs every (method, budget, seed) on a (train, validation,
test) split: it selects a coreset of the training rows with ``select_coreset``,
trains a fresh backbone on it (soft labels and weights, early-stopped on the
validation AUC, ``evaluate_coreset``) and scores it on the test rows. The
method ``"full"`` trains on every training row instead, once per seed; its AUC
is the denominator of each coreset's ``recovery`` (coreset AUC / full-data AUC
of the same seed).

With ``flip_rate`` > 0 a share of the TRAINING labels is flipped, per seed,
before anything else runs (the full-data model sees the same flipped labels);
validation and test stay clean. Each row then says how many of the coreset's
rows carry a flipped label.

``summarise`` reduces the rows to mean and standard deviation over seeds and
``format_table`` prints them as a markdown table. ``nacs evaluate`` is these
three calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from nacs_engine.config import BASELINE_METHODS, METHODS, SelectionConfig
from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.evaluate import EvaluationOptions, evaluate_coreset

FULL = "full"
COMPARABLE_METHODS: tuple[str, ...] = (*METHODS, FULL)
"""Every method name ``compare_methods`` accepts: the selection methods and "full"."""

# The label flips draw from their own stream of the seed, apart from the engine's streams.
_FLIP_STREAM = 101

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


def budget_label(budget: float | int) -> str:
    """How a budget reads in a table: "5%" for the ratio 0.05, "700" for the size 700."""
    if isinstance(budget, float):
        return f"{100 * budget:g}%"
    return str(budget)


def flip_labels(labels: np.ndarray, flip_rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly round(flip_rate * n) labels chosen at random from ``seed``.

    labels: (n,) 0/1. Returns (noisy labels (n,) float32, flipped (n,) bool).
    """
    _check_rate("flip_rate", flip_rate)
    labels = np.asarray(labels, dtype=np.float32)
    n = labels.shape[0]
    flipped = np.zeros(n, dtype=bool)
    count = int(round(flip_rate * n))
    if count:
        rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(_FLIP_STREAM,)))
        flipped[rng.permutation(n)[:count]] = True
    noisy = np.where(flipped, 1.0 - labels, labels).astype(np.float32)
    return noisy, flipped


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
    flip_rate: float = 0.0,
    device: str = "cpu",
    dataset_name: str = "data",
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Select and evaluate every (method, budget, seed); one result dict per run.

    methods: names from ``COMPARABLE_METHODS`` ("full" trains on all training rows).
    budgets: ratios (floats in (0, 1)) or sizes (ints >= 1) of the training rows.
    seeds: each seed drives the label flips, the selection and the fresh model.
    selection_options: ``SelectionConfig`` fields other than ratio, size and
        method (for example ``{"rounds": 5, "class_balance": "none"}``); a
        ``seed`` there is overridden by each of ``seeds``.
    evaluation_options: how the fresh model is trained (``EvaluationOptions``);
        its backbone defaults to the selection's backbone.
    flip_rate: share of training labels flipped per seed, in [0, 0.5).
    device: "cpu", "cuda", "auto"; used by selection and evaluation.

    Each row holds dataset, method, budget (as a label), budget_rows, seed,
    flip_rate, test_auc, test_log_loss, test_log_loss_calibrated (after Platt
    scaling on the validation split), validation_auc, recovery (None without
    "full"), selection_seconds, evaluation_seconds, best_epoch,
    coreset_click_rate, data_click_rate, coreset_flipped_share,
    data_flipped_share (None without flips) and soft_label_shift (mean
    |soft label - given label|).
    """
    methods, budgets, seeds = _check_arguments(
        train, validation, test, methods, budgets, seeds, flip_rate
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
    if evaluation_options is None:
        evaluation_options = EvaluationOptions(backbone=options.get("backbone", "deepfm"))
    if not isinstance(evaluation_options, EvaluationOptions):
        raise ValueError(
            f"evaluation_options: expected EvaluationOptions, got {type(evaluation_options).__name__}"
        )
    report = progress or (lambda done, total, message: None)

    selecting = [m for m in methods if m != FULL]
    total = len(seeds) * (len(selecting) * len(budgets) + (FULL in methods))
    rows: list[dict[str, Any]] = []
    done = 0
    for seed in seeds:
        seeded_train, flipped = train, None
        if flip_rate > 0:
            noisy, flipped = flip_labels(train.labels, flip_rate, seed)
            seeded_train = replace(train, labels=noisy)
        full_auc = None
        if FULL in methods:
            report(done, total, f"{dataset_name}: full data, seed {seed}")
            row = _evaluate_full(
                seeded_train, validation, test, evaluation_options, seed, device, flipped
            )
            full_auc = row["test_auc"]
            rows.append(_labelled(row, dataset_name, seed, flip_rate))
            done += 1
            report(done, total, f"{dataset_name}: full data, seed {seed}: AUC {full_auc:.4f}")
        for budget in budgets:
            for method in selecting:
                name = f"{dataset_name}: {method} at {budget_label(budget)}, seed {seed}"
                report(done, total, name)
                config = SelectionConfig.from_dict(
                    {**options, **_budget_field(budget), "method": method, "seed": seed}
                )
                row = _evaluate_selection(
                    seeded_train,
                    validation,
                    test,
                    config,
                    evaluation_options,
                    seed,
                    device,
                    flipped,
                )
                row["budget"] = budget_label(budget)
                row["recovery"] = row["test_auc"] / full_auc if full_auc else None
                rows.append(_labelled(row, dataset_name, seed, flip_rate))
                done += 1
                report(done, total, f"{name}: AUC {row['test_auc']:.4f}")
    return rows


def summarise(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of every (dataset, flip_rate, method, budget).

    Returns one dict per group, in the order groups first appear, with
    dataset, flip_rate, method, budget, budget_rows, seeds (the count) and,
    for each metric m of test_auc, test_log_loss, test_log_loss_calibrated, recovery, selection_seconds,
    evaluation_seconds, coreset_click_rate and coreset_flipped_share, m_mean
    and m_std (sample standard deviation; 0 for one seed; None when the
    metric is missing).
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        key = (row["dataset"], row["flip_rate"], row["method"], row["budget"])
        groups.setdefault(key, []).append(row)
    summary = []
    for (dataset, flip_rate, method, budget), members in groups.items():
        entry: dict[str, Any] = {
            "dataset": dataset,
            "flip_rate": flip_rate,
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


def paired_differences(
    rows: Iterable[Mapping[str, Any]],
    *,
    baselines: Sequence[str] = ("random", "stratified"),
    metric: str = "test_auc",
) -> list[dict[str, Any]]:
    """Each method's ``metric`` less each baseline's, seed by seed (same split, flips and budget).

    Returns one dict per (dataset, flip_rate, budget, method, baseline) with
    the seeds both ran: dataset, flip_rate, budget, method, baseline, seeds,
    mean and std of the differences, stderr = std / sqrt(seeds), and wins
    (seeds where the method is strictly above the baseline). Only the NaCS
    methods are compared: not the random baselines, nor "full".
    """
    values: dict[tuple[Any, ...], dict[int, float]] = {}  # in the order groups first appear
    for row in rows:
        if row.get(metric) is not None:
            key = (row["dataset"], row["flip_rate"], row["budget"], row["method"])
            values.setdefault(key, {})[row["seed"]] = float(row[metric])
    result = []
    for (dataset, flip_rate, budget, method), ours in values.items():
        if method in BASELINE_METHODS or method == FULL:
            continue
        for baseline in baselines:
            theirs = values.get((dataset, flip_rate, budget, baseline), {})
            seeds = sorted(set(ours) & set(theirs))
            if not seeds:
                continue
            differences = np.array([ours[seed] - theirs[seed] for seed in seeds])
            std = float(np.std(differences, ddof=1)) if len(seeds) > 1 else 0.0
            result.append(
                {
                    "dataset": dataset,
                    "flip_rate": flip_rate,
                    "budget": budget,
                    "method": method,
                    "baseline": baseline,
                    "seeds": len(seeds),
                    "mean": float(differences.mean()),
                    "std": std,
                    "stderr": std / math.sqrt(len(seeds)),
                    "wins": int((differences > 0).sum()),
                }
            )
    return result


def format_differences(differences: Sequence[Mapping[str, Any]], *, metric: str = "test AUC") -> str:
    """A markdown table of ``paired_differences``: mean ± standard error and wins per line."""
    lines = [
        f"| dataset | noise | budget | method | baseline | {metric} difference (mean ± s.e.) | wins |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in differences:
        lines.append(
            f"| {d['dataset']} | {100 * d['flip_rate']:g}% | {d['budget']} | {d['method']} "
            f"| {d['baseline']} | {d['mean']:+.4f} ± {d['stderr']:.4f} | {d['wins']}/{d['seeds']} |"
        )
    return "\n".join(lines)


def format_table(summary: Sequence[Mapping[str, Any]], *, sort_by_budget: bool = True) -> str:
    """A markdown table of ``summarise`` output: one line per (method, budget).

    Columns: dataset, label noise, budget, rows, method, test AUC, log loss,
    log loss after Platt scaling, recovery, flipped share of the coreset (only when some run had flips),
    selection seconds. Values are mean ± std over the seeds.
    """
    entries = list(summary)
    if sort_by_budget:

        def key(entry: Mapping[str, Any]) -> tuple[Any, ...]:
            full = entry["method"] == FULL
            return (entry["dataset"], entry["flip_rate"], 0 if full else 1, entry["budget_rows"])

        entries = sorted(entries, key=key)
    noisy = any(e.get("coreset_flipped_share_mean") is not None for e in entries)
    header = ["dataset", "noise", "budget", "rows", "method", "test AUC", "log loss"]
    header += ["calibrated log loss", "recovery"]
    if noisy:
        header.append("flipped in coreset")
    header.append("select s")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in entries:
        cells = [
            str(e["dataset"]),
            f"{100 * e['flip_rate']:g}%",
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


# -- the runs ---------------------------------------------------------------------


def _evaluate_full(
    train: EncodedDataset,
    validation: EncodedDataset,
    test: EncodedDataset,
    options: EvaluationOptions,
    seed: int,
    device: str,
    flipped: np.ndarray | None,
) -> dict[str, Any]:
    evaluation = evaluate_coreset(
        train, validation, test, rows=None, options=options, seed=seed, device=device
    )
    click_rate = float(np.mean(train.labels, dtype=np.float64))
    share = float(flipped.mean()) if flipped is not None else None
    return {
        "method": FULL,
        "budget": "100%",
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


def _evaluate_selection(
    train: EncodedDataset,
    validation: EncodedDataset,
    test: EncodedDataset,
    config: SelectionConfig,
    options: EvaluationOptions,
    seed: int,
    device: str,
    flipped: np.ndarray | None,
) -> dict[str, Any]:
    from nacs_engine.pipeline import select_coreset

    started = time.perf_counter()
    result = select_coreset(train, config)
    selection_seconds = time.perf_counter() - started
    evaluation = evaluate_coreset(
        train,
        validation,
        test,
        rows=result.rows,
        soft_labels=result.soft_labels,
        weights=result.weights,
        options=options,
        seed=seed,
        device=device,
    )
    return {
        "method": config.method,
        "budget_rows": result.size,
        "test_auc": evaluation.test_auc,
        "test_log_loss": evaluation.test_log_loss,
        "test_log_loss_calibrated": evaluation.test_log_loss_calibrated,
        "validation_auc": evaluation.validation_auc,
        "selection_seconds": selection_seconds,
        "evaluation_seconds": evaluation.seconds,
        "best_epoch": evaluation.best_epoch,
        "coreset_click_rate": float(np.mean(result.labels, dtype=np.float64)),
        "data_click_rate": float(np.mean(train.labels, dtype=np.float64)),
        "coreset_flipped_share": float(flipped[result.rows].mean())
        if flipped is not None
        else None,
        "data_flipped_share": float(flipped.mean()) if flipped is not None else None,
        "soft_label_shift": float(np.abs(result.soft_labels - result.labels).mean()),
    }


def _budget_field(budget: float | int) -> dict[str, float | int]:
    return {"ratio": budget} if isinstance(budget, float) else {"size": budget}


def _labelled(row: dict[str, Any], dataset: str, seed: int, flip_rate: float) -> dict[str, Any]:
    return {"dataset": dataset, "seed": seed, "flip_rate": flip_rate} | row


# -- checks and formatting --------------------------------------------------------


def _check_arguments(
    train: Any,
    validation: Any,
    test: Any,
    methods: Sequence[str],
    budgets: Sequence[float | int],
    seeds: Sequence[int],
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
            f"methods: unknown {', '.join(map(repr, unknown))}; expected {', '.join(COMPARABLE_METHODS)}"
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
    _check_rate("flip_rate", flip_rate)
    return list(methods), checked_budgets, [int(s) for s in seeds]


def _check_rate(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a number in [0, 0.5), got {value!r}")
    if not 0.0 <= value < 0.5:
        raise ValueError(f"{name}: expected a number in [0, 0.5), got {value!r}")


def _spread(entry: Mapping[str, Any], metric: str, digits: int) -> str:
    mean = entry.get(f"{metric}_mean")
    if mean is None:
        return "-"
    std = entry.get(f"{metric}_std") or 0.0
    if entry.get("seeds", 1) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
