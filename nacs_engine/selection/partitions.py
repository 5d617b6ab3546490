"""Partitioned selection: many facility-location problems, solved block by block.

The n rows are shuffled and dealt into P = ceil(n / partition_size) disjoint
partitions whose sizes differ by at most one row. Each partition gets a budget
proportional to its size (largest-remainder rounding, summing exactly to the
budget). Partitions of equal size and budget are solved together by the
batched stochastic greedy, in blocks whose B x N x N distance block fits in a
memory budget. Each partition draws its own sampling seed up front, so the
rows chosen do not depend on the block size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nacs_engine.selection.facility_location import (
    block_workspace,
    craig_counts,
    distance_block,
    distance_objective,
)
from nacs_engine.selection.greedy import (
    draw_seeds,
    resolve_generator,
    sample_size,
    solve_block,
    validate_eps,
    validate_features,
)

ProgressCallback = Callable[[float, str], None]

# On a CPU the distance blocks are capped at this many bytes by default: small
# blocks are still in cache when the greedy reads them back.
CPU_MEMORY_BYTES = 64 * 1024 * 1024
# On a GPU they may use this share of the free memory by default.
CUDA_FREE_SHARE = 0.5


@dataclass(frozen=True)
class PartitionSelection:
    """The rows chosen by ``select_partitions``.

    indices: (budget,) int64 positions into the rows given, ascending.
    weights: (budget,) float32 CRAIG weights aligned with ``indices``: the
        number of rows of its partition whose most similar selected row it is,
        scaled so that the weights have mean 1.
    objective: total facility-location value over all partitions (float64 sum).
    partitions: number of partitions P.
    partition_size: rows of the largest partition.
    block_partitions: most partitions solved in one block.
    blocks: number of blocks solved.
    seconds: wall time of the selection.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    objective: float
    partitions: int
    partition_size: int
    block_partitions: int
    blocks: int
    seconds: float


def default_memory_bytes(device: torch.device) -> int:
    """Bytes the distance blocks may take on ``device``: a share of free CUDA memory, or a fixed
    CPU cap."""
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return max(1, int(free_bytes * CUDA_FREE_SHARE))
    return CPU_MEMORY_BYTES


