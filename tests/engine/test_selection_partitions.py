"""Partitioned selection: budgets, ragged partitions, weights, streaming blocks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nacs_engine.selection import (
    default_memory_bytes,
    facility_location_value,
    partition_budgets,
    select_partitions,
    similarity_block,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensor work runs faster on one thread, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clustered_rows(n_rows: int, dim: int = 4, seed: int = 0) -> torch.Tensor:
    generator = seeded(seed)
    centres = 3 * torch.randn(8, dim, generator=generator)
    labels = torch.randint(0, 8, (n_rows,), generator=generator)
    return centres[labels] + 0.3 * torch.randn(n_rows, dim, generator=generator)


def test_budgets_by_largest_remainder():
    assert partition_budgets([3, 3, 3], 4) == [2, 1, 1]
    assert partition_budgets([10, 5], 3) == [2, 1]
    assert partition_budgets([4, 4, 3], 11) == [4, 4, 3]
    assert partition_budgets([4, 4, 3], 0) == [0, 0, 0]


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 50), min_size=1, max_size=20), share=st.floats(0.0, 1.0))
def test_budgets_sum_exactly_and_fit(sizes, share):
    budget = round(share * sum(sizes))
    budgets = partition_budgets(sizes, budget)
    assert sum(budgets) == budget
    total = sum(sizes)
    for size, got in zip(sizes, budgets, strict=True):
        assert 0 <= got <= size
        if total:
            assert abs(got - budget * size / total) < 1.0


@pytest.mark.parametrize(
    ("n_rows", "budget", "partition_size"),
    [(1003, 57, 100), (250, 250, 64), (97, 1, 10), (40, 13, 1000)],
)
def test_selection_is_distinct_rows_with_mean_one_weights(n_rows, budget, partition_size):
    features = clustered_rows(n_rows, seed=n_rows)
    result = select_partitions(features, budget, partition_size=partition_size, generator=seeded(1))
    assert result.indices.shape == (budget,) and result.indices.dtype == torch.int64
    assert result.weights.shape == (budget,) and result.weights.dtype == torch.float32
    assert len(set(result.indices.tolist())) == budget
    assert bool((result.indices[1:] > result.indices[:-1]).all())
    assert int(result.indices.min()) >= 0 and int(result.indices.max()) < n_rows
    assert float(result.weights.mean()) == pytest.approx(1.0, rel=1e-6)
    assert float(result.weights.min()) > 0.0
    assert result.partitions == -(-n_rows // partition_size)
    assert result.partition_size <= partition_size


def test_ragged_partitions_differ_by_at_most_one_row():
    # 1003 rows in partitions of at most 100: 11 partitions of 91 or 92 rows.
    result = select_partitions(clustered_rows(1003), 1003, partition_size=100, generator=seeded(2))
    assert result.partitions == 11 and result.partition_size == 92
    assert sorted(result.indices.tolist()) == list(range(1003))
    # Everything selected: each row is its own nearest selected row.
    assert torch.equal(result.weights, torch.ones(1003))


def test_weights_count_the_rows_of_each_partition():
    # One partition: the weights are the CRAIG cluster sizes, scaled to mean 1.
    features = clustered_rows(300, seed=3)
    result = select_partitions(features, 10, partition_size=300, generator=seeded(4))
    distances = torch.cdist(features.double(), features.double())
    nearest = distances[:, result.indices].argmin(dim=1)
    counts = torch.bincount(nearest, minlength=10).double()
    assert torch.allclose(result.weights.double(), counts * 10 / 300, rtol=1e-6)


def test_objective_is_the_facility_location_value_of_the_picks():
    features = clustered_rows(200, seed=5)
    result = select_partitions(features, 12, partition_size=200, generator=seeded(6))
    expected = facility_location_value(similarity_block(features[None])[0].double(), result.indices)
    assert result.objective == pytest.approx(expected, rel=1e-6)


def test_blocks_streamed_in_tiny_memory_give_the_same_rows():
    features = clustered_rows(1500, seed=7)
    whole = select_partitions(
        features, 60, partition_size=128, generator=seeded(8), memory_bytes=1 << 30
    )
    streamed = select_partitions(
        features, 60, partition_size=128, generator=seeded(8), memory_bytes=1
    )
    assert whole.blocks < streamed.blocks and streamed.block_partitions == 1
    assert torch.equal(whole.indices, streamed.indices)
    assert torch.equal(whole.weights, streamed.weights)
    assert whole.objective == pytest.approx(streamed.objective)


def test_same_seed_same_rows():
    features = clustered_rows(800, seed=9)
    first = select_partitions(features, 40, partition_size=100, generator=seeded(10))
    again = select_partitions(features, 40, partition_size=100, generator=seeded(10))
    other = select_partitions(features, 40, partition_size=100, generator=seeded(11))
    assert torch.equal(first.indices, again.indices)
    assert not torch.equal(first.indices, other.indices)


def test_beats_random_rows_on_clustered_data():
    features = clustered_rows(2000, seed=12)
    result = select_partitions(features, 40, partition_size=500, generator=seeded(13))
    random_rows = torch.randperm(2000, generator=seeded(14))[:40]
    sim = similarity_block(features[None].double())[0]
    assert facility_location_value(sim, result.indices) > facility_location_value(sim, random_rows)


def test_progress_is_called_per_block_and_may_raise():
    calls = []
    features = clustered_rows(600, seed=15)
    select_partitions(
        features,
        30,
        partition_size=100,
        generator=seeded(16),
        memory_bytes=1,
        progress=lambda fraction, message: calls.append((fraction, message)),
    )
    assert len(calls) == 6 and calls[-1][0] == pytest.approx(1.0)
    assert all(later >= earlier for (earlier, _), (later, _) in zip(calls, calls[1:], strict=False))

    class Stop(Exception):
        pass

    def cancel(fraction, message):
        raise Stop

    with pytest.raises(Stop):
        select_partitions(features, 30, partition_size=100, generator=seeded(16), progress=cancel)


def test_zero_budget_returns_empties():
    result = select_partitions(clustered_rows(50), 0, partition_size=10, generator=seeded(17))
    assert result.indices.shape == (0,) and result.weights.shape == (0,)
    assert result.objective == 0.0


def test_default_memory_on_cpu_is_a_modest_cap():
    assert 0 < default_memory_bytes(torch.device("cpu")) <= 1 << 30


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"features": torch.zeros(3, 4, 2)}, "features"),
        ({"features": torch.zeros(10, 2, dtype=torch.int32)}, "features"),
        ({"features": torch.full((10, 2), float("nan"))}, "features"),
        ({"budget": 11}, "budget"),
        ({"budget": -1}, "budget"),
        ({"budget": 2.0}, "budget"),
        ({"partition_size": 0}, "partition_size"),
        ({"partition_size": 3.5}, "partition_size"),
        ({"eps": 0.0}, "eps"),
        ({"memory_bytes": 0}, "memory_bytes"),
        ({"progress": "yes"}, "progress"),
        ({"generator": 7}, "generator"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs, name):
    arguments = {"features": torch.zeros(10, 2), "budget": 3, "partition_size": 5} | kwargs
    features = arguments.pop("features")
    budget = arguments.pop("budget")
    with pytest.raises(ValueError, match=f"^{name}:"):
        select_partitions(features, budget, **arguments)


def test_single_row_and_float64_rows():
    one = select_partitions(torch.ones(1, 3), 1, partition_size=10, generator=seeded(18))
    assert one.indices.tolist() == [0] and one.weights.tolist() == [1.0]
    features = clustered_rows(150, seed=19).double()
    result = select_partitions(features, 15, partition_size=40, generator=seeded(20))
    assert len(set(result.indices.tolist())) == 15
    # Each of the 4 partitions of 37 or 38 rows gets 3 or 4 picks.
    assert result.partitions == 4 and result.partition_size == 38


def test_selected_rows_count_themselves_when_distances_tie() -> None:
    from nacs_engine.selection.facility_location import craig_counts, distance_block

    block = distance_block(torch.zeros(1, 6, 3))  # six identical rows: every distance ties at 0
    counts = craig_counts(block, torch.tensor([[0, 4, 2]]))
    assert counts.tolist() == [[4, 1, 1]]
