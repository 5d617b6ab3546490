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
before selection; validation and test labels stay clean.

    .venv/bin/python bench/quality.py --datasets criteo avazu movielens --noise 0 0.2 \
        --seeds 0 1 2 --json /tmp/quality.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from nacs_engine.compare import compare_methods, format_table, summarise
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


def load(name: str):
    """(train, validation, test) EncodedDatasets of one dataset, vocabularies from train."""
    if name == "movielens":
        table = public.movielens_100k()
        train, validation, test = split_rows(table.num_rows, seed=0)
        return encode_splits(
            table.take(train), table.take(validation), table.take(test), min_count=MIN_COUNT[name]
        )
    if name == "criteo":
        train, dev, test = public.criteo_sample()
        return encode_splits(
            train, dev, test, numeric_columns=list(public.CRITEO_NUMERIC), min_count=MIN_COUNT[name]
        )
    if name == "avazu":
        train, dev, test = public.avazu_sample()
        return encode_splits(
            train, dev, test, label_column=public.AVAZU_LABEL, min_count=MIN_COUNT[name]
        )
    raise ValueError(f"datasets: unknown {name!r}; expected movielens, criteo or avazu")


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
    parser.add_argument("--json", help="append every run's row to this JSON-lines file")
    parser.add_argument(
        "--tables-from", metavar="JSONL", help="only print the tables of the rows in this file"
    )
    args = parser.parse_args(argv)
    if args.tables_from:
        with open(args.tables_from) as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        print(format_table(summarise(rows)))
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

    for name in args.datasets:
        train, validation, test = load(name)
        print(
            f"{name}: train {train.n_rows:,} rows (click rate {train.labels.mean():.4f}), "
            f"validation {validation.n_rows:,}, test {test.n_rows:,}, fields {train.n_fields}",
            file=sys.stderr,
            flush=True,
        )
        for flip_rate in args.noise:
            rows = []
            for seed in args.seeds:
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
    print(
        f"total {time.perf_counter() - started:.0f} s; options {options}; evaluation {evaluation}"
    )


if __name__ == "__main__":
    main()
