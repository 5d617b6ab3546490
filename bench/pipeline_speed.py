"""Pipeline speed and memory: ``nacs select`` against training on the full data, same run.

1. Writes N synthetic Criteo-like rows with 39 fields to a Parquet file
   (``write_synthetic``, chunk by chunk) unless it is already there.
2. Runs ``nacs select DATA --ratio R --out DIR`` as a child process (the CLI
   the users run: loading, selecting, denoising, auditing, writing) and reads the time of
   each phase from its manifest and the child's own peak RSS from ``wait4``.
3. Unless ``--no-full``, runs a second child that loads the same file the same
   way, holds out 1% for validation and 1% for test, and trains the same
   backbone (DeepFM, the selection's defaults) on the other 98% to early
   stopping on validation AUC; reports its load and training times and peak RSS.

    .venv/bin/python bench/pipeline_speed.py --rows 1000000 --ratio 0.01
    .venv/bin/python bench/pipeline_speed.py --rows 10000000 --ratio 0.01 --no-full
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _nacs_command() -> list[str]:
    script = Path(sys.executable).with_name("nacs")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from nacs_client.cli import main; main()"]


def run_child(command: list[str], log_path: Path) -> tuple[int, float, float, float]:
    """Run ``command``; returns (exit code, wall seconds, peak RSS in MiB, CPU seconds).

    The peak RSS and the CPU seconds (user + system) are the child's own, from
    ``wait4``; on a shared machine CPU seconds depend less on the other load
    than wall seconds do.
    """
    started = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux: the largest resident set of that process.
    return child.returncode, seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def write_data(path: Path, rows: int, seed: int) -> float:
    from nacs_engine.data.synthetic import write_synthetic

    started = time.perf_counter()
    write_synthetic(path, rows, format="parquet", n_fields=39, flip_rate=0.0, seed=seed)
    return time.perf_counter() - started


def full_training_child(path: str, max_epochs: int, patience: int, workdir: str) -> None:
    """Load ``path`` like ``nacs select`` does, train on 98% to early stopping; print JSON."""
    import numpy as np

    from nacs_engine.data import load_dataset
    from nacs_engine.evaluate import EvaluationOptions, evaluate_coreset, split_rows

    started = time.perf_counter()
    data = load_dataset(path, workdir=workdir)
    loading = time.perf_counter() - started
    train_rows, validation_rows, test_rows = split_rows(
        data.n_rows, validation_fraction=0.01, test_fraction=0.01, seed=0
    )
    validation, test = data.subset(validation_rows), data.subset(test_rows)
    epochs: list[tuple[int, float, float]] = []
    started = time.perf_counter()

    def on_epoch(epoch: int, score: float) -> None:
        epochs.append((epoch, score, time.perf_counter() - started))
        print(f"epoch {epoch}: validation AUC {score:.4f} at {epochs[-1][2]:.0f} s", flush=True)

    evaluation = evaluate_coreset(
        data,
        validation,
        test,
        rows=np.asarray(train_rows),
        options=EvaluationOptions(max_epochs=max_epochs, patience=patience),
        seed=0,
        device="cpu",
        progress=on_epoch,
    )
    training = time.perf_counter() - started
    print(
        "RESULT "
        + json.dumps(
            {
                "loading_s": loading,
                "training_s": training,
                "train_rows": int(train_rows.shape[0]),
                "best_epoch": evaluation.best_epoch,
                "epochs_run": evaluation.epochs_run,
                "test_auc": evaluation.test_auc,
                "seconds_per_epoch": training / max(evaluation.epochs_run, 1),
            }
        ),
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--workdir", default="/tmp/nacs-pipeline-bench")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-full", action="store_true", help="skip full-data training")
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="passed to nacs select"
    )
    parser.add_argument("--child-full", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    if args.child_full:
        full_training_child(
            args.child_full, args.max_epochs, args.patience, str(workdir / "encoded")
        )
        return

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "encoded").mkdir(exist_ok=True)
    data_path = workdir / f"synthetic-{args.rows}-39f-seed{args.seed}.parquet"
    if not data_path.exists():
        seconds = write_data(data_path, args.rows, args.seed)
        print(f"wrote {data_path} ({data_path.stat().st_size / 2**20:.0f} MiB) in {seconds:.0f} s")
    out = workdir / f"coreset-{args.rows}"
    shutil.rmtree(out, ignore_errors=True)
    env_tmp = str(workdir / "encoded")
    os.environ["TMPDIR"] = env_tmp

    command = [*_nacs_command(), "select", str(data_path), "--ratio", str(args.ratio)]
    command += ["--out", str(out), "--quiet"]
    for option in args.option:
        command += ["--option", option]
    code, select_s, select_rss, select_cpu = run_child(command, workdir / "select.log")
    if code != 0:
        print((workdir / "select.log").read_text()[-3000:])
        raise SystemExit(f"nacs select failed with exit code {code}")
    manifest = json.loads((out / "manifest.json").read_text())
    phases = manifest.get("phase_seconds", {})
    print(f"data: {args.rows:,} rows x 39 fields, ratio {args.ratio}, options {args.option}")
    print(
        f"nacs select: {select_s:.1f} s wall, {select_cpu:.1f} s CPU (process), "
        f"peak RSS {select_rss:,.0f} MiB"
    )
    print("| phase | seconds |")
    print("|---|---|")
    for phase, value in phases.items():
        print(f"| {phase} | {value:.1f} |")
    print(f"| whole process (incl. start-up) | {select_s:.1f} |")

    if args.no_full:
        return
    command = [sys.executable, str(Path(__file__).resolve()), "--workdir", str(workdir)]
    command += ["--max-epochs", str(args.max_epochs), "--patience", str(args.patience)]
    command += ["--child-full", str(data_path)]
    code, full_s, full_rss, full_cpu = run_child(command, workdir / "full.log")
    log = (workdir / "full.log").read_text()
    if code != 0:
        print(log[-3000:])
        raise SystemExit(f"full training failed with exit code {code}")
    result = json.loads(next(line for line in log.splitlines() if line.startswith("RESULT "))[7:])
    selection_s = sum(v for k, v in phases.items() if k in ("selecting", "denoising", "auditing"))
    audit_s = phases.get("auditing", 0.0)
    print(
        f"full training: {result['train_rows']:,} rows, {result['epochs_run']} epochs "
        f"(best {result['best_epoch']}), {result['training_s']:.1f} s training "
        f"({result['seconds_per_epoch']:.1f} s/epoch) + {result['loading_s']:.1f} s loading, "
        f"test AUC {result['test_auc']:.4f}, peak RSS {full_rss:,.0f} MiB; "
        f"process {full_s:.1f} s wall, {full_cpu:.1f} s CPU"
    )
    print(
        f"the audit adds {audit_s:.1f} s to {selection_s - audit_s:.1f} s of selection "
        f"({audit_s / max(selection_s - audit_s, 1e-9):.0%})"
    )
    print(
        f"selection (selecting + denoising + auditing) / full training = {selection_s:.1f} / "
        f"{result['training_s']:.1f} = {selection_s / result['training_s']:.2f}; "
        f"whole nacs select process / (full loading + training) = {select_s:.1f} / "
        f"{result['loading_s'] + result['training_s']:.1f} = "
        f"{select_s / (result['loading_s'] + result['training_s']):.2f}; "
        f"CPU seconds, nacs select process / full-training process = {select_cpu:.1f} / "
        f"{full_cpu:.1f} = {select_cpu / full_cpu:.2f}"
    )


if __name__ == "__main__":
    main()