def partition_budgets(sizes: list[int], budget: int) -> list[int]:
    """Budgets proportional to ``sizes`` that sum to ``budget`` (largest remainder; ties to the
    first).

    Integer arithmetic throughout; no budget exceeds its partition's size.
    """
    total = sum(sizes)
    if total == 0:
        return [0 for _ in sizes]
    shares = [budget * size for size in sizes]
    budgets = [share // total for share in shares]
    remaining = budget - sum(budgets)
    order = sorted(range(len(sizes)), key=lambda index: (-(shares[index] % total), index))
    for index in order[:remaining]:
        budgets[index] += 1
    return budgets


def block_partitions_for(n_rows: int, element_bytes: int, memory_bytes: int) -> int:
    """How many problems of ``n_rows`` rows fit in ``memory_bytes`` (at least one)."""
    per_problem = n_rows * n_rows * element_bytes + 8 * n_rows * (element_bytes + 8)
    return max(1, memory_bytes // per_problem)


def select_partitions(
    features: torch.Tensor,
    budget: int,
    *,
    partition_size: int,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    progress: ProgressCallback | None = None,
    memory_bytes: int | None = None,
) -> PartitionSelection:
    """Choose ``budget`` of the n rows of ``features`` (n, d) by partitioned facility location.

    partition_size: the most rows per partition (>= 1). eps: stochastic-greedy
    accuracy in (0, 1). generator: torch.Generator on the device of
    ``features`` (None: a fresh one); it shuffles the rows and seeds each
    partition's sampling. progress(fraction, message) is called after each
    block; exceptions from it propagate. memory_bytes: the most bytes one
    distance block may take (default ``default_memory_bytes``); a block holds
    at least one partition even when one alone is larger.
    Raises ValueError naming the argument on bad input.
    """
    started = time.perf_counter()
    validate_features(features, "features", dims=2)
    n_rows = features.shape[0]
    if not isinstance(budget, int) or isinstance(budget, bool):
        raise ValueError(f"budget: expected an int, got {type(budget).__name__}")
    if not 0 <= budget <= n_rows:
        raise ValueError(f"budget: expected 0 <= budget <= {n_rows} rows, got {budget}")
    if (
        not isinstance(partition_size, int)
        or isinstance(partition_size, bool)
        or partition_size < 1
    ):
        raise ValueError(f"partition_size: expected an int >= 1, got {partition_size!r}")
    validate_eps(eps)
    if progress is not None and not callable(progress):
        raise ValueError("progress: expected a callable progress(fraction, message)")
    if memory_bytes is not None and (
        not isinstance(memory_bytes, int) or isinstance(memory_bytes, bool) or memory_bytes < 1
    ):
        raise ValueError(f"memory_bytes: expected a positive int, got {memory_bytes!r}")
    device = features.device
    generator = resolve_generator(generator, device)
    if memory_bytes is None:
        memory_bytes = default_memory_bytes(device)
    if budget == 0:
        return PartitionSelection(
            indices=torch.empty(0, dtype=torch.int64, device=device),
            weights=torch.empty(0, dtype=torch.float32, device=device),
            objective=0.0,
            partitions=0,
            partition_size=0,
            block_partitions=0,
            blocks=0,
            seconds=time.perf_counter() - started,
        )

    n_partitions = -(-n_rows // partition_size)
    small, larger = divmod(n_rows, n_partitions)  # `larger` partitions have small + 1 rows
    sizes = [small + 1] * larger + [small] * (n_partitions - larger)
    budgets = partition_budgets(sizes, budget)
    order = torch.randperm(n_rows, generator=generator, device=device)
    seeds = draw_seeds(n_partitions, generator, device)
    # Row positions of each partition: the first `larger` partitions, then the rest.
    split = larger * (small + 1)
    layouts = [(0, larger, order[:split].view(larger, small + 1))]
    if small > 0:
        layouts.append(
            (larger, n_partitions - larger, order[split:].view(n_partitions - larger, small))
        )

    # Groups of partitions with the same (rows, picks), each solved in blocks.
    work: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # (rows (b, N), seeds (b,), picks)
    for first, count, positions in layouts:
        if count == 0:
            continue
        group_budgets = torch.tensor(budgets[first : first + count], device=device)
        for picks in sorted(set(budgets[first : first + count])):
            if picks == 0:
                continue
            members = torch.nonzero(group_budgets == picks).flatten()
            work.append((positions[members], seeds[first + members], picks))

    element_bytes = features.element_size()
    total_partitions = sum(rows.shape[0] for rows, _, _ in work)
    done_partitions = 0
    chosen_parts: list[torch.Tensor] = []
    count_parts: list[torch.Tensor] = []
    objective = 0.0
    blocks = 0
    most_in_block = 0
    for rows, group_seeds, picks in work:
        n_problem = rows.shape[1]
        per_block = min(rows.shape[0], block_partitions_for(n_problem, element_bytes, memory_bytes))
        samples = sample_size(n_problem, picks, eps)
        # One buffer of distances and one of features for every block of the
        # group: fresh memory for each block would be page faults each time.
        buffer = block_workspace(per_block, n_problem, features.dtype, device)
        feature_buffer = features.new_empty(per_block * n_problem, features.shape[1])
        for start in range(0, rows.shape[0], per_block):
            block_rows = rows[start : start + per_block]  # (b, N)
            block_features = feature_buffer[: block_rows.numel()]
            torch.index_select(features, 0, block_rows.reshape(-1), out=block_features)
            block = distance_block(
                block_features.view(*block_rows.shape, -1), out=buffer
            )  # (b, N, N)
            result = solve_block(block, picks, samples, group_seeds[start : start + per_block])
            objective += float(distance_objective(block, result.picks).sum())
            count_parts.append(craig_counts(block, result.picks).reshape(-1))
            chosen_parts.append(block_rows.gather(1, result.picks).reshape(-1))
            del block, result
            blocks += 1
            most_in_block = max(most_in_block, block_rows.shape[0])
            done_partitions += block_rows.shape[0]
            if progress is not None:
                progress(
                    done_partitions / total_partitions,
                    f"facility location: {done_partitions}/{total_partitions} partitions",
                )
        del buffer, feature_buffer

    chosen = torch.cat(chosen_parts)
    counts = torch.cat(count_parts).to(torch.float64)
    weights = (counts * (chosen.shape[0] / counts.sum())).to(torch.float32)
    ascending = chosen.argsort()
    return PartitionSelection(
        indices=chosen[ascending],
        weights=weights[ascending],
        objective=objective,
        partitions=n_partitions,
        partition_size=small + (1 if larger else 0),
        block_partitions=most_in_block,
        blocks=blocks,
        seconds=time.perf_counter() - started,
    )
