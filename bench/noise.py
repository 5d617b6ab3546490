"""Noise awareness: how many flipped labels reach the coreset, and how close soft labels get.

Synthetic Criteo-like data (``make_synthetic_ctr``) with a known share of
flipped labels; each method selects a coreset at the same ratio and we report,
over the coreset rows:
- the share of rows whose given label was flipped, against that share in the data;
- mean |soft label - clean label| against mean |given label - clean label|
  (for methods without relabelling the two are equal), the same as mean
  squared errors, and the mean distance of each to the teacher's click
  probability (the label's expectation before noise).

    .venv/bin/python bench/noise.py --rows 200000 --ratio 0.05 --flip-rate 0.2 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from nacs_engine.config import SelectionConfig
from nacs_engine.data.synthetic import make_synthetic_ctr
from nacs_engine.pipeline import select_coreset

DEFAULT_METHODS = ("nacs", "nacs-paper", "denoised-random", "random", "stratified")


def noise_rows(
    n_rows: int,
    ratio: float,
    flip_rate: float,
    seeds: list[int],
    methods: list[str],
    options: dict,
    data_seed: int = 0,
) -> list[dict]:
    """One dict per (seed, method) with the coreset's flipped share and soft-label errors."""
    synthetic = make_synthetic_ctr(n_rows, flip_rate=flip_rate, seed=data_seed)
    data, clean, flipped = synthetic.dataset, synthetic.clean_labels, synthetic.flipped
    teacher = synthetic.click_probability
    print(
        f"data: {n_rows:,} rows, click rate {data.labels.mean():.4f}, flipped {flipped.mean():.4f}",
        file=sys.stderr,
        flush=True,
    )
    results = []
    for seed in seeds:
        for method in methods:
            config = SelectionConfig.from_dict(
                {"ratio": ratio, "method": method, "seed": seed, "device": "cpu", **options}
            )
            started = time.perf_counter()
            result = select_coreset(data, config)
            seconds = time.perf_counter() - started
            rows = result.rows
            given_error = np.abs(result.labels - clean[rows])
            soft_error = np.abs(result.soft_labels - clean[rows])
            row = {
                "method": method,
                "seed": seed,
                "rows": int(rows.shape[0]),
                "data_flipped": float(flipped.mean()),
                "coreset_flipped": float(flipped[rows].mean()),
                "given_error": float(given_error.mean()),
                "soft_error": float(soft_error.mean()),
                "soft_error_flipped": float(soft_error[flipped[rows]].mean()),
                "soft_error_clean": float(soft_error[~flipped[rows]].mean()),
                "given_squared": float(np.square(given_error).mean()),
                "soft_squared": float(np.square(soft_error).mean()),
                "given_to_teacher": float(np.abs(result.labels - teacher[rows]).mean()),
                "soft_to_teacher": float(np.abs(result.soft_labels - teacher[rows]).mean()),
                "coreset_click_rate": float(result.labels.mean()),
                "seconds": seconds,
            }
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return results


def table(results: list[dict]) -> str:
    """Markdown: mean ± std over seeds per method."""
    methods = list(dict.fromkeys(r["method"] for r in results))
    lines = [
        "| method | flipped in data | flipped in coreset | mean abs(given - clean) | "
        "mean abs(soft - clean) | on flipped rows | on clean rows | squared: given | "
        "squared: soft | "
        "abs(given - teacher p) | abs(soft - teacher p) | select s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        members = [r for r in results if r["method"] == method]

        def cell(key: str, digits: int = 4, members: list[dict] = members) -> str:
            values = np.array([m[key] for m in members], dtype=np.float64)
            if values.size < 2:
                return f"{values.mean():.{digits}f}"
            return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"

        lines.append(
            f"| {method} | {cell('data_flipped')} | {cell('coreset_flipped')} | "
            f"{cell('given_error')} | {cell('soft_error')} | {cell('soft_error_flipped')} | "
            f"{cell('soft_error_clean')} | {cell('given_squared')} | {cell('soft_squared')} | "
            f"{cell('given_to_teacher')} | {cell('soft_to_teacher')} | {cell('seconds', 1)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--ratio", type=float, default=0.05)
    parser.add_argument("--flip-rate", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a SelectionConfig option, e.g. --option class_balance='\"none\"' --option rounds=5",
    )
    parser.add_argument("--json", help="also write the per-run rows to this file")
    args = parser.parse_args(argv)
    options = {}
    for item in args.option:
        name, _, value = item.partition("=")
        options[name] = json.loads(value)
    results = noise_rows(args.rows, args.ratio, args.flip_rate, args.seeds, args.methods, options)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    print(
        f"{args.rows:,} synthetic rows, {100 * args.flip_rate:g}% flipped labels, "
        f"ratio {args.ratio}, seeds {args.seeds}, options {options}"
    )
    print(table(results))


if __name__ == "__main__":
    main()
