"""Exact duplicates among the candidates and the probabilities pooled over them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import nacs_engine.duplicates as duplicates_module
from nacs_engine import select_coreset
from nacs_engine.config import SelectionConfig
from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.duplicates import (
    capped_set_aside,
    duplicate_groups,
    pooled_probabilities,
    resolved_duplicate_prior,
)
from nacs_engine.nacs import run_nacs
from nacs_engine.teacher import fold_assignment


def _same_partition(group: np.ndarray, features: np.ndarray) -> bool:
    _, exact = np.unique(features, axis=0, return_inverse=True)
    exact = exact.ravel()
    pairs = set(zip(group.tolist(), exact.tolist(), strict=True))
    return len(pairs) == len(set(group.tolist())) == len(set(exact.tolist()))


def test_rows_with_the_same_values_share_a_group_and_no_others() -> None:
    rng = np.random.default_rng(0)
    features = rng.integers(0, 3, size=(2000, 4)).astype(np.int32)
    rows = rng.permutation(2000)[:1500]
    group, size = duplicate_groups(features, rows)
    assert group.shape == (1500,) and size.sum() == 1500
    assert _same_partition(group, features[rows])
    np.testing.assert_array_equal(size, np.bincount(group))


def test_rows_whose_hashes_collide_are_kept_apart(monkeypatch) -> None:
    # every row hashes to 0: rows equal to their hash group's first keep its group, the
    # others each get one of their own, so that no two different rows are ever pooled
    monkeypatch.setattr(
        duplicates_module, "_multipliers", lambda n: np.zeros(n, dtype=np.uint64)
    )
    features = np.array([[1, 2], [1, 2], [3, 4], [3, 4], [1, 2]], dtype=np.int32)
    group, size = duplicate_groups(features, np.arange(5))
    assert group[0] == group[1] == group[4]
    assert len({group[0], group[2], group[3]}) == 3
    np.testing.assert_array_equal(np.sort(size), [1, 1, 3])


def test_a_memmap_is_read_in_blocks(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(duplicates_module, "_HASH_ROWS", 7)
    rng = np.random.default_rng(1)
    values = rng.integers(0, 2, size=(100, 3)).astype(np.int32)
    mapped = np.memmap(tmp_path / "f.bin", dtype=np.int32, mode="w+", shape=values.shape)
    mapped[:] = values
    group, _ = duplicate_groups(mapped, np.arange(100))
    assert _same_partition(group, values)


def test_pooled_probability_is_the_other_folds_rate_with_the_teacher_as_prior_rows() -> None:
    features = np.array([[1], [1], [1], [1], [1], [2], [2]], dtype=np.int32)
    labels = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    folds = np.array([0, 0, 1, 1, 2, 0, 0])
    teacher = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.9, 0.2])
    group, _ = duplicate_groups(features, np.arange(7))
    pooled = pooled_probabilities(teacher, labels, folds, group, 2.0)
    # fold 0 of the first group sees folds 1 and 2: two clicks in three rows
    assert pooled[0] == pooled[1] == pytest.approx((2 + 2 * 0.5) / (3 + 2))
    # fold 1 sees a click and a non-click of fold 0 and the click of fold 2
    assert pooled[2] == pooled[3] == pytest.approx((2 + 1.0) / 5)
    assert pooled[4] == pytest.approx((2 + 1.0) / (4 + 2))
    # duplicates in the same fold only: the teacher's probability stays
    np.testing.assert_allclose(pooled[5:], [0.9, 0.2])
    # no row's label moves the probability of a row of its own fold
    for row in range(7):
        changed = labels.copy()
        changed[row] = 1.0 - changed[row]
        moved = pooled_probabilities(teacher, changed, folds, group, 2.0)
        np.testing.assert_array_equal(moved[folds == folds[row]], pooled[folds == folds[row]])
    # a heavy prior leaves the teacher's; a light one the other folds' rate
    assert pooled_probabilities(teacher, labels, folds, group, 1e9)[0] == pytest.approx(0.5)
    assert pooled_probabilities(teacher, labels, folds, group, 1e-9)[0] == pytest.approx(2 / 3)


def test_rows_alone_keep_the_teachers_probability_exactly_beside_pooled_ones() -> None:
    rng = np.random.default_rng(8)
    features = np.array([[1], [1], [1], [2], [3]], dtype=np.int32)
    teacher = rng.random(5)
    group, _ = duplicate_groups(features, np.arange(5))
    pooled = pooled_probabilities(teacher, np.array([1.0, 0, 0, 1, 0]), np.array([0, 1, 2, 0, 1]),
                                  group, 30.0)
    assert not np.allclose(pooled[:3], teacher[:3])
    np.testing.assert_array_equal(pooled[3:], teacher[3:])


@pytest.mark.parametrize("prior", [0, -1.0, float("nan"), True, "3"])
def test_the_prior_must_be_a_positive_number(prior) -> None:
    group, _ = duplicate_groups(np.zeros((2, 1), dtype=np.int32), np.arange(2))
    with pytest.raises(ValueError, match="prior_rows"):
        pooled_probabilities(np.full(2, 0.5), np.array([0.0, 1.0]), np.arange(2), group, prior)


def _few_fields(rows: int, seed: int) -> tuple[EncodedDataset, np.ndarray]:
    """Three fields of three values: 27 cells, each with its own click rate."""
    rng = np.random.default_rng(seed)
    features = rng.integers(1, 4, size=(rows, 3)).astype(np.int32)
    cell = (features - 1) @ np.array([9, 3, 1])
    rates = np.linspace(0.05, 0.6, 27)[rng.permutation(27)]
    labels = (rng.random(rows) < rates[cell]).astype(np.float32)
    data = EncodedDataset(
        features=features, labels=labels, field_names=("a", "b", "c"), field_dims=(4, 4, 4)
    )
    return data, cell


def test_on_data_of_few_fields_the_soft_labels_are_the_cells_rates() -> None:
    data, cell = _few_fields(6000, seed=2)
    plain = {
        "ratio": 0.1,
        "device": "cpu",
        "seed": 0,
        "embed_dim": 4,
        "audit": False,
        "set_aside_factor": 0.0,
        "flip_correction": False,
        "keep_click_rate": False,
        "label_mix": 0.0,
    }
    result = select_coreset(data, SelectionConfig(**plain, duplicate_prior=1e-6))
    teacher = result.diagnostics["teacher"]
    assert teacher["duplicated_share"] == teacher["crowded_share"] == 1.0
    assert teacher["duplicate_prior"] == 1e-6
    # each picked row's soft label is the click rate of its cell in the teacher's other folds
    config = SelectionConfig(**plain, duplicate_prior=1e-6)
    folds = fold_assignment(data.n_rows, config).astype(np.int64)

    def others_rate(rows: np.ndarray) -> np.ndarray:
        rates = np.empty(rows.shape[0])
        for i, row in enumerate(rows):
            outside = (cell == cell[row]) & (folds != folds[row])
            rates[i] = data.labels[outside].mean()
        return rates

    np.testing.assert_allclose(result.soft_labels, others_rate(result.rows), atol=1e-4)
    # without pooling they are the teacher's, which are not the cells' rates
    off = select_coreset(data, SelectionConfig(**plain, duplicate_prior=0.0))
    assert off.diagnostics["teacher"]["duplicate_prior"] == 0.0
    assert off.diagnostics["teacher"]["crowded_share"] == 1.0
    assert np.abs(off.soft_labels - others_rate(off.rows)).max() > 0.01
    # at a prior of 30 rows against about 180 of the other folds: a seventh of the distance
    thirty = select_coreset(data, SelectionConfig(**plain, duplicate_prior=30.0))
    pooled_distance = np.abs(thirty.soft_labels - others_rate(thirty.rows)).max()
    assert pooled_distance < 0.5 * np.abs(off.soft_labels - others_rate(off.rows)).max()
    # every row is in a crowded group: left unset, the prior is 30
    default = select_coreset(data, SelectionConfig(**plain))
    assert default.diagnostics["teacher"]["duplicate_prior"] == 30.0
    np.testing.assert_array_equal(default.rows, thirty.rows)
    np.testing.assert_array_equal(default.soft_labels, thirty.soft_labels)


@pytest.mark.parametrize(
    ("prior", "crowded", "taken"),
    [(None, 0.5, 30.0), (None, 0.49, 0.0), (None, 1.0, 30.0), (0.0, 1.0, 0.0), (5.0, 0.0, 5.0)],
)
def test_left_unset_the_prior_pools_where_half_the_rows_are_crowded(
    prior: float | None, crowded: float, taken: float
) -> None:
    assert resolved_duplicate_prior(prior, crowded) == taken


def test_only_the_candidates_labels_are_pooled() -> None:
    # the candidates are the even rows; every odd row is a click that must not be counted
    data, cell = _few_fields(6000, seed=4)
    labels = data.labels.copy()
    labels[1::2] = 1.0
    data = EncodedDataset(
        features=data.features, labels=labels, field_names=data.field_names,
        field_dims=data.field_dims,
    )
    candidates = np.arange(0, 6000, 2)
    config = SelectionConfig(
        size=300, device="cpu", seed=0, embed_dim=4, audit=False, set_aside_factor=0.0,
        flip_correction=False, keep_click_rate=False, label_mix=0.0, duplicate_prior=1e-6,
    )
    result = run_nacs(data, config, 300, lambda *args: None, candidates=candidates)
    folds = fold_assignment(candidates.shape[0], config).astype(np.int64)
    position = np.searchsorted(candidates, result.rows)
    for row, soft in zip(position, result.soft_labels, strict=True):
        outside = (cell[candidates] == cell[candidates[row]]) & (folds != folds[row])
        assert soft == pytest.approx(labels[candidates][outside].mean(), abs=1e-4)


def test_rows_without_duplicates_keep_the_teachers_probabilities() -> None:
    rng = np.random.default_rng(3)
    features = np.stack([np.arange(3000) + 1, rng.integers(1, 5, 3000)], axis=1).astype(np.int32)
    labels = (rng.random(3000) < 0.3).astype(np.float32)
    data = EncodedDataset(
        features=features, labels=labels, field_names=("id", "x"), field_dims=(3001, 5)
    )
    options = {"ratio": 0.1, "device": "cpu", "seed": 0, "embed_dim": 4, "audit": False}
    pooled = select_coreset(data, SelectionConfig(**options, duplicate_prior=30.0))
    alone = select_coreset(data, SelectionConfig(**options, duplicate_prior=0.0))
    assert pooled.diagnostics["teacher"]["duplicated_share"] == 0.0
    assert pooled.diagnostics["teacher"]["crowded_share"] == 0.0
    np.testing.assert_array_equal(pooled.rows, alone.rows)
    np.testing.assert_array_equal(pooled.soft_labels, alone.soft_labels)


def _wrong_chance(q: np.ndarray, y: np.ndarray, rho: float) -> np.ndarray:
    clean = np.clip((q - rho) / (1 - 2 * rho), 0, 1)
    return np.clip(np.where(y > 0.5, rho * (1 - clean) / q, rho * clean / (1 - q)), 0, 1)


def test_a_group_keeps_set_aside_no_more_than_the_wrong_labels_it_likely_holds() -> None:
    # 1,000 duplicates observed at q = 0.23 under flips at 0.2: clean rate 0.05, 83% of the
    # clicks wrong and 1.3% of the non-clicks; the ranking set aside every click, capped
    # about a fifth of the group (its expected wrong labels) stays set aside
    rng = np.random.default_rng(0)
    labels = (rng.random(1000) < 0.23).astype(np.float64)
    q = np.full(1000, 0.23)
    ranked = labels > 0.5
    aside = capped_set_aside(ranked, q, labels, np.zeros(1000, dtype=np.int64), 0.2)
    expected = labels.sum() * 0.2 * 0.95 / 0.23 + (1000 - labels.sum()) * 0.2 * 0.05 / 0.77
    assert aside.sum() == int(np.floor(expected + 0.5)) == pytest.approx(200, abs=20)
    assert not np.any(aside & ~ranked)
    assert 0 < labels[~aside].sum() < labels.sum()
    # where the ranking took both classes, the group's share goes to the clicks first, whose
    # label the probability supports least
    everything = capped_set_aside(np.ones(1000, bool), q, labels, np.zeros(1000, np.int64), 0.2)
    assert everything.sum() == aside.sum() and labels[everything].min() == 1.0


def test_the_rows_least_supported_stay_set_aside_and_the_others_are_untouched(
    monkeypatch,
) -> None:
    # groups of six rows or more count as crowded here. Group 0: twelve clicks whose
    # probabilities differ by fold; group 1: six non-clicks at 0.6; rows
    # 18-21 have no duplicate. A group's cap counts both classes: each here holds one
    monkeypatch.setattr(duplicates_module, "CROWDED_GROUP_ROWS", 6)
    q = np.r_[np.linspace(0.30, 0.60, 12), np.full(6, 0.6), [0.1, 0.1, 0.9, 0.5]]
    labels = np.r_[np.ones(12), np.zeros(6), [1.0, 0.0, 0.0, 1.0]]
    group = np.r_[np.zeros(12), np.ones(6), [2, 3, 4, 5]].astype(np.int64)
    ranked = np.ones(22, dtype=bool)
    ranked[[5, 20]] = False
    aside = capped_set_aside(ranked, q, labels, group, 0.25)
    chance = _wrong_chance(q, labels, 0.25)
    allowed = int(np.floor(chance[:12].sum() + 0.5))
    assert 0 < allowed < 11
    # of the eleven clicks the ranking set aside, the least supported stay so
    first = [i for i in np.argsort(q[:12], kind="stable") if i != 5][:allowed]
    np.testing.assert_array_equal(np.flatnonzero(aside[:12]), np.sort(first))
    assert aside[12:18].sum() == int(np.floor(chance[12:18].sum() + 0.5)) == 3
    np.testing.assert_array_equal(aside[18:], ranked[18:])
    unchanged = capped_set_aside(ranked, q, labels, np.arange(22), 0.25)
    np.testing.assert_array_equal(unchanged, ranked)
    # groups of five are set aside as ranked
    small = np.r_[np.arange(12) // 4, 3 + np.arange(6) // 3, [5, 6, 7, 8]]
    np.testing.assert_array_equal(capped_set_aside(ranked, q, labels, small, 0.25), ranked)


@pytest.mark.parametrize("rate", [-0.1, 0.5, float("nan")])
def test_the_cap_needs_a_flip_rate_below_a_half(rate) -> None:
    with pytest.raises(ValueError, match="flip_rate"):
        capped_set_aside(np.ones(2, bool), np.full(2, 0.5), np.ones(2), np.zeros(2, int), rate)


def test_with_flips_on_data_of_few_fields_no_cell_loses_a_class() -> None:
    # symmetric flips at 0.25: the ranking alone sets aside every click of the low cells
    # and both classes of middling ones; capped, each cell keeps a class of its rows whole
    # and the other in part
    data, cell = _few_fields(9000, seed=5)
    rng = np.random.default_rng(6)
    flipped = rng.random(9000) < 0.25
    labels = np.where(flipped, 1.0 - data.labels, data.labels).astype(np.float32)
    data = EncodedDataset(
        features=data.features, labels=labels, field_names=data.field_names,
        field_dims=data.field_dims,
    )
    config = SelectionConfig(ratio=0.4, device="cpu", seed=0, embed_dim=4, audit=False)
    result = select_coreset(data, config)
    noise = result.diagnostics["noise"]
    assert noise["set_aside_rows"] > 0 and noise["set_aside_capped_rows"] > 0
    picked = cell[result.rows]
    for c in range(27):
        assert set(result.labels[picked == c].tolist()) == {0.0, 1.0}, c
    # not pooled, the ranking stands
    ranked = select_coreset(data, replace(config, duplicate_prior=0.0)).diagnostics["noise"]
    assert ranked["set_aside_capped_rows"] == 0
    assert ranked["set_aside_rows"] > noise["set_aside_rows"]
