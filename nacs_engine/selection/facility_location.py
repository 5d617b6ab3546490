"""Facility location: what the greedy maximises.

In a problem (a partition) of N rows with features x, the similarity is
sim(i, j) = C - ||x_i - x_j||, with C the largest distance in that problem, so
sim >= 0, and the objective of a selection S is

    f(S) = sum over i of max over j in S of sim(i, j)      (f(empty) = 0)

Everything here is written in distances, which is the same function: with
dmin_i = min over j in S of ||x_i - x_j|| (dmin_i = C when S is empty),
f(S) = sum_i (C - dmin_i), and the marginal gain of a candidate c is

    gain(c | S) = sum_j relu(sim(c, j) - cur_j) = sum_j relu(dmin_j - d(c, j)).

Summing only the positive differences avoids the cancellation of
sum(max(sim, cur)) - sum(cur) in float32. Distances come from centred features
(|x|^2 + |y|^2 - 2 x.y on features with each problem's mean removed, clamped
at 0 before the square root), so a shared offset costs no precision.

This module also holds the CRAIG weights of a selection, the objective value,
and an exact (non-stochastic) greedy used as a reference.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

# Work on pieces of about this many bytes so that the element-wise passes over
# a freshly multiplied piece stay in the CPU's cache.
_PIECE_BYTES = 1 << 21
# But at least this many rows per product: each product first repacks the
# whole right-hand side (d x N), which thin pieces of a large problem would
# repeat hundreds of times.
_MIN_PIECE_ROWS = 256
# Relative slack added to the first gains so that they bound the exact gains from above.
BOUND_MARGIN = 1e-5
# On a CPU, the memory of a distance block up to this size is kept, per thread,
# for the next block: a fresh block costs a page fault every 4 KiB, about a
# third of the time it takes to compute it.
WORKSPACE_MAX_BYTES = 1 << 29
_workspace = threading.local()


@dataclass(frozen=True)
class DistanceBlock:
    """Pairwise distances of B problems and what the greedy needs to start.

    distances: (B, N, N) ||x_i - x_j||, exact zeros on the diagonal.
    largest: (B,) C, the largest distance of each problem.
    first_gains: (B, N) an upper bound of each row's gain when nothing is
        selected, sum_j (C - d(i, j)) plus a margin for rounding.
    """

    distances: torch.Tensor
    largest: torch.Tensor
    first_gains: torch.Tensor


def distance_block(features: torch.Tensor, *, out: torch.Tensor | None = None) -> DistanceBlock:
    """Pairwise distances of each problem in ``features`` (B, N, d).

    out: an optional (B', N, N) buffer with B' >= B, of the dtype and device of
    ``features``, whose first B problems receive the distances; reusing one
    buffer across blocks saves touching fresh memory for every block.

    The block has the dtype of ``features``. One matrix product gives
    |x_i|^2 + |x_j|^2 - 2 x_i.x_j on centred rows, through the augmented rows
    [-2 x_i, |x_i|^2, 1] and [x_j, 1, |x_j|^2]; on a CPU it is formed piece by
    piece, and each piece is clamped, square-rooted and summed while it is
    still in cache. Problems too large for one piece are cut into pieces of
    rows that multiply only the columns from their diagonal on and copy the
    rest from the pieces above (the block is symmetric, up to rounding).
    """
    batch, n_rows, _ = features.shape
    dtype = features.dtype
    device = features.device
    means = features.mean(dim=1, keepdim=True)  # (B, 1, d)
    if out is None:
        distances = torch.empty(batch, n_rows, n_rows, dtype=dtype, device=device)
    else:
        distances = out[:batch]
    row_sums = torch.empty(batch, n_rows, dtype=dtype, device=device)
    row_max = torch.empty(batch, n_rows, dtype=dtype, device=device)
    problem_bytes = n_rows * n_rows * distances.element_size()
    if device.type == "cuda" or problem_bytes <= _PIECE_BYTES:
        # Whole problems at a time (on a GPU: the whole block in one pass per operation).
        group = batch if device.type == "cuda" else max(1, _PIECE_BYTES // problem_bytes)
        for start in range(0, batch, group):
            piece = slice(start, min(batch, start + group))
            left, right = _augmented_rows(features[piece], means[piece])
            out = distances[piece]  # (b, N, N)
            torch.bmm(left, right, out=out)
            out.clamp_min_(0.0)
            out.diagonal(dim1=1, dim2=2).zero_()
            _finish_piece(out, row_sums[piece], row_max[piece])
    else:
        rows_per_piece = max(_MIN_PIECE_ROWS, _PIECE_BYTES // (n_rows * distances.element_size()))
        for problem in range(batch):
            left, right = _augmented_rows(features[problem], means[problem])
            block = distances[problem]  # (N, N)
            for start in range(0, n_rows, rows_per_piece):
                stop = min(n_rows, start + rows_per_piece)
                out = block[start:stop]  # (r, N)
                # The block is symmetric: only the columns from this piece's
                # diagonal on are multiplied; the others are copied, tile by
                # tile, from what the pieces above computed. About half the
                # products and square roots.
                upper = out[:, start:]  # (r, N - start)
                torch.mm(left[start:stop], right[:, start:], out=upper)
                upper.clamp_min_(0.0)
                upper[:, : stop - start].diagonal().zero_()
                upper.sqrt_()
                for above in range(0, start, rows_per_piece):
                    tile = slice(above, min(start, above + rows_per_piece))
                    out[:, tile].copy_(block[tile, start:stop].transpose(0, 1))
                torch.sum(out, dim=-1, out=row_sums[problem, start:stop])
                torch.amax(out, dim=-1, out=row_max[problem, start:stop])
    largest = row_max.amax(dim=1)  # (B,)
    # First gains sum_j (C - d_ij) = N C - row sum. The row sums carry float
    # rounding, so the margin keeps these valid upper bounds of the gains the
    # greedy computes exactly.
    total = n_rows * largest.to(torch.float64)[:, None]  # (B, 1)
    first_gains = (total - row_sums.to(torch.float64)).clamp_min_(0.0) + BOUND_MARGIN * total
    return DistanceBlock(distances, largest, first_gains.to(dtype))


def block_workspace(
    batch: int, n_rows: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A (batch, N, N) buffer for a distance block, for use within one call.

    On a CPU the memory is kept for the next block of this thread when it
    takes at most ``WORKSPACE_MAX_BYTES`` (``release_workspace`` hands it
    back); elsewhere it is fresh memory (a GPU's caching allocator already
    reuses it). Its contents are undefined, and the next call in the same
    thread may hand out the same memory: nothing that outlives the caller
    may keep a view of it.
    """
    shape = (batch, n_rows, n_rows)
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    needed = batch * n_rows * n_rows
    kept = getattr(_workspace, "buffer", None)
    if kept is not None and kept.dtype == dtype and kept.numel() >= needed:
        return kept[:needed].view(shape)
    buffer = torch.empty(needed, dtype=dtype)
    if needed * buffer.element_size() <= WORKSPACE_MAX_BYTES:
        _workspace.buffer = buffer
    return buffer.view(shape)


def release_workspace() -> None:
    """Free the distance-block memory this thread keeps between calls (see ``block_workspace``)."""
    _workspace.buffer = None


def _augmented_rows(
    features: torch.Tensor, means: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [-2 x_i, |x_i|^2, 1] (..., N, d + 2) and columns [x_j, 1, |x_j|^2] (..., d + 2, N).

    x are the rows of ``features`` (..., N, d) less ``means`` (..., 1, d).
    Formed for one piece at a time: small enough to come from memory the
    allocator reuses, where one pair for a whole block of many problems was
    fresh memory, and its page faults, every block.
    """
    dim = features.shape[-1]
    right_rows = features.new_empty(*features.shape[:-1], dim + 2)
    centred = right_rows[..., :dim]  # (..., N, d)
    torch.sub(features, means, out=centred)
    squared = torch.linalg.vecdot(centred, centred)  # (..., N)
    right_rows[..., dim] = 1.0
    right_rows[..., dim + 1] = squared
    left = torch.empty_like(right_rows)
    torch.mul(centred, -2.0, out=left[..., :dim])
    left[..., dim] = squared
    left[..., dim + 1] = 1.0
    return left, right_rows.transpose(-2, -1)


def _finish_piece(out: torch.Tensor, row_sums: torch.Tensor, row_max: torch.Tensor) -> None:
    """Squared distances -> distances in place; their row sums and maxima."""
    out.sqrt_()
    torch.sum(out, dim=-1, out=row_sums)
    torch.amax(out, dim=-1, out=row_max)


def similarity_block(features: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """sim(i, j) = C - ||x_i - x_j|| for each problem of ``features`` (B, N, d) -> (B, N, N).

    out: an optional buffer as for ``distance_block``.
    """
    block = distance_block(features, out=out)
    return torch.sub(block.largest[:, None, None], block.distances, out=block.distances)


class FacilityLocationState:
    """The state of a growing selection in B problems: dmin_j per row.

    ``gains`` evaluates candidates, ``add`` records one pick per problem. The
    greedy drives it; this class knows nothing about how candidates are chosen.
    Rows are named by their flat position problem * N + row.
    """

    def __init__(self, block: DistanceBlock, *, max_evaluated_rows: int) -> None:
        distances = block.distances
        self.batch, self.n_rows, _ = distances.shape
        self._flat = distances.view(self.batch * self.n_rows, self.n_rows)  # (B*N, N)
        self.offsets = torch.arange(self.batch, device=distances.device) * self.n_rows  # (B,)
        # dmin_j = C before anything is selected (cur_j = 0).
        self.nearest = block.largest[:, None].expand(self.batch, self.n_rows).contiguous()  # (B, N)
        self.max_evaluated_rows = max(1, max_evaluated_rows)
        self._rows = torch.empty(
            self.max_evaluated_rows, self.n_rows, dtype=distances.dtype, device=distances.device
        )
        self._gains = torch.empty(
            self.max_evaluated_rows, dtype=distances.dtype, device=distances.device
        )

    def gains(self, problems: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        """Marginal gains of ``rows`` (b, m), flat positions, in ``problems`` (b,) -> (b, m).

        problems: which problems the b lines of ``rows`` belong to (None: all
        B, in order). b * m must not exceed ``max_evaluated_rows``. The result
        is a view of an internal buffer, valid until the next call.
        """
        b, m = rows.shape
        count = b * m
        gathered = self._rows[:count]  # (b*m, N)
        torch.index_select(self._flat, 0, rows.reshape(count), out=gathered)
        gathered = gathered.view(b, m, self.n_rows)  # (b, m, N)
        nearest = self.nearest if problems is None else self.nearest.index_select(0, problems)
        torch.sub(nearest[:, None, :], gathered, out=gathered)
        gathered.clamp_min_(0.0)
        gains = self._gains[:count].view(b, m)
        torch.sum(gathered, dim=2, out=gains)
        return gains

    def all_gains(self, out: torch.Tensor) -> torch.Tensor:
        """Marginal gains of every row of every problem into ``out`` (B, N), selected rows included.

        One streaming pass over the block, a slice of rows of every problem
        at a time: no gather, and each slice stays in cache for its three
        passes. The sums are those ``gains`` computes, row by row.
        """
        rows_per_slice = max(1, self.max_evaluated_rows // self.batch)
        distances = self._flat.view(self.batch, self.n_rows, self.n_rows)
        for start in range(0, self.n_rows, rows_per_slice):
            stop = min(self.n_rows, start + rows_per_slice)
            work = self._rows[: self.batch * (stop - start)].view(
                self.batch, stop - start, self.n_rows
            )
            torch.sub(self.nearest[:, None, :], distances[:, start:stop], out=work)
            work.clamp_min_(0.0)
            torch.sum(work, dim=2, out=out[:, start:stop])
        return out

    def add(self, picks: torch.Tensor, bounds: torch.Tensor | None = None) -> None:
        """Select ``picks`` (B,), one flat position per problem.

        bounds: optional (B, N) upper bounds of every row's gain, tightened in
        place. Adding p takes away at least the term j = p of every row's gain,
        relu(dmin_p - d(c, p)), since p then covers itself; row p holds d(c, p)
        for every c, so the whole update costs one pass over (B, N).
        """
        picked_rows = torch.index_select(self._flat, 0, picks)  # (B, N)
        if bounds is not None:
            own_nearest = torch.take(self.nearest, picks)  # (B,) dmin_p before the pick
            lost = (own_nearest[:, None] - picked_rows).clamp_min_(0.0)  # (B, N)
            bounds.sub_(lost.mul_(1.0 - BOUND_MARGIN))
        torch.minimum(self.nearest, picked_rows, out=self.nearest)


def distance_objective(block: DistanceBlock, selected: torch.Tensor) -> torch.Tensor:
    """f(S) per problem (B,) float64 for ``selected`` (B, k) positions in ``block``."""
    nearest = _nearest_selected(block.distances, selected)[0]  # (B, N)
    n_rows = block.distances.shape[1]
    return n_rows * block.largest.to(torch.float64) - nearest.to(torch.float64).sum(dim=1)


def craig_counts(block: DistanceBlock, selected: torch.Tensor) -> torch.Tensor:
    """For each selected row (B, k), how many rows of its problem it is nearest to.

    Each row goes to its most similar selected row (the first one on ties),
    and every selected row counts itself, so no count is 0 even when rows are
    duplicates of each other; the counts of a problem add up to N. Returns
    (B, k) int64.
    """
    _, assignment = _nearest_selected(block.distances, selected)  # (B, N)
    own = torch.arange(selected.shape[1], device=selected.device).expand_as(selected)  # (B, k)
    assignment.scatter_(1, selected, own)
    counts = torch.zeros(selected.shape, dtype=torch.int64, device=selected.device)
    counts.scatter_add_(1, assignment, torch.ones_like(assignment))
    return counts


def _nearest_selected(
    distances: torch.Tensor, selected: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, n_rows, _ = distances.shape
    index = selected[:, :, None].expand(batch, selected.shape[1], n_rows)  # (B, k, N)
    to_selected = torch.gather(distances, 1, index)  # (B, k, N)
    return to_selected.min(dim=1)  # values (B, N), indices into k (B, N)


def facility_location_value(
    similarity: torch.Tensor, selected: torch.Tensor
) -> torch.Tensor | float:
    """f(S) = sum_i max_{j in S} sim(i, j), computed in float64.

    similarity: (N, N) or (B, N, N) similarity matrix (any non-negative
    similarity, e.g. ``similarity_block``). selected: (k,) or (B, k) positions.
    Returns a float for one problem, a (B,) float64 tensor for B problems.
    An empty selection has value 0.
    """
    if not isinstance(similarity, torch.Tensor) or similarity.dim() not in (2, 3):
        raise ValueError("similarity: expected a (N, N) or (B, N, N) tensor")
    if similarity.shape[-1] != similarity.shape[-2]:
        raise ValueError(
            f"similarity: expected square matrices, got shape {tuple(similarity.shape)}"
        )
    selected = torch.as_tensor(selected, dtype=torch.int64, device=similarity.device)
    single = similarity.dim() == 2
    sim = similarity[None] if single else similarity
    chosen = selected.reshape(1, -1) if single else selected
    if chosen.dim() != 2 or chosen.shape[0] != sim.shape[0]:
        raise ValueError(
            f"selected: expected shape (B, k) matching similarity, got {tuple(selected.shape)}"
        )
    n_rows = sim.shape[1]
    if chosen.numel() and (int(chosen.min()) < 0 or int(chosen.max()) >= n_rows):
        raise ValueError(f"selected: positions must lie in [0, {n_rows})")
    if chosen.shape[1] == 0:
        values = torch.zeros(sim.shape[0], dtype=torch.float64, device=sim.device)
    else:
        index = chosen[:, :, None].expand(sim.shape[0], chosen.shape[1], n_rows)
        values = torch.gather(sim, 1, index).to(torch.float64).amax(dim=1).sum(dim=1)  # (B,)
    return float(values[0]) if single else values


def exact_greedy(similarity: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain greedy on one problem: every pick takes the best of all rows.

    similarity: (N, N), used in float64. Returns (picks (k,) int64, gains (k,)
    float64). O(k N^2): a reference for tests and benchmarks.
    """
    sim = similarity.to(torch.float64)
    n_rows = sim.shape[0]
    if not 1 <= k <= n_rows:
        raise ValueError(f"k: expected 1 <= k <= {n_rows}, got {k}")
    current = torch.zeros(n_rows, dtype=torch.float64, device=sim.device)
    selected = torch.zeros(n_rows, dtype=torch.bool, device=sim.device)
    picks = torch.empty(k, dtype=torch.int64)
    gains = torch.empty(k, dtype=torch.float64)
    for step in range(k):
        step_gains = (sim - current[None, :]).clamp_min_(0.0).sum(dim=1)  # (N,)
        step_gains[selected] = -1.0
        best = int(step_gains.argmax())
        picks[step] = best
        gains[step] = step_gains[best]
        selected[best] = True
        current = torch.maximum(current, sim[best])
    return picks, gains
