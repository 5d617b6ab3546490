"""The batched stochastic greedy on one device: time against the similarity floor, objective.

The same workloads as ``greedy_speed.py`` (the paper's Table 1 settings and
1,000 problems of 1,000 rows at 1%), on the device given (a GPU when there is
one), with the same problems also solved on the CPU in the same run, so the
speed-up and the agreement of the two devices' objectives are read side by side.
Peers are CPU libraries and are compared in ``greedy_speed.py``.

    python bench/greedy_device.py --device cuda
    python bench/greedy_device.py --device cpu --quick     # a smoke test
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from greedy_speed import DIM, TABLE_1, gaussian_mixture  # the same problems as the CPU benchmark

from nacs_engine.selection import (
    batched_stochastic_greedy,
    facility_location_value,
    select_partitions,
    similarity_block,
)


def timed(function, device: torch.device, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls after one warm-up, synchronising the device."""
    result = function()
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        result = function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best, result


def table_1_row(k: int, eps: float, n: int, device: torch.device, repeats: int) -> str:
    points = gaussian_mixture(n, max(8, n // 200), seed=n + k)
    cpu, dev = torch.device("cpu"), device
    on_device = points.to(dev)[None]  # (1, N, d)
    on_cpu = points[None]
    floor_s, _ = timed(lambda: similarity_block(on_device), dev, repeats)
    ours_s, picks = timed(
        lambda: batched_stochastic_greedy(
            on_device, k, eps=eps, generator=torch.Generator(dev).manual_seed(0)
        ),
        dev,
        repeats,
    )
    cpu_s, cpu_picks = timed(
        lambda: batched_stochastic_greedy(
            on_cpu, k, eps=eps, generator=torch.Generator().manual_seed(0)
        ),
        cpu,
        1,
    )
    similarity = similarity_block(on_cpu)
    value = float(facility_location_value(similarity, picks.cpu()).sum())
    cpu_value = float(facility_location_value(similarity, cpu_picks).sum())
    same = bool(torch.equal(picks.cpu(), cpu_picks))
    return (
        f"| k={k}, eps={eps:g}, n={n:,} | {ours_s:.4f} | {floor_s:.4f} | {ours_s / floor_s:.1f}x "
        f"| {cpu_s:.3f} | {cpu_s / ours_s:.0f}x | {value:,.0f} | {cpu_value:,.0f} | {same} |"
    )


def partitioned_row(
    problems: int, rows: int, ratio: float, device: torch.device, repeats: int
) -> str:
    points = gaussian_mixture(problems * rows, 400, seed=1)
    budget = int(round(problems * rows * ratio))
    on_device = points.to(device)

    def ours() -> object:
        return select_partitions(
            on_device, budget, partition_size=rows, generator=torch.Generator(device).manual_seed(0)
        )

    def floor() -> object:
        order = torch.randperm(
            problems * rows, generator=torch.Generator(device).manual_seed(0), device=device
        )
        blocks = on_device[order].view(problems, rows, DIM)
        step = 100
        return [
            similarity_block(blocks[start : start + step]) for start in range(0, problems, step)
        ]

    floor_s, _ = timed(floor, device, repeats)
    ours_s, result = timed(ours, device, repeats)
    cpu_s, cpu_result = timed(
        lambda: select_partitions(
            points, budget, partition_size=rows, generator=torch.Generator().manual_seed(0)
        ),
        torch.device("cpu"),
        1,
    )
    return (
        f"| {problems:,} x {rows:,}, {ratio:.0%} | {ours_s:.4f} | {floor_s:.4f} "
        f"| {ours_s / floor_s:.1f}x "
        f"| {cpu_s:.3f} | {cpu_s / ours_s:.0f}x | {result.objective:,.0f} "
        f"| {cpu_result.objective:,.0f} "
        f"| {bool(torch.equal(result.indices.cpu(), cpu_result.indices))} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"# device {name}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads "
        "for the CPU column"
    )
    print(
        "| setting | ours on device (s) | floor (s) | ours/floor | ours on CPU (s) | CPU/device "
        "| objective, device | objective, CPU | same picks |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    settings = [(k, eps, min(n, 1_000)) for k, eps, n in TABLE_1[:3]] if args.quick else TABLE_1
    for k, eps, n in settings:
        print(table_1_row(k, eps, n, device, args.repeats), flush=True)
    problems, rows = (20, 500) if args.quick else (1_000, 1_000)
    print(
        partitioned_row(problems, rows, 0.01 if not args.quick else 0.02, device, args.repeats),
        flush=True,
    )


if __name__ == "__main__":
    main()
