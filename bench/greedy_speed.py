"""Speed and quality of the batched stochastic greedy against apricot and submodlib.

Workloads (100-d points from a Gaussian mixture, so that a good selection
stands out from a random one):
- the paper's Table 1 settings (k, eps, |D|): one facility-location problem each;
- the partitioned workload: 1,000,000 rows as 1,000 problems of 1,000 rows, 1%
  (k = 10) of each, solved by ``select_partitions``.

Every peer gets the same similarity matrix, sim = C - ||x_i - x_j||, built in
torch by ``similarity_block``; the "floor" is the time to build those blocks
alone, into one reused buffer. Our time includes building our own distance
blocks, in the workspace the greedy keeps between calls; "first call" is ours
with that workspace released first (fresh memory). Every objective is
computed by ``facility_location_value`` on the same similarity. Each peer is
warmed up once before timing; apricot still compiles its numba gain kernel
inside every ``fit`` (it builds it with cache=False), which is part of its cost.
Each peer runs in its own process: apricot's numba thread pool, once started,
slows every torch operation sharing its process by an order of magnitude.

    .venv/bin/python bench/greedy_speed.py                # full run (~5-10 min on 2 cores)
    .venv/bin/python bench/greedy_speed.py --quick        # small sizes, a smoke test
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import torch

from nacs_engine.selection import (
    batched_stochastic_greedy,
    facility_location_value,
    release_workspace,
    select_partitions,
    similarity_block,
)

TABLE_1 = [
    (50, 1e-3, 100),
    (50, 1e-3, 1_000),
    (50, 1e-3, 10_000),
    (100, 1e-3, 10_000),
    (100, 1e-4, 10_000),
    (200, 1e-4, 10_000),
]
DIM = 100


def gaussian_mixture(n_rows: int, clusters: int, seed: int) -> torch.Tensor:
    """(n_rows, DIM) float32: clusters of unequal sizes and spreads."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, DIM, generator=generator)
    spreads = 0.2 + 0.4 * torch.rand(clusters, generator=generator)
    popularity = 1.0 / torch.arange(1, clusters + 1, dtype=torch.float64) ** 0.7
    labels = torch.multinomial(popularity, n_rows, replacement=True, generator=generator)
    noise = torch.randn(n_rows, DIM, generator=generator)
    return centres[labels] + spreads[labels, None] * noise


# The clock timings are read from: wall time, or the CPU time of this process
# (all its threads), which a busy shared machine disturbs far less.
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def best_time(function, repeats: int) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeats):
        started = clock()
        result = function()
        best = min(best, clock() - started)
    return best, result


def apricot_picks(similarity: np.ndarray, k: int, eps: float, seed: int) -> np.ndarray:
    from apricot import FacilityLocationSelection

    selector = FacilityLocationSelection(
        k,
        metric="precomputed",
        optimizer="stochastic",
        optimizer_kwds={"epsilon": eps},
        random_state=seed,
    )
    selector.fit(similarity)
    return np.asarray(selector.ranking, dtype=np.int64)


def submodlib_picks(similarity: np.ndarray, k: int, eps: float, seed: int) -> np.ndarray:
    from submodlib import FacilityLocationFunction

    function = FacilityLocationFunction(
        n=similarity.shape[0], mode="dense", sijs=similarity, separate_rep=False
    )
    chosen = function.maximize(
        budget=k,
        optimizer="StochasticGreedy",
        epsilon=eps,
        stopIfZeroGain=False,
        stopIfNegativeGain=False,
        verbose=False,
        show_progress=False,
    )
    return np.asarray([index for index, _ in chosen], dtype=np.int64)


PEERS = {"apricot": (apricot_picks, np.float64), "submodlib": (submodlib_picks, np.float32)}


def peer_task(name: str, path: str, k: int, eps: float, seed: int, clock_name: str):
    """Run one peer on the similarity saved at ``path``; (seconds, picks).

    Runs in the peer's process."""
    warnings.filterwarnings("ignore")
    function, dtype = PEERS[name]
    similarity = np.load(path).astype(dtype)  # converted before the clock starts
    timer = CLOCK[clock_name]
    started = timer()
    picks = function(similarity, k, eps, seed)
    return timer() - started, picks


