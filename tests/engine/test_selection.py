"""Facility location and the batched stochastic greedy: exact values and properties."""

from __future__ import annotations

import itertools
import math
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nacs_engine.selection import (
    batched_stochastic_greedy,
    batched_stochastic_greedy_with_gains,
    exact_greedy,
    facility_location,
    facility_location_value,
    release_workspace,
    similarity_block,
)
from nacs_engine.selection.facility_location import (
    FacilityLocationState,
    block_workspace,
    craig_counts,
    distance_block,
    distance_objective,
)
from nacs_engine.selection.greedy import sample_size

# eps this small makes s = N: every unselected row is a candidate, the plain greedy.
EXACT_EPS = 1e-300


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensor work runs faster on one thread, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gaussian_mixture(
    batch: int,
    n_rows: int,
    dim: int,
    *,
    clusters: int = 5,
    spread: float = 0.3,
    seed: int = 0,
    offset: float = 0.0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """(batch, n_rows, dim) points around `clusters` centres per problem."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(batch, clusters, dim, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, clusters, (batch, n_rows), generator=generator)
    points = torch.gather(centres, 1, labels[:, :, None].expand(batch, n_rows, dim))
    points = points + spread * torch.randn(
        batch, n_rows, dim, generator=generator, dtype=torch.float64
    )
    return (points + offset).to(dtype)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_similarity_is_the_largest_distance_minus_the_distance():
    features = gaussian_mixture(2, 30, 4, seed=1)
    sim = similarity_block(features)
    distances = torch.cdist(features, features)
    expected = distances.amax(dim=(1, 2))[:, None, None] - distances
    assert torch.allclose(sim, expected, atol=1e-9)
    assert float(sim.min()) >= 0.0
    # Each row is its own most similar row, at exactly C.
    assert torch.equal(torch.diagonal(sim, dim1=1, dim2=2), sim.amax(dim=2))


def test_distances_survive_a_large_shared_offset_in_float32():
    # Rows that differ by ~1e-2 on top of an offset of 1e3: |x|^2 + |y|^2 - 2xy on the
    # raw rows would lose every digit in float32; the centred form keeps them.
    features = gaussian_mixture(1, 50, 8, spread=0.01, offset=1e3, seed=2)
    as_float32 = features.to(torch.float32)
    reference = torch.cdist(as_float32.double(), as_float32.double())
    got = distance_block(as_float32).distances.double()
    assert torch.allclose(got, reference, rtol=1e-3, atol=1e-4)


def test_a_problem_cut_into_pieces_has_the_distances_of_a_whole_one(monkeypatch):
    # Pieces of 64 rows (the last one shorter): each multiplies only the columns
    # from its diagonal on and copies the others from the pieces above.
    monkeypatch.setattr(facility_location, "_PIECE_BYTES", 1)
    monkeypatch.setattr(facility_location, "_MIN_PIECE_ROWS", 64)
    features = gaussian_mixture(2, 300, 5, seed=21)
    block = distance_block(features)
    reference = torch.cdist(features, features, compute_mode="donot_use_mm_for_euclid_dist")
    assert torch.allclose(block.distances, reference, atol=1e-9)
    assert torch.equal(torch.diagonal(block.distances, dim1=1, dim2=2), torch.zeros(2, 300))
    assert torch.allclose(block.largest, reference.amax(dim=(1, 2)), atol=1e-9)
    exact_first = 300 * reference.amax(dim=(1, 2))[:, None] - reference.sum(dim=2)
    assert bool((block.first_gains >= exact_first).all())


def test_all_gains_are_the_gains_of_every_row():
    features = gaussian_mixture(3, 120, 4, seed=22, dtype=torch.float32)
    block = distance_block(features)
    state = FacilityLocationState(block, max_evaluated_rows=50)
    state.add(torch.tensor([5, 120 + 7, 240 + 119]))
    state.add(torch.tensor([60, 120 + 0, 240 + 3]))
    every_row = state.gains(None, torch.arange(360).view(3, 120)[:, :16]).clone()
    streamed = state.all_gains(torch.empty(3, 120))
    assert torch.equal(streamed[:, :16], every_row)
    expected = (state.nearest[:, None, :] - block.distances).clamp_min(0.0).sum(dim=2)
    assert torch.allclose(streamed, expected, rtol=1e-5)


def test_facility_location_value_by_hand():
    sim = torch.tensor([[3.0, 1.0, 0.0], [1.0, 3.0, 2.0], [0.0, 2.0, 3.0]])
    assert facility_location_value(sim, torch.tensor([1])) == pytest.approx(1.0 + 3.0 + 2.0)
    assert facility_location_value(sim, torch.tensor([0, 2])) == pytest.approx(3.0 + 2.0 + 3.0)
    assert facility_location_value(sim, torch.tensor([], dtype=torch.int64)) == 0.0
    batched = facility_location_value(torch.stack([sim, sim]), torch.tensor([[1], [0]]))
    assert batched.tolist() == pytest.approx([6.0, 4.0])


def test_distance_objective_equals_the_similarity_objective():
    features = gaussian_mixture(3, 40, 3, seed=3)
    selected = torch.tensor([[0, 5, 7], [1, 2, 3], [39, 20, 10]])
    expected = facility_location_value(similarity_block(features), selected)
    assert torch.allclose(distance_objective(distance_block(features), selected), expected)


def test_exact_greedy_matches_brute_force_on_a_tiny_problem():
    features = gaussian_mixture(1, 9, 2, seed=4)
    sim = similarity_block(features)[0]
    picks, gains = exact_greedy(sim, 3)
    best = max(
        facility_location_value(sim, torch.tensor(subset))
        for subset in itertools.combinations(range(9), 3)
    )
    value = facility_location_value(sim, picks)
    assert value == pytest.approx(float(gains.sum()))
    assert value >= (1 - 1 / math.e) * best


def test_greedy_reaches_the_guarantee_against_exhaustive_search():
    features = gaussian_mixture(20, 10, 2, clusters=3, seed=5)
    sim = similarity_block(features)
    picks = batched_stochastic_greedy(features, 3, eps=0.1, generator=seeded(0))
    ratios = []
    for problem in range(20):
        best = max(
            facility_location_value(sim[problem], torch.tensor(subset))
            for subset in itertools.combinations(range(10), 3)
        )
        ratios.append(facility_location_value(sim[problem], picks[problem]) / best)
    assert sum(ratios) / len(ratios) >= 1 - 1 / math.e - 0.1
    assert max(ratios) <= 1.0 + 1e-12


@pytest.mark.parametrize("eps", [1e-3, 1e-2, 0.1])
def test_greedy_against_the_exact_greedy_on_clustered_data(eps):
    features = gaussian_mixture(8, 300, 6, clusters=12, spread=0.2, seed=6)
    sim = similarity_block(features)
    picks = batched_stochastic_greedy(features, 15, eps=eps, generator=seeded(1))
    ours = facility_location_value(sim, picks)
    reference = torch.tensor(
        [facility_location_value(sim[b], exact_greedy(sim[b], 15)[0]) for b in range(8)]
    )
    assert float((ours / reference).mean()) >= 1 - 1 / math.e - eps
    # In practice the stochastic greedy is far closer to the greedy than the bound.
    assert float((ours / reference).mean()) >= 0.97


def test_with_every_row_sampled_it_is_the_exact_greedy():
    features = gaussian_mixture(4, 120, 5, seed=7)
    result = batched_stochastic_greedy_with_gains(features, 12, eps=EXACT_EPS, generator=seeded(2))
    sim = similarity_block(features)
    for problem in range(4):
        picks, gains = exact_greedy(sim[problem], 12)
        assert torch.equal(result.picks[problem], picks)
        assert torch.allclose(result.gains[problem], gains, rtol=1e-9)


def test_gains_add_up_to_the_objective():
    features = gaussian_mixture(5, 200, 4, seed=8)
    result = batched_stochastic_greedy_with_gains(features, 20, eps=1e-2, generator=seeded(3))
    values = facility_location_value(similarity_block(features), result.picks)
    assert torch.allclose(result.gains.sum(dim=1), values, rtol=1e-9)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 4),
    n_rows=st.integers(1, 60),
    dim=st.integers(1, 5),
    k_share=st.floats(0.0, 1.0),
    eps=st.sampled_from([1e-4, 1e-2, 0.3, 0.9]),
    seed=st.integers(0, 2**31),
    float32=st.booleans(),
)
def test_picks_are_distinct_positions_and_gains_are_sound(
    batch, n_rows, dim, k_share, eps, seed, float32
):
    k = max(1, min(n_rows, round(k_share * n_rows)))
    dtype = torch.float32 if float32 else torch.float64
    features = torch.randn(batch, n_rows, dim, generator=seeded(seed), dtype=dtype)
    result = batched_stochastic_greedy_with_gains(features, k, eps=eps, generator=seeded(seed + 1))
    assert result.picks.shape == (batch, k) and result.picks.dtype == torch.int64
    assert int(result.picks.min()) >= 0 and int(result.picks.max()) < n_rows
    for row in result.picks.tolist():
        assert len(set(row)) == k
    assert float(result.gains.min()) >= 0.0
    # Submodularity: a row's gain never grows, so each pick's gain evaluated one
    # step earlier bounds its gain when picked (on the run's own similarities).
    sim = similarity_block(features).double()
    for problem in range(batch):
        picks = result.picks[problem]
        for step in range(1, k):
            before = facility_location_value(
                sim[problem], torch.cat([picks[: step - 1], picks[step : step + 1]])
            )
            earlier_gain = before - facility_location_value(sim[problem], picks[: step - 1])
            assert float(result.gains[problem, step]) <= earlier_gain + 1e-4 * (1 + earlier_gain)


@settings(max_examples=25, deadline=None)
@given(
    n_rows=st.integers(2, 50),
    k_share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_exact_mode_gains_never_increase(n_rows, k_share, seed):
    k = max(1, min(n_rows, round(k_share * n_rows)))
    features = torch.randn(2, n_rows, 3, generator=seeded(seed), dtype=torch.float64)
    gains = batched_stochastic_greedy_with_gains(
        features, k, eps=EXACT_EPS, generator=seeded(seed)
    ).gains
    assert bool((gains[:, 1:] <= gains[:, :-1] * (1 + 1e-9) + 1e-12).all())


def test_same_seed_same_picks_and_seeds_matter():
    features = gaussian_mixture(3, 500, 8, seed=9, dtype=torch.float32)
    first = batched_stochastic_greedy(features, 10, generator=seeded(11))
    again = batched_stochastic_greedy(features, 10, generator=seeded(11))
    other = batched_stochastic_greedy(features, 10, generator=seeded(12))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_the_kept_workspace_gives_the_picks_of_fresh_memory():
    large = gaussian_mixture(2, 300, 8, seed=20, dtype=torch.float32)
    small = gaussian_mixture(3, 100, 8, seed=21, dtype=torch.float32)
    release_workspace()
    fresh_large = batched_stochastic_greedy(large, 12, generator=seeded(5))
    # The small problems reuse the large block's memory, holding its distances.
    from_kept = batched_stochastic_greedy(small, 6, generator=seeded(6))
    release_workspace()
    fresh_small = batched_stochastic_greedy(small, 6, generator=seeded(6))
    assert torch.equal(from_kept, fresh_small)
    assert torch.equal(batched_stochastic_greedy(large, 12, generator=seeded(5)), fresh_large)


def test_the_workspace_is_kept_per_thread_and_up_to_its_limit(monkeypatch):
    release_workspace()
    first = block_workspace(2, 50, torch.float32, torch.device("cpu"))
    again = block_workspace(1, 70, torch.float32, torch.device("cpu"))
    assert again.data_ptr() == first.data_ptr()  # 4,900 of the 5,000 elements kept
    assert block_workspace(2, 50, torch.float64, torch.device("cpu")).data_ptr() != first.data_ptr()
    others: list[torch.Tensor] = []
    thread = threading.Thread(
        target=lambda: others.append(block_workspace(2, 50, torch.float64, torch.device("cpu")))
    )
    thread.start()
    thread.join()
    kept = block_workspace(2, 50, torch.float64, torch.device("cpu"))
    assert others[0].data_ptr() != kept.data_ptr()
    monkeypatch.setattr(facility_location, "WORKSPACE_MAX_BYTES", 1000)
    release_workspace()
    too_large = block_workspace(1, 20, torch.float32, torch.device("cpu"))  # 1,600 bytes
    assert (
        block_workspace(1, 20, torch.float32, torch.device("cpu")).data_ptr()
        != too_large.data_ptr()
    )
    release_workspace()


def test_float32_picks_match_a_float64_run_on_clustered_data():
    # Tight clusters far from the origin: the case where the expanded form of
    # the distance and sum(max(sim, cur)) - sum(cur) both lose the greedy's choices.
    features = gaussian_mixture(
        2, 2000, 16, clusters=40, spread=0.05, offset=50.0, seed=10, dtype=torch.float32
    )
    as_float32 = batched_stochastic_greedy(features, 40, generator=seeded(13))
    as_float64 = batched_stochastic_greedy(features.double(), 40, generator=seeded(13))
    assert torch.equal(as_float32, as_float64)


def test_craig_counts_cover_every_row():
    features = gaussian_mixture(2, 100, 3, seed=14)
    block = distance_block(features)
    picks = batched_stochastic_greedy(features, 7, generator=seeded(4))
    counts = craig_counts(block, picks)
    assert counts.sum(dim=1).tolist() == [100, 100]
    assert int(counts.min()) >= 1  # each selected row is nearest to itself
    # Brute force: the nearest selected row of every row.
    distances = torch.cdist(features, features)
    for problem in range(2):
        nearest = distances[problem][:, picks[problem]].argmin(dim=1)
        assert torch.equal(torch.bincount(nearest, minlength=7), counts[problem])


def test_sample_size_follows_the_formula():
    assert sample_size(10_000, 100, 1e-3) == math.ceil(10_000 * math.log(1e3) / 100)
    assert sample_size(100, 50, 1e-3) == 14
    assert sample_size(100, 1, 1e-3) == 100


@pytest.mark.parametrize(
    ("features", "k", "eps", "name"),
    [
        (torch.zeros(5, 3), 1, 1e-3, "features"),
        (torch.zeros(1, 5, 3, dtype=torch.int64), 1, 1e-3, "features"),
        (torch.full((1, 5, 3), float("nan")), 1, 1e-3, "features"),
        ([[[0.0]]], 1, 1e-3, "features"),
        (torch.zeros(1, 0, 3), 1, 1e-3, "features"),
        (torch.zeros(1, 5, 3), 0, 1e-3, "k"),
        (torch.zeros(1, 5, 3), 6, 1e-3, "k"),
        (torch.zeros(1, 5, 3), 2.0, 1e-3, "k"),
        (torch.zeros(1, 5, 3), True, 1e-3, "k"),
        (torch.zeros(1, 5, 3), 1, 0.0, "eps"),
        (torch.zeros(1, 5, 3), 1, 1.0, "eps"),
        (torch.zeros(1, 5, 3), 1, "0.1", "eps"),
    ],
)
def test_bad_inputs_name_the_argument(features, k, eps, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        batched_stochastic_greedy(features, k, eps=eps)


def test_bad_generator_is_named():
    with pytest.raises(ValueError, match="^generator:"):
        batched_stochastic_greedy(torch.zeros(1, 5, 3), 1, generator=object())


def test_identical_rows_still_give_distinct_picks():
    features = torch.zeros(2, 10, 3)
    picks = batched_stochastic_greedy(features, 10, generator=seeded(5))
    assert [sorted(row) for row in picks.tolist()] == [list(range(10))] * 2


@pytest.mark.gpu
def test_cuda_and_cpu_reach_the_same_objective():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    features = gaussian_mixture(16, 1000, 32, clusters=20, spread=0.2, seed=15, dtype=torch.float32)
    cpu_picks = batched_stochastic_greedy(features, 20, generator=seeded(6))
    cuda = torch.device("cuda")
    cuda_picks = batched_stochastic_greedy(
        features.to(cuda), 20, generator=torch.Generator(device=cuda).manual_seed(6)
    ).cpu()
    assert len({tuple(sorted(row)) for row in cuda_picks.tolist()}) == 16
    sim = similarity_block(features.double())
    cpu_value = facility_location_value(sim, cpu_picks)
    cuda_value = facility_location_value(sim, cuda_picks)
    assert abs(float(cuda_value.mean() / cpu_value.mean()) - 1.0) < 5e-3
