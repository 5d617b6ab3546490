"""Report writing speed: what report.json and report.html add to a job.

1. Makes N synthetic Criteo-like rows (``make_synthetic_ctr``, 39 fields) in memory and a
   coreset of ratio R of them: stratified random rows (how the rows were picked does not
   change the report's cost), with soft labels, weights, uncertainty and diagnostics shaped
   like the engine's (noise with removal cuts, rounds, an audit of two families), so that
   every section and plot of the report is drawn.
2. Times, in a fresh child process per repeat (as a job's work horse is), what the worker
   does after the coreset is written: ``build_report`` (the numbers, among them the
   coverage count over every row of the data), ``render_html`` (the plots, matplotlib's
   import included), and writing both files into a local output folder.

    .venv/bin/python bench/report_speed.py --rows 1000000 --ratio 0.01
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(rows: int, ratio: float, seed: int) -> dict[str, float]:
    """Make the data, then time the report's steps; seconds of each."""
    import numpy as np

    from nacs_engine.baselines import random_rows
    from nacs_engine.data.synthetic import make_synthetic_ctr
    from worker.outputs import REPORT_HTML, REPORT_JSON
    from worker.settings import SharedSettings
    from worker.storage import open_output

    data = make_synthetic_ctr(rows, seed=seed).dataset
    labels = np.asarray(data.labels, dtype=np.float32)
    k = int(round(ratio * rows))
    picked, _ = random_rows(labels, k, "stratified", np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    given = labels[picked]
    soft = np.clip(0.8 * given + 0.2 * rng.random(k), 0.0, 1.0).astype(np.float32)
    weights = rng.lognormal(0.0, 0.4, k)
    weights = (weights / weights.mean()).astype(np.float32)
    uncertainty = (0.6 * rng.random(k)).astype(np.float32)
    family = {
        "coreset": {"auc": 0.74, "log_loss": 0.52}, "random": {"auc": 0.73, "log_loss": 0.53},
        "auc_difference": 0.01, "auc_difference_se": 0.003, "verdict": "better",
    }
    diagnostics = {
        "noise": {
            "flip_rate": 0.18, "wrong_share_positive": 0.3, "wrong_share_negative": 0.1,
            "clean_click_rate": 0.2, "set_aside_rows": 5000, "set_aside_positive": 2500,
            "set_aside_negative": 2500, "uncertainty_cuts": {"positive": 0.6, "negative": 0.58},
        },
        "rounds": [
            {"round": r + 1, "selected": k // 3, "objective": 100.0 - 10 * r, "seconds": 5.0}
            for r in range(3)
        ],
        "audit": {
            "families": {"logistic": family, "deepfm": family}, "verdict": "better",
            "scored_rows": 80_000, "seeds": 2, "delivered": "coreset",
        },
    }
    phase_seconds = {"loading": 20.0, "selecting": 60.0, "denoising": 1.0, "auditing": 30.0}

    with tempfile.TemporaryDirectory(prefix="nacs-report-bench-") as output:
        started = time.perf_counter()
        from worker.report import build_report, render_html, report_json

        content = build_report(
            job_id="bench", request={"dataset_uri": "synthetic", "ratio": ratio},
            method="nacs", engine_version="bench", created_at="now",
            field_names=data.field_names, field_dims=data.field_dims, features=data.features,
            data_labels=labels, rows=picked, labels=given, soft_labels=soft, weights=weights,
            uncertainty=uncertainty, diagnostics=diagnostics, phase_seconds=phase_seconds,
        )
        built = time.perf_counter()
        page = render_html(content)
        rendered = time.perf_counter()
        with open_output(output, SharedSettings()) as folder:
            folder.write(REPORT_JSON, report_json(content))
            folder.write(REPORT_HTML, page.encode())
        written = time.perf_counter()
    return {
        "build_s": built - started,
        "render_s": rendered - built,
        "write_s": written - rendered,
        "total_s": written - started,
        "html_kib": len(page.encode()) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.rows, args.ratio, args.seed)))
        return
    runs = []
    for repeat in range(args.repeats):
        command = [
            sys.executable, __file__, "--child", "--rows", str(args.rows),
            "--ratio", str(args.ratio), "--seed", str(args.seed),
        ]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"repeat {repeat + 1}: {runs[-1]['total_s']:.2f} s", file=sys.stderr)
    print(f"{args.rows:,} rows, ratio {args.ratio} ({round(args.rows * args.ratio):,} coreset "
          f"rows), {args.repeats} fresh processes; report.html {runs[0]['html_kib']:.0f} KiB")
    print()
    print("| step | median s | max s |")
    print("| --- | ---: | ---: |")
    for key, name in (
        ("build_s", "numbers (report.json's content, coverage over every row)"),
        ("render_s", "plots and page (matplotlib import included)"),
        ("write_s", "writing both files"),
        ("total_s", "**report writing, in all**"),
    ):
        values = [run[key] for run in runs]
        print(f"| {name} | {statistics.median(values):.2f} | {max(values):.2f} |")


if __name__ == "__main__":
    main()
