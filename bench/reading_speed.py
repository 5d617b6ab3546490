"""Reading speed: ``load_dataset`` on the same click log as CSV, JSON Lines and Parquet.

Writes N Avazu-like rows (a 0/1 label, two 64-bit ids, half of them past int64, and 21
fields of a few hundred values, text and integers) in each format unless the files are
there, then, for ``--rounds`` rounds, loads each file in turn (reading, counting and
encoding, as every job does; a fresh work folder each time, so nothing is cached) and
prints per format the median wall seconds, rows per second and the ratio to CSV's time.
All formats must give the same dataset fingerprint, or the run fails.

    .venv/bin/python bench/reading_speed.py --rows 200000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = ("csv", "jsonl", "parquet")


def write_files(folder: Path, rows: int, seed: int) -> dict[str, Path]:
    paths = {name: folder / f"clicks-{rows}.{name}" for name in FORMATS}
    if all(path.exists() for path in paths.values()):
        return paths
    rng = random.Random(seed)
    names = ["label", "device_id", "device_ip", *(f"c{i}" for i in range(21))]
    devices = [rng.randrange(2**64) for _ in range(5000)]  # about half past int64
    records = []
    for _ in range(rows):
        record: dict[str, int | str] = {
            "label": int(rng.random() < 0.17),
            "device_id": rng.choice(devices),
            "device_ip": rng.randrange(2**40, 2**64),  # nearly one per row
        }
        for i in range(21):
            record[f"c{i}"] = rng.randrange(50) if i % 2 else f"v{rng.randrange(300)}"
        records.append(record)
    with open(paths["csv"], "w") as csv_file, open(paths["jsonl"], "w") as json_file:
        csv_file.write(",".join(names) + "\n")
        for record in records:
            csv_file.write(",".join(str(record[name]) for name in names) + "\n")
            json_file.write(json.dumps(record) + "\n")
    columns = {name: [record[name] for record in records] for name in names}
    for name in ("device_id", "device_ip"):  # past int64: as text, as a CSV reader gives them
        columns[name] = [str(value) for value in columns[name]]
    pq.write_table(pa.table(columns), paths["parquet"])
    return paths


def load_seconds(path: Path) -> tuple[float, int, str]:
    from nacs_engine.data import load_dataset

    workdir = tempfile.mkdtemp(prefix="nacs-reading-")
    try:
        started = time.perf_counter()
        data = load_dataset(str(path), workdir=workdir)
        return time.perf_counter() - started, data.n_rows, data.fingerprint
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/nacs-reading-bench")
    args = parser.parse_args()
    folder = Path(args.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = write_files(folder, args.rows, args.seed)
    sizes = {name: path.stat().st_size / 2**20 for name, path in paths.items()}
    seconds: dict[str, list[float]] = {name: [] for name in FORMATS}
    fingerprints = set()
    for _ in range(args.rounds):
        for name in FORMATS:
            elapsed, rows, fingerprint = load_seconds(paths[name])
            if rows != args.rows:
                sys.exit(f"{name}: read {rows} rows of {args.rows}")
            seconds[name].append(elapsed)
            fingerprints.add(fingerprint)
    print(f"{args.rows:,} rows, 24 columns, {args.rounds} rounds (medians)")
    print("| format | file MiB | seconds | rows/s | x CSV's time |")
    print("|---|---|---|---|---|")
    csv_seconds = statistics.median(seconds["csv"])
    for name in FORMATS:
        median = statistics.median(seconds[name])
        print(
            f"| {name} | {sizes[name]:.0f} | {median:.2f} | {args.rows / median:,.0f} "
            f"| {median / csv_seconds:.2f} |"
        )
    if len(fingerprints) != 1:
        sys.exit(f"the formats gave {len(fingerprints)} different datasets")
    print("fingerprint (every format):", fingerprints.pop())


if __name__ == "__main__":
    main()