class Peer:
    """One peer in its own process, so that its threads (apricot's numba pool) never
    share a process with torch's, and each is warmed up once."""

    def __init__(self, name: str, workdir: str) -> None:
        self.name = name
        self.workdir = workdir
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))
        points = gaussian_mixture(200, 5, seed=99)
        self.run(similarity_block(points[None])[0].numpy(), 5, 1e-3, 0)

    def run(
        self, similarity: np.ndarray, k: int, eps: float, seed: int
    ) -> tuple[float, np.ndarray]:
        path = os.path.join(self.workdir, f"{self.name}.npy")
        np.save(path, similarity)
        clock_name = next(name for name, function in CLOCK.items() if function is clock)
        return self.pool.submit(peer_task, self.name, path, k, eps, seed, clock_name).result()

    def close(self) -> None:
        self.pool.shutdown()


def value(similarity: torch.Tensor, picks) -> float:
    return float(facility_location_value(similarity, torch.as_tensor(picks, dtype=torch.int64)))


def table_1(settings, repeats: int, seed: int, peers: dict[str, Peer]) -> list[dict]:
    rows = []
    for k, eps, n_rows in settings:
        points = gaussian_mixture(n_rows, clusters=50, seed=seed + n_rows)
        features = points[None]  # (1, N, d)
        # The floor writes into one reused buffer, as ours reuses its workspace.
        buffer = torch.zeros(1, n_rows, n_rows)
        floor_s, similarity = best_time(
            lambda features=features, buffer=buffer: similarity_block(features, out=buffer)[0],
            repeats,
        )

        def ours(features=features, k=k, eps=eps):
            return batched_stochastic_greedy(
                features, k, eps=eps, generator=torch.Generator().manual_seed(seed)
            )[0]

        release_workspace()
        cold_s, _ = best_time(ours, 1)  # the first call: the block is fresh memory
        ours_s, picks = best_time(ours, repeats)
        # The plain greedy (every row a candidate), by the same lazy evaluation: the quality
        # reference.
        greedy_s, greedy_picks = best_time(
            lambda features=features, k=k: batched_stochastic_greedy(
                features, k, eps=1e-300, generator=torch.Generator().manual_seed(seed)
            )[0],
            1,
        )
        dense = similarity.numpy()
        apricot_s, apricot_result = peers["apricot"].run(dense, k, eps, seed)
        submodlib_s, submodlib_result = peers["submodlib"].run(dense, k, eps, seed)
        random_rows = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))[:k]
        # Our spread over seeds, to read the peers' single runs against.
        seed_values = torch.tensor(
            [
                value(
                    similarity,
                    batched_stochastic_greedy(
                        features,
                        k,
                        eps=eps,
                        generator=torch.Generator().manual_seed(seed + 1 + extra),
                    )[0],
                )
                for extra in range(5)
            ]
        )
        rows.append(
            {
                "setting": f"k={k}, eps={eps:g}, |D|={n_rows:,}",
                "ours_s": ours_s,
                "cold_s": cold_s,
                "floor_s": floor_s,
                "apricot_s": apricot_s,
                "submodlib_s": submodlib_s,
                "greedy_s": greedy_s,
                "ours": value(similarity, picks),
                "apricot": value(similarity, apricot_result),
                "submodlib": value(similarity, submodlib_result),
                "greedy": value(similarity, greedy_picks),
                "random": value(similarity, random_rows),
                "ours_seeds": f"{float(seed_values.mean()):,.0f} ± {float(seed_values.std()):,.0f}",
            }
        )
        print_row(rows[-1])
    return rows


