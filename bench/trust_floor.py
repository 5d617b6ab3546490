"""The teacher's trust floor: which selections trust the teacher, against another floor.

For each dataset of ``bench/quality.py``, each seed (its 70/10/20 split) and each label noise,
one NaCS selection at ``--ratio`` with the job's defaults (the audit's rows held back, the
audit itself not run) prints the teacher's out-of-fold AUC on the candidates' given labels,
the floor it had to reach (``trusted_auc``: ``min_teacher_auc``, or 0.5 plus two standard
errors of a chance AUC where that is higher), whether it was trusted, whether it would have
been with ``--other-min-teacher-auc`` in place of the default, and where the two differ.

    .venv/bin/python bench/trust_floor.py --datasets ipinyou criteo avazu movielens bookcrossing \
        --seeds 0 1 2 3 4 --other-min-teacher-auc 0.53
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import DATASETS, load, parse_noise  # noqa: E402
from nacs_engine.compare import add_label_noise  # noqa: E402
from nacs_engine.config import SelectionConfig  # noqa: E402
from nacs_engine.pipeline import select_coreset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["ipinyou"], choices=sorted(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--noise", nargs="+", type=parse_noise,
        default=[parse_noise(n) for n in ("clean", "symmetric:0.2", "clicks-to-non-clicks:0.2")],
    )
    parser.add_argument("--ratio", type=float, default=0.05)
    parser.add_argument("--other-min-teacher-auc", type=float, default=0.53)
    args = parser.parse_args()
    if SelectionConfig(ratio=args.ratio).min_teacher_auc > 0.5:
        sys.exit("the default min_teacher_auc is above 0.5: its floor is not chance's alone")
    other = args.other_min_teacher_auc
    print(
        f"| dataset | seed | labels | teacher AUC | floor | trusted | trusted at {other:g} "
        "| differs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    changed = total = 0
    for name in args.datasets:
        for seed in args.seeds:
            train, _, _ = load(name, seed)
            for kind, rate in args.noise:
                data = train
                if rate > 0:
                    labels, _ = add_label_noise(np.asarray(train.labels), kind, rate, seed)
                    data = replace(train, labels=labels)
                config = SelectionConfig(ratio=args.ratio, seed=seed, audit=True)
                teacher = select_coreset(data, config, defer_audit=True).diagnostics["teacher"]
                signal, floor = teacher["signal_auc"], teacher["min_signal_auc"]
                # With the default min_teacher_auc (at most 0.5) the floor is what chance
                # reaches on the candidates (``trusted_auc``); another minimum raises it
                before = signal is None or signal >= (max(other, floor) if other > 0 else 0.0)
                differs = before != teacher["trusted"]
                changed += differs
                total += 1
                label = "clean" if rate == 0 else f"{kind} {rate:g}"
                print(
                    f"| {name} | {seed} | {label} | {signal:.4f} | {floor:.4f} | "
                    f"{teacher['trusted']} | {before} | {'**yes**' if differs else 'no'} |",
                    flush=True,
                )
    print(
        f"\n{changed} of {total} selections decided otherwise with min_teacher_auc {other:g}"
    )


if __name__ == "__main__":
    main()
