"""Rare clicks: the flip rate read from a handful of anchor clicks, and what it costs.

For each seed, one split of a dataset of ``bench/quality.py`` (its 70/10/20 split of that
seed) with that seed's label noise on the training rows, and one NaCS selection per rule
from the same teacher: the flip rate read whatever the anchors could hold
(``MIN_ANCHOR_FLIPS`` 0, the rule before), and the current rule, where anchors that could
hold fewer than ``MIN_ANCHOR_FLIPS`` wrong labels leave it unread. ``--holdout`` keeps the
audit's held-back rows out of the candidates as a job does (the selection's candidates
change with it); the audit itself does not run. Prints, per seed, the anchor rows and their
clicks, the clicks set aside and left in the coreset under each rule, and where the two
coresets differ, the test AUC and log loss of a DeepFM and a logistic regression trained on
each (evaluation seed = the seed), then the mean paired difference, current less before.

    .venv/bin/python bench/rare_clicks.py --dataset ipinyou --noise clean --ratio 0.05
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import load, parse_noise  # noqa: E402
from nacs_engine.compare import add_label_noise, evaluate_result  # noqa: E402
from nacs_engine.config import SelectionConfig  # noqa: E402
from nacs_engine.data.dataset import EncodedDataset  # noqa: E402
from nacs_engine.denoise import noise_estimate  # noqa: E402
from nacs_engine.evaluate import EvaluationOptions  # noqa: E402
from nacs_engine.pipeline import CoresetResult, select_coreset  # noqa: E402
from nacs_engine.teacher import TeacherCache  # noqa: E402

FAMILIES = ("deepfm", "logistic")


def select(
    train: EncodedDataset, config: SelectionConfig, cache: TeacherCache, min_flips: int
) -> CoresetResult:
    current = noise_estimate.MIN_ANCHOR_FLIPS
    noise_estimate.MIN_ANCHOR_FLIPS = min_flips
    try:
        return select_coreset(train, config, teacher_cache=cache, defer_audit=True)
    finally:
        noise_estimate.MIN_ANCHOR_FLIPS = current


def scores(
    train: EncodedDataset,
    validation: EncodedDataset,
    test: EncodedDataset,
    result: CoresetResult,
    seed: int,
) -> dict[str, tuple[float, float]]:
    out = {}
    for family in FAMILIES:
        evaluation = evaluate_result(
            train, validation, test, result, EvaluationOptions(backbone=family), seed
        )
        out[family] = (evaluation.test_auc, evaluation.test_log_loss)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ipinyou")
    parser.add_argument("--noise", default="clean", help="clean, or KIND:RATE")
    parser.add_argument("--ratio", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--holdout", action="store_true", help="hold back the audit's rows")
    args = parser.parse_args()
    kind, rate = parse_noise(args.noise)
    torch.set_num_threads(1)
    print(
        f"{args.dataset}, {args.noise}, {args.ratio:.0%}, audit's rows "
        f"{'held back' if args.holdout else 'not held back'}"
    )
    print(
        "| seed | anchors | anchor clicks | measurable | clicks set aside (before / now) "
        "| coreset clicks (before / now) | "
        + " | ".join(f"{f} AUC (before / now) | {f} log loss (before / now)" for f in FAMILIES)
        + " |"
    )
    print("|---" * (6 + 2 * len(FAMILIES)) + "|")
    differences: dict[str, list[tuple[float, float]]] = {f: [] for f in FAMILIES}
    for seed in args.seeds:
        train, validation, test = load(args.dataset, seed)
        if kind != "clean":
            train = replace(train, labels=add_label_noise(train.labels, kind, rate, seed)[0])
        config = SelectionConfig(ratio=args.ratio, seed=seed, audit=args.holdout)
        cache = TeacherCache()
        before = select(train, config, cache, 0)
        now = select(train, config, cache, noise_estimate.MIN_ANCHOR_FLIPS)
        noise = now.diagnostics["noise"]
        anchor_clicks = round(noise["lower_floor"] * noise["anchor_rows"])
        cells = [
            str(seed),
            str(noise["anchor_rows"]),
            str(anchor_clicks),
            "yes" if noise["measurable"] else "no",
            f"{before.diagnostics['noise']['set_aside_positive']} / {noise['set_aside_positive']}",
            f"{before.diagnostics['coreset_clicks']} / {now.diagnostics['coreset_clicks']}",
        ]
        if np.array_equal(before.rows, now.rows) and np.array_equal(
            before.soft_labels, now.soft_labels
        ):
            cells += ["same coreset", "-"] * len(FAMILIES)
        else:
            old, new = (scores(train, validation, test, r, seed) for r in (before, now))
            for family in FAMILIES:
                cells.append(f"{old[family][0]:.4f} / {new[family][0]:.4f}")
                cells.append(f"{old[family][1]:.4f} / {new[family][1]:.4f}")
                differences[family].append(
                    (new[family][0] - old[family][0], new[family][1] - old[family][1])
                )
        print("| " + " | ".join(cells) + " |", flush=True)
    for family, pairs in differences.items():
        if not pairs:
            print(f"{family}: every coreset the same under both rules")
            continue
        values = np.array(pairs)
        errors = (
            values.std(axis=0, ddof=1) / math.sqrt(len(values)) if len(values) > 1 else np.zeros(2)
        )
        print(
            f"{family}, now less before over the {len(values)} seeds whose coresets differ: "
            f"AUC {values[:, 0].mean():+.4f} ± {errors[0]:.4f}, "
            f"log loss {values[:, 1].mean():+.4f} ± {errors[1]:.4f}"
        )


if __name__ == "__main__":
    main()
