"""compare_methods, summarise and format_table on tiny synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nacs_engine.compare import (
    compare_methods,
    flip_labels,
    format_differences,
    format_table,
    paired_differences,
    summarise,
)
from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.data.synthetic import make_synthetic_ctr
from nacs_engine.evaluate import EvaluationOptions, split_rows

FAST = EvaluationOptions(embed_dim=4, max_epochs=2, patience=1)
SMALL_NACS = {"embed_dim": 4, "mc_passes": 2, "rounds": 2}


@pytest.fixture(scope="module")
def splits() -> tuple[EncodedDataset, EncodedDataset, EncodedDataset]:
    data = make_synthetic_ctr(
        1200, cardinalities=(20, 50, 8, 30, 5), click_rate=0.3, flip_rate=0.0, seed=3
    ).dataset
    train, validation, test = split_rows(data.n_rows, seed=0)
    return data.subset(train), data.subset(validation), data.subset(test)


def test_rows_cover_every_run_with_recovery_against_full(splits) -> None:
    train, validation, test = splits
    calls: list[tuple[int, int, str]] = []
    rows = compare_methods(
        train,
        validation,
        test,
        methods=["full", "stratified"],
        budgets=[0.1],
        seeds=[0, 1],
        evaluation_options=FAST,
        dataset_name="tiny",
        progress=lambda *args: calls.append(args),
    )
    assert len(rows) == 2 * (1 + 1)
    assert calls[-1][0] == calls[-1][1] == len(rows)
    full = {r["seed"]: r for r in rows if r["method"] == "full"}
    assert set(full) == {0, 1} and all(r["budget_rows"] == train.n_rows for r in full.values())
    for row in rows:
        assert row["dataset"] == "tiny" and row["flip_rate"] == 0.0
        assert 0.0 <= row["test_auc"] <= 1.0 and math.isfinite(row["test_log_loss"])
        assert row["recovery"] == pytest.approx(row["test_auc"] / full[row["seed"]]["test_auc"])
        assert row["coreset_flipped_share"] is None
    assert {r["budget_rows"] for r in rows if r["method"] != "full"} == {round(0.1 * train.n_rows)}
    stratified = [r for r in rows if r["method"] == "stratified" and r["budget"] == "10%"]
    assert stratified[0]["coreset_click_rate"] == pytest.approx(train.labels.mean(), abs=0.01)


def test_nacs_rows_carry_soft_labels_and_selection_time(splits) -> None:
    train, validation, test = splits
    (row,) = compare_methods(
        train,
        validation,
        test,
        methods=["nacs"],
        budgets=[0.1],
        seeds=[0],
        selection_options=SMALL_NACS,
        evaluation_options=FAST,
    )
    assert row["method"] == "nacs" and row["budget"] == "10%"
    assert row["budget_rows"] == round(0.1 * train.n_rows)
    assert row["recovery"] is None
    assert row["selection_seconds"] > 0 and row["soft_label_shift"] > 0


def test_summary_means_and_sample_std_over_seeds() -> None:
    rows = [
        {
            "dataset": "d",
            "flip_rate": 0.0,
            "method": "random",
            "budget": "5%",
            "budget_rows": 10,
            "test_auc": auc,
            "test_log_loss": 0.5,
            "recovery": None,
            "selection_seconds": 1.0,
        }
        for auc in (0.6, 0.7, 0.8)
    ]
    rows.append(dict(rows[0], method="nacs", test_auc=0.9))
    summary = summarise(rows)
    assert [s["method"] for s in summary] == ["random", "nacs"]
    assert summary[0]["seeds"] == 3
    assert summary[0]["test_auc_mean"] == pytest.approx(0.7)
    assert summary[0]["test_auc_std"] == pytest.approx(0.1)
    assert summary[0]["recovery_mean"] is None
    assert summary[1]["test_auc_std"] == 0.0
    table = format_table(summary)
    lines = table.splitlines()
    assert lines[0].startswith("| dataset | noise | budget | rows | method | test AUC")
    assert len(lines) == 4
    assert "0.7000 ± 0.1000" in table and "| - |" in table


def test_paired_differences_are_taken_seed_by_seed() -> None:
    def row(method: str, seed: int, auc: float, budget: str = "5%") -> dict:
        return {"dataset": "d", "flip_rate": 0.0, "method": method, "budget": budget, "seed": seed, "test_auc": auc}

    rows = [
        row("full", 0, 0.9, "100%"),
        row("nacs", 0, 0.70), row("random", 0, 0.60), row("stratified", 0, 0.75),
        row("nacs", 1, 0.62), row("random", 1, 0.64), row("stratified", 1, 0.60),
        row("nacs", 2, 0.66), row("random", 2, 0.62),  # no stratified run for seed 2
        row("nacs", 0, 0.5, "10%"),  # no baseline at 10%
        row("balanced", 0, 0.7),  # a baseline itself: not compared
    ]
    differences = paired_differences(rows)
    assert [(d["method"], d["baseline"], d["seeds"]) for d in differences] == [
        ("nacs", "random", 3),
        ("nacs", "stratified", 2),
    ]
    against_random = np.array([0.10, -0.02, 0.04])
    assert differences[0]["mean"] == pytest.approx(against_random.mean())
    assert differences[0]["std"] == pytest.approx(np.std(against_random, ddof=1))
    assert differences[0]["stderr"] == pytest.approx(np.std(against_random, ddof=1) / math.sqrt(3))
    assert differences[0]["wins"] == 2
    assert differences[1]["mean"] == pytest.approx((-0.05 + 0.02) / 2) and differences[1]["wins"] == 1
    table = format_differences(differences)
    assert "| d | 0% | 5% | nacs | random | +0.0400 ± 0.0346 | 2/3 |" in table


def test_flips_touch_training_labels_only_and_are_counted(splits) -> None:
    train, validation, test = splits
    rows = compare_methods(
        train,
        validation,
        test,
        methods=["random", "full"],
        budgets=[50],
        seeds=[4],
        evaluation_options=FAST,
        flip_rate=0.25,
    )
    assert [(r["method"], r["budget"], r["budget_rows"]) for r in rows] == [
        ("full", "100%", train.n_rows),
        ("random", "50", 50),
    ]
    for row in rows:
        assert row["data_flipped_share"] == pytest.approx(0.25, abs=1 / train.n_rows)
        assert 0.0 <= row["coreset_flipped_share"] <= 1.0
    assert "flipped in coreset" in format_table(summarise(rows))


def test_flip_labels_is_exact_and_seeded() -> None:
    labels = np.array([0, 1] * 50, dtype=np.float32)
    noisy, flipped = flip_labels(labels, 0.2, seed=1)
    assert flipped.sum() == 20
    np.testing.assert_array_equal(noisy[flipped], 1 - labels[flipped])
    np.testing.assert_array_equal(noisy[~flipped], labels[~flipped])
    again, _ = flip_labels(labels, 0.2, seed=1)
    other, _ = flip_labels(labels, 0.2, seed=2)
    np.testing.assert_array_equal(noisy, again)
    assert not np.array_equal(noisy, other)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"methods": ["nacs", "greedy"]}, "methods"),
        ({"methods": []}, "methods"),
        ({"budgets": [1.5]}, "budgets"),
        ({"budgets": [0]}, "budgets"),
        ({"budgets": [True]}, "budgets"),
        ({"seeds": [-1]}, "seeds"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"flip_rate": 0.5}, "flip_rate"),
        ({"selection_options": {"method": "random"}}, "selection_options"),
        ({"selection_options": {"rounds": 0}}, "rounds"),
        ({"selection_options": {"colour": 1}}, "colour"),
        ({"evaluation_options": {"max_epochs": 1}}, "evaluation_options"),
    ],
)
def test_bad_arguments_name_the_argument(splits, arguments, named) -> None:
    train, validation, test = splits
    with pytest.raises(ValueError, match=named):
        compare_methods(train, validation, test, **arguments)


def test_splits_must_share_the_encoding(splits) -> None:
    train, validation, test = splits
    other = make_synthetic_ctr(100, cardinalities=(3, 3), seed=0).dataset
    with pytest.raises(ValueError, match="test"):
        compare_methods(train, validation, other)
