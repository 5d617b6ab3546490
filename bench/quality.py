"""Coreset quality on real data: test AUC and log loss of a fresh model trained on each coreset.

Datasets (read from the shared data folder, never copied into the repository):
- movielens: MovieLens-100K (label = rating >= 4), a random 80/10/10 split of
  the 100,000 ratings (``split_rows``, seed 0), vocabularies fitted on train;
- criteo: the Criteo sample's train/dev/test files (7,200 / 409 / 391 rows),
  I1-I13 bucketed by the Criteo rule;
- avazu: the Avazu sample's train/dev/test files (8,087 / 480 / 432 rows).

For each dataset, noise level, budget, method and seed, ``compare_methods``
selects a coreset of the training rows, trains a fresh DeepFM on it (soft
labels and weights, early-stopped on the validation AUC) and scores it on the
test rows. With ``--noise 0.2`` that share of the TRAINING labels is flipped
before selection; validation and test labels stay clean. With ``--resplit``
each seed draws its own 70/10/20 split of all the dataset's rows (the
samples' three files pooled), so that the spread over seeds includes the
choice of test rows, which a fixed 400-row test file leaves out. Below each
table, every NaCS method's test AUC less random's and stratified's, seed by
seed (the same split, flips and budget): mean ± standard error, and the
seeds it won.

    .venv/bin/python bench/quality.py --datasets criteo avazu movielens --noise 0 0.2 \
        --seeds 0 1 2 --json /tmp/quality.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import pyarrow as pa

from nacs_engine.compare import (
    compare_methods,
    format_differences,
    format_table,
    paired_differences,
    summarise,
)
from nacs_engine.data import encode_splits, public
from nacs_engine.evaluate import EvaluationOptions, split_rows

METHODS = ("nacs", "nacs-no-denoise", "nacs-no-relabel", "random", "stratified", "balanced", "full")
DEFAULT_BUDGETS = {
    "movielens": [0.01, 0.05, 0.1],
    "criteo": [0.05, 0.1, 0.25],
    "avazu": [0.05, 0.1, 0.25],
}
# Values seen fewer times than this in the training split map to the OOV id.
MIN_COUNT = {"movielens": 1, "criteo": 2, "avazu": 2}


# --resplit: each seed draws its own split of all the rows, with this share as test rows.
RESPLIT_VALIDATION = 0.1
RESPLIT_TEST = 0.2
ENCODING = {
    "movielens": {},
    "criteo": {"numeric_columns": list(public.CRITEO_NUMERIC)},
    "avazu": {"label_column": public.AVAZU_LABEL},
}


def load(name: str, split_seed: int | None = None):
    """(train, validation, test) EncodedDatasets of one dataset, vocabularies from train.

    split_seed None: MovieLens split 80/10/10 with seed 0, the samples' own
    train/dev/test files. Otherwise every row of the dataset (the samples'
    three files pooled) split 70/10/20 with that seed.
    """
    if name not in ENCODING:
        raise ValueError(f"datasets: unknown {name!r}; expected movielens, criteo or avazu")
    if name == "movielens":
        table = public.movielens_100k()
    else:
        splits = public.criteo_sample() if name == "criteo" else public.avazu_sample()
        if split_seed is None:
            return encode_splits(*splits, min_count=MIN_COUNT[name], **ENCODING[name])
        table = pa.concat_tables(splits)
    if split_seed is None:
        parts = split_rows(table.num_rows, seed=0)
    else:
        parts = split_rows(
            table.num_rows,
            validation_fraction=RESPLIT_VALIDATION,
            test_fraction=RESPLIT_TEST,
            seed=split_seed,
        )
    return encode_splits(
        *(table.take(part) for part in parts), min_count=MIN_COUNT[name], **ENCODING[name]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["criteo", "avazu", "movielens"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument(
        "--budgets", type=float, nargs="+", help="ratios for every dataset (default: per dataset)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.2])
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
        help="a SelectionConfig option for every nacs run, e.g. --option rounds=5",
    )
    parser.add_argument(
        "--resplit",
        action="store_true",
        help="each seed splits all the rows anew (70/10/20), so that seeds also vary the test rows",
    )
    parser.add_argument("--json", help="append every run's row to this JSON-lines file")
    parser.add_argument(
        "--tables-from", metavar="JSONL", help="only print the tables of the rows in this file"
    )
    args = parser.parse_args(argv)
    if args.tables_from:
        with open(args.tables_from) as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        print(format_table(summarise(rows)))
        print()
        print(format_differences(paired_differences(rows)))
        return
    options = {}
    for item in args.option:
        name, _, value = item.partition("=")
        options[name] = json.loads(value)
    evaluation = EvaluationOptions(max_epochs=args.max_epochs, patience=args.patience, monitor=args.monitor)
    started = time.perf_counter()

    def progress(done: int, total: int, message: str) -> None:
        elapsed = time.perf_counter() - started
        print(f"[{elapsed:7.0f} s] {done}/{total} {message}", file=sys.stderr, flush=True)

    def loaded(name: str, split_seed: int | None):
        splits = load(name, split_seed)
        train, validation, test = splits
        print(
            f"{name}: train {train.n_rows:,} rows (click rate {train.labels.mean():.4f}), "
            f"validation {validation.n_rows:,}, test {test.n_rows:,}, fields {train.n_fields}"
            + ("" if split_seed is None else f", split seed {split_seed}"),
            file=sys.stderr,
            flush=True,
        )
        return splits

    for name in args.datasets:
        fixed = None if args.resplit else loaded(name, None)
        for flip_rate in args.noise:
            rows = []
            for seed in args.seeds:
                train, validation, test = fixed or loaded(name, seed)
                # One seed at a time, so that an interrupted run keeps what it finished.
                seed_rows = compare_methods(
                    train,
                    validation,
                    test,
                    methods=args.methods,
                    budgets=args.budgets or DEFAULT_BUDGETS[name],
                    seeds=[seed],
                    selection_options=options,
                    evaluation_options=evaluation,
                    flip_rate=flip_rate,
                    device="cpu",
                    dataset_name=name,
                    progress=progress,
                )
                rows.extend(seed_rows)
                if args.json:
                    with open(args.json, "a") as handle:
                        for row in seed_rows:
                            handle.write(json.dumps(row) + "\n")
            print(format_table(summarise(rows)), flush=True)
            print(flush=True)
            differences = paired_differences(rows)
            if differences:
                print(format_differences(differences), flush=True)
                print(flush=True)
    print(
        f"total {time.perf_counter() - started:.0f} s; options {options}; evaluation {evaluation}"
        + ("; each seed its own 70/10/20 split" if args.resplit else "")
    )


if __name__ == "__main__":
    main()
