"""`nacs evaluate` on a quiet machine and beside busy processes.

Writes N generated rows (``write_synthetic``) unless the file is there, then runs
``nacs evaluate`` on them as a child process, ``--rounds`` times for each count of
``--busy`` processes (each a Python loop that keeps one core busy, started before and
stopped after the run), and prints per count the median wall seconds and the ratio to the
quiet run's. Every run must print the same rows (AUC and log loss per method, budget,
seed and evaluator), or the run fails: the busy processes take time, not results.

    .venv/bin/python bench/evaluate_speed.py --rows 50000 --busy 0 1 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nacs_engine.data.synthetic import write_synthetic


def spin() -> None:
    """Keep one core busy until terminated."""
    while True:
        pass


def evaluate_once(command: list[str], busy: int) -> tuple[float, list[tuple]]:
    """Wall seconds of ``command`` beside ``busy`` spinning processes, and its rows' scores
    (method, budget, seed, evaluator, AUC, log loss), sorted."""
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
    for process in spinners:
        process.start()
    try:
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
    finally:
        for process in spinners:
            process.terminate()
            process.join()
    if done.returncode != 0:
        sys.exit(f"nacs evaluate failed ({done.returncode}): {done.stderr[-2000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    fields = ("method", "budget", "seed", "evaluator", "test_auc", "test_log_loss")
    scores = sorted(tuple(row[name] for name in fields) for row in rows)
    return seconds, scores


def main() -> None:
    """Write the data unless it is there, time the runs, check their rows, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ratio", type=float, nargs="+", default=[0.25])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--methods", default="nacs,random,full")
    parser.add_argument("--evaluators", default="deepfm,logistic")
    parser.add_argument(
        "--folder", type=Path, default=Path(tempfile.gettempdir()) / "nacs-evaluate-bench"
    )
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    data = args.folder / f"clicks-{args.rows}.parquet"
    if not data.exists():
        write_synthetic(data, args.rows, n_fields=20, seed=0)
    nacs = Path(sys.executable).with_name("nacs")
    command = [str(nacs), "evaluate", str(data), "--seeds", str(args.seeds)]
    command += ["--methods", args.methods, "--evaluators", args.evaluators, "--json", "--quiet"]
    for ratio in args.ratio:
        command += ["--ratio", str(ratio)]
    print(f"{args.rows:,} rows, {os.cpu_count()} cores: {' '.join(command[1:])}")
    seconds: dict[int, list[float]] = {}
    reference = None
    for _ in range(args.rounds):
        for busy in args.busy:
            took, scores = evaluate_once(command, busy)
            if reference is None:
                reference = scores
            elif scores != reference:
                sys.exit(f"the rows differ beside {busy} busy process(es)")
            seconds.setdefault(busy, []).append(took)
            print(f"  busy {busy}: {took:.1f} s", flush=True)
    quiet = statistics.median(seconds[args.busy[0]])
    print("\n| busy processes | median s | range s | against the first |")
    print("|---|---|---|---|")
    for busy, times in seconds.items():
        median = statistics.median(times)
        print(
            f"| {busy} | {median:.1f} | {min(times):.1f}-{max(times):.1f} | "
            f"{median / quiet:.2f}x |"
        )


if __name__ == "__main__":
    main()