def partitioned(
    problems: int,
    rows_per_problem: int,
    share: float,
    peer_problems: int,
    seed: int,
    peers: dict[str, Peer],
) -> dict:
    n_rows = problems * rows_per_problem
    budget = round(share * n_rows)
    k = budget // problems
    eps = 1e-3
    points = gaussian_mixture(n_rows, clusters=200, seed=seed)

    release_workspace()  # a first call, as for the floor below: its buffer is fresh memory
    started = clock()
    result = select_partitions(
        points,
        budget,
        partition_size=rows_per_problem,
        eps=eps,
        generator=torch.Generator().manual_seed(seed),
    )
    ours_s = clock() - started
    # The same shuffle select_partitions makes: partition p holds order[p*N:(p+1)*N].
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed)).view(
        problems, rows_per_problem
    )
    block = result.block_partitions

    started = clock()
    buffer = torch.empty(
        block, rows_per_problem, rows_per_problem
    )  # reused, as select_partitions does
    for first in range(0, problems, block):
        similarity_block(points[order[first : first + block]], out=buffer)
    floor_s = clock() - started
    del buffer

    position_in_order = torch.empty(n_rows, dtype=torch.int64)
    position_in_order[order.reshape(-1)] = torch.arange(n_rows)
    ours_positions = position_in_order[result.indices]
    ours_problem = ours_positions // rows_per_problem
    ours_local = ours_positions % rows_per_problem
    assert bool((torch.bincount(ours_problem, minlength=problems) == k).all()), (
        "partition layout changed"
    )

    subset = range(peer_problems)
    totals = {"ours": 0.0, "apricot": 0.0, "submodlib": 0.0, "random": 0.0}
    apricot_s = submodlib_s = 0.0
    for problem in subset:
        similarity = similarity_block(points[order[problem]][None])[0]
        dense = similarity.numpy()
        totals["ours"] += value(similarity, ours_local[ours_problem == problem])
        seconds, picks = peers["apricot"].run(dense, k, eps, seed)
        apricot_s += seconds
        totals["apricot"] += value(similarity, picks)
        seconds, picks = peers["submodlib"].run(dense, k, eps, seed)
        submodlib_s += seconds
        totals["submodlib"] += value(similarity, picks)
        totals["random"] += value(
            similarity,
            torch.randperm(
                rows_per_problem, generator=torch.Generator().manual_seed(seed + problem)
            )[:k],
        )
    scale = problems / peer_problems
    row = {
        "setting": f"{problems:,} x {rows_per_problem:,} rows, k={k} each",
        "ours_s": ours_s,
        "cold_s": ours_s,
        "floor_s": floor_s,
        "apricot_s": apricot_s * scale,
        "submodlib_s": submodlib_s * scale,
        "greedy_s": float("nan"),
        "ours": totals["ours"],
        "apricot": totals["apricot"],
        "submodlib": totals["submodlib"],
        "greedy": float("nan"),
        "random": totals["random"],
        "ours_seeds": "-",
        "note": f"peers timed on {peer_problems} of {problems} problems and scaled by {scale:g}; "
        f"objectives summed over those {peer_problems} problems; ours in {result.blocks} blocks "
        f"of up to {block} problems",
    }
    print_row(row)
    return row


HEADER = (
    "| setting | ours (s) | ours, first call (s) | floor (s) | ours/floor | apricot (s) "
    "| submodlib (s) | apricot/ours "
    "| submodlib/ours | objective ours | ours, 5 more seeds | apricot | submodlib "
    "| plain greedy | random |"
)


def print_row(row: dict) -> None:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}x" if b > 0 and not math.isnan(a) else "-"

    def objective(name: str) -> str:
        v = row[name]
        return "-" if math.isnan(v) else f"{v:,.0f}"

    print(
        f"| {row['setting']} | {row['ours_s']:.3f} | {row['cold_s']:.3f} | {row['floor_s']:.3f} "
        f"| {ratio(row['ours_s'], row['floor_s'])} "
        f"| {row['apricot_s']:.2f} | {row['submodlib_s']:.2f} "
        f"| {ratio(row['apricot_s'], row['ours_s'])} "
        f"| {ratio(row['submodlib_s'], row['ours_s'])} | {objective('ours')} | {row['ours_seeds']} "
        f"| {objective('apricot')} "
        f"| {objective('submodlib')} | {objective('greedy')} | {objective('random')} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke test of the script"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timings of ours and the floor: best of this many"
    )
    parser.add_argument(
        "--peer-problems",
        type=int,
        default=20,
        help="partitioned workload: problems given to the peers",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clock", choices=sorted(CLOCK), default="wall", help="what the seconds measure"
    )
    parser.add_argument("--skip-partitioned", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    global clock
    clock = CLOCK[args.clock]
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, CUDA: {torch.cuda.is_available()}, {args.clock} seconds, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as workdir:
        peers = {name: Peer(name, workdir) for name in PEERS}
        try:
            print(HEADER)
            print("|" + "---|" * (HEADER.count("|") - 1))
            settings = [(k, eps, min(n, 2_000)) for k, eps, n in TABLE_1] if args.quick else TABLE_1
            table_1(settings, args.repeats, args.seed, peers)
            if not args.skip_partitioned:
                if args.quick:
                    row = partitioned(40, 500, 0.02, min(args.peer_problems, 4), args.seed, peers)
                else:
                    row = partitioned(1_000, 1_000, 0.01, args.peer_problems, args.seed, peers)
                print(f"\nPartitioned workload: {row['note']}.")
        finally:
            for peer in peers.values():
                peer.close()
    print(
        "\nobjective: facility-location value sum_i max_{j in S} sim(i, j) on the same similarity; "
        "plain greedy = every unselected row a candidate at every pick; "
        "random = k rows drawn uniformly."
    )


if __name__ == "__main__":
    main()
