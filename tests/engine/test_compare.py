"""compare_methods, its noise, cache, summaries, paired differences and targets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nacs_engine import compare
from nacs_engine.compare import (
    QualityTargets,
    RowCache,
    check_audit_agreement,
    check_flipped_shares,
    check_targets,
    clicks_to_non_clicks,
    compare_methods,
    difference_tables,
    flip_labels,
    format_audit_agreement,
    format_checks,
    format_leave_one_dataset_out,
    format_table,
    full_data_auc,
    leave_one_dataset_out,
    options_hash,
    paired_differences,
    student_t_quantile,
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


@pytest.fixture
def selections(monkeypatch) -> list[tuple[str, int]]:
    """Every selection compare_methods makes, as (method, seed)."""
    made: list[tuple[str, int]] = []
    select = compare._select

    def counting(train, config, teachers):
        made.append((config.method, config.seed))
        return select(train, config, teachers)

    monkeypatch.setattr(compare, "_select", counting)
    return made


def test_each_coreset_is_selected_once_and_scored_by_every_family(splits, selections) -> None:
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
        evaluators=["deepfm", "logistic"],
        dataset_name="tiny",
        progress=lambda *args: calls.append(args),
    )
    assert selections == [("stratified", 0), ("stratified", 1)]
    assert len(rows) == 2 * 2 * (1 + 1)
    assert calls[-1][0] == calls[-1][1] == len(rows)
    full = {(r["seed"], r["evaluator"]): r for r in rows if r["method"] == "full"}
    assert set(full) == {(0, "deepfm"), (0, "logistic"), (1, "deepfm"), (1, "logistic")}
    assert all(r["budget_rows"] == train.n_rows for r in full.values())
    for row in rows:
        assert row["dataset"] == "tiny" and row["noise"] == "clean" and row["flip_rate"] == 0.0
        assert 0.0 <= row["test_auc"] <= 1.0 and math.isfinite(row["test_log_loss"])
        reference = full[(row["seed"], row["evaluator"])]["test_auc"]
        assert row["recovery"] == pytest.approx(row["test_auc"] / reference)
        assert row["coreset_flipped_share"] is None
    stratified = [r for r in rows if r["method"] == "stratified"]
    assert {r["budget_rows"] for r in stratified} == {round(0.1 * train.n_rows)}
    assert stratified[0]["coreset_click_rate"] == pytest.approx(train.labels.mean(), abs=0.01)
    # One selection per seed: both families' rows carry its time and click rate.
    by_seed = {}
    for row in stratified:
        by_seed.setdefault(row["seed"], []).append(row)
    for pair in by_seed.values():
        assert [r["evaluator"] for r in pair] == ["deepfm", "logistic"]
        assert pair[0]["selection_seconds"] == pair[1]["selection_seconds"]
        assert pair[0]["coreset_click_rate"] == pair[1]["coreset_click_rate"]
        assert pair[0]["test_auc"] != pair[1]["test_auc"]


def test_families_trained_at_once_score_as_each_alone_on_one_thread(splits) -> None:
    import torch

    train, validation, test = splits
    arguments = dict(
        methods=["full", "stratified"], budgets=[0.2], seeds=[0], evaluation_options=FAST
    )
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # two lanes: the families train at once, a thread each
        together = compare_methods(
            train, validation, test, evaluators=["deepfm", "logistic"], **arguments
        )
        torch.set_num_threads(1)
        alone = [
            row
            for family in ("deepfm", "logistic")
            for row in compare_methods(train, validation, test, evaluators=[family], **arguments)
        ]
    finally:
        torch.set_num_threads(threads)

    def scores(rows):
        return sorted(
            (r["method"], r["evaluator"], r["test_auc"], r["test_log_loss"], r["best_epoch"])
            for r in rows
        )

    assert scores(together) == scores(alone)
    assert len(together) == 4


def test_rows_go_out_as_their_models_end_and_a_failure_stops_the_run(
    splits, monkeypatch
) -> None:
    train, validation, test = splits
    late = round(0.2 * train.n_rows)

    def failing(*args, **kwargs):
        options, selection = args[4], args[3]
        if options.backbone == "logistic" and selection.result.size == late:
            raise RuntimeError("the logistic model failed")
        return evaluate(*args, **kwargs)

    evaluate = compare._evaluate_selection
    monkeypatch.setattr(compare, "_evaluate_selection", failing)
    emitted: list[dict] = []
    with pytest.raises(RuntimeError, match="the logistic model failed"):
        compare_methods(
            train,
            validation,
            test,
            methods=["stratified"],
            budgets=[0.1, 0.2, 0.3],
            seeds=[0],
            evaluation_options=FAST,
            evaluators=["deepfm", "logistic"],
            on_row=emitted.append,
        )
    # the first budget's rows went out; the failure stopped the run before the third
    ended = {(r["budget"], r["evaluator"]) for r in emitted}
    assert {("10%", "deepfm"), ("10%", "logistic")} <= ended
    assert {r["budget"] for r in emitted} <= {"10%", "20%"}
    assert ("20%", "logistic") not in {(r["budget"], r["evaluator"]) for r in emitted}


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
    assert row["method"] == "nacs" and row["budget"] == "10%" and row["evaluator"] == "deepfm"
    assert row["budget_rows"] == round(0.1 * train.n_rows)
    assert row["recovery"] is None
    assert row["selection_seconds"] > 0 and row["soft_label_shift"] > 0


def test_cached_runs_are_skipped_and_a_resumed_grid_gives_the_same_rows(
    splits, selections, tmp_path
) -> None:
    train, validation, test = splits
    arguments = dict(
        methods=["random", "full"],
        budgets=[0.1],
        seeds=[0],
        evaluation_options=FAST,
        evaluators=["deepfm", "logistic"],
        noise_kind="symmetric",
        flip_rate=0.2,
    )
    path = tmp_path / "rows.jsonl"
    cache = RowCache(path, "abc")
    written: list[dict] = []

    def interrupted(row: dict) -> None:
        if len(written) == 3:  # the fourth run to end is lost
            raise KeyboardInterrupt
        cache.append(row)
        written.append(row)

    with pytest.raises(KeyboardInterrupt):
        compare_methods(
            train, validation, test, cached=cache.lookup, on_row=interrupted, **arguments
        )
    runs = {(m, e) for m in ("full", "random") for e in ("deepfm", "logistic")}
    (lost,) = runs - {(r["method"], r["evaluator"]) for r in written}
    assert selections == [("random", 0)]
    with open(path, "a") as handle:
        handle.write('{"cut short')  # a line an interruption left half written
    resumed = RowCache(path, "abc")
    assert len(resumed) == 3 and len(RowCache(path, "other")) == 0
    fresh: list[dict] = []
    rows = compare_methods(
        train, validation, test, cached=resumed.lookup, on_row=fresh.append, **arguments
    )
    # Only the lost run ran again: one evaluation, and a selection if it was random's.
    assert selections == [("random", 0)] * (1 + (lost[0] == "random"))
    assert [(r["method"], r["evaluator"]) for r in fresh] == [lost]
    assert [(r["method"], r["evaluator"]) for r in rows] == [
        ("full", "deepfm"),
        ("full", "logistic"),
        ("random", "deepfm"),
        ("random", "logistic"),
    ]
    before = {(r["method"], r["evaluator"]): r["test_auc"] for r in written}
    for row in rows:  # the cached rows come back as written
        key = (row["method"], row["evaluator"])
        assert key == lost or row["test_auc"] == before[key]
    assert rows[3]["recovery"] == pytest.approx(rows[3]["test_auc"] / rows[1]["test_auc"])
    # The same grid from scratch gives the resumed rows: nothing depends on the order of runs.
    again = compare_methods(train, validation, test, **arguments)
    for ours, theirs in zip(rows, again, strict=True):
        assert ours["test_auc"] == theirs["test_auc"]
        assert ours["coreset_flipped_share"] == theirs["coreset_flipped_share"]
    lines = [json.loads(line) for line in path.read_text().splitlines()[:3]]
    assert all(line["options_hash"] == "abc" for line in lines)


def test_options_hash_ignores_key_order() -> None:
    assert options_hash({"a": 1, "b": [1, 2]}) == options_hash({"b": [1, 2], "a": 1})
    assert options_hash({"a": 1}) != options_hash({"a": 2})
    assert len(options_hash({})) == 10


def test_summary_means_and_sample_std_over_seeds() -> None:
    rows = [
        {
            "dataset": "d",
            "noise": "clean",
            "flip_rate": 0.0,
            "evaluator": "logistic",
            "method": "random",
            "budget": "5%",
            "budget_rows": 10,
            "seed": seed,
            "test_auc": auc,
            "test_log_loss": 0.5,
            "recovery": None,
            "selection_seconds": 1.0,
        }
        for seed, auc in enumerate((0.6, 0.7, 0.8))
    ]
    rows.append(dict(rows[0], method="nacs", test_auc=0.9))
    rows.append(dict(rows[0], evaluator="deepfm", test_auc=0.5))
    summary = summarise(rows)
    assert [(s["method"], s["evaluator"]) for s in summary] == [
        ("random", "logistic"),
        ("nacs", "logistic"),
        ("random", "deepfm"),
    ]
    assert summary[0]["seeds"] == 3
    assert summary[0]["test_auc_mean"] == pytest.approx(0.7)
    assert summary[0]["test_auc_std"] == pytest.approx(0.1)
    assert summary[0]["recovery_mean"] is None
    assert summary[1]["test_auc_std"] == 0.0
    table = format_table(summary)
    lines = table.splitlines()
    assert lines[0].startswith("| dataset | noise | evaluator | budget | rows | method | test AUC")
    assert len(lines) == 5
    assert "| d | clean | logistic | 5% | 10 | random | 0.7000 ± 0.1000 |" in table


def test_summary_takes_recovery_from_the_full_row_of_the_same_seed_and_family() -> None:
    base = {"dataset": "d", "noise": "clean", "flip_rate": 0.0, "budget_rows": 10}
    rows = [
        base
        | {"evaluator": "logistic", "method": "full", "budget": "100%", "seed": 0, "test_auc": 0.8},
        base
        | {"evaluator": "deepfm", "method": "full", "budget": "100%", "seed": 0, "test_auc": 0.5},
        base
        | {"evaluator": "logistic", "method": "nacs", "budget": "5%", "seed": 0, "test_auc": 0.6},
    ]
    (nacs,) = [s for s in summarise(rows) if s["method"] == "nacs"]
    assert nacs["recovery_mean"] == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("probability", "df", "expected"),
    [
        (0.975, 1, 12.7062),
        (0.975, 2, 4.3027),
        (0.975, 3, 3.1824),
        (0.975, 4, 2.7764),
        (0.975, 9, 2.2622),
        (0.975, 30, 2.0423),
        (0.95, 1, 6.3138),
        (0.95, 10, 1.8125),
        (0.975, 100_000, 1.9600),
    ],
)
def test_student_t_quantiles(probability: float, df: int, expected: float) -> None:
    assert student_t_quantile(probability, df) == pytest.approx(expected, abs=1e-4)


def test_student_t_quantile_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="degrees_of_freedom"):
        student_t_quantile(0.975, 0)
    with pytest.raises(ValueError, match="probability"):
        student_t_quantile(0.4, 3)


def _row(
    method: str, seed: int, auc: float, loss: float = 0.5, budget: str = "5%", **fields
) -> dict:
    return {
        "dataset": "d",
        "noise": "symmetric",
        "flip_rate": 0.2,
        "evaluator": "deepfm",
        "method": method,
        "budget": budget,
        "budget_rows": {"1%": 10, "5%": 50, "10%": 100, "25%": 250, "100%": 1000}[budget],
        "seed": seed,
        "test_auc": auc,
        "test_log_loss": loss,
    } | fields


def test_paired_differences_are_taken_seed_by_seed_with_t_intervals() -> None:
    rows = [
        _row("full", 0, 0.9, budget="100%"),
        _row("nacs", 0, 0.70, 0.50),
        _row("random", 0, 0.60, 0.55),
        _row("stratified", 0, 0.75),
        _row("nacs", 1, 0.62, 0.60),
        _row("random", 1, 0.64, 0.50),
        _row("stratified", 1, 0.60),
        _row("nacs", 2, 0.66, 0.40),
        _row("random", 2, 0.62, 0.45),  # no stratified run for seed 2
        _row("nacs", 0, 0.5, budget="10%"),  # no baseline at 10%
        _row("nacs", 0, 0.9, evaluator="logistic"),  # another family: not paired with deepfm
        _row("balanced", 0, 0.7),
        _row("balanced", 1, 0.6),
    ]
    differences = paired_differences(rows)
    assert [(d["method"], d["baseline"], d["seeds"]) for d in differences] == [
        ("nacs", "random", 3),
        ("nacs", "stratified", 2),
        ("nacs", "balanced", 2),
        ("stratified", "random", 2),
        ("balanced", "random", 2),
    ]
    against_random = np.array([0.10, -0.02, 0.04])
    first = differences[0]
    assert first["mean"] == pytest.approx(against_random.mean())
    assert first["std"] == pytest.approx(np.std(against_random, ddof=1))
    stderr = np.std(against_random, ddof=1) / math.sqrt(3)
    assert first["stderr"] == pytest.approx(stderr)
    assert first["ci_low"] == pytest.approx(0.04 - 4.302653 * stderr, abs=1e-6)
    assert first["ci_high"] == pytest.approx(0.04 + 4.302653 * stderr, abs=1e-6)
    assert first["wins"] == 2 and first["evaluator"] == "deepfm" and first["budget_rows"] == 50
    assert (
        differences[1]["mean"] == pytest.approx((-0.05 + 0.02) / 2) and differences[1]["wins"] == 1
    )
    losses = paired_differences(rows, metric="test_log_loss", baselines=["random"])
    assert losses[0]["mean"] == pytest.approx((-0.05 + 0.10 - 0.05) / 3)
    assert losses[0]["wins"] == 2  # a lower log loss wins
    single = paired_differences([_row("nacs", 0, 0.7), _row("random", 0, 0.6)])
    assert single[0]["stderr"] is None and single[0]["ci_low"] is None


def test_difference_tables_put_auc_and_log_loss_side_by_side() -> None:
    rows = [
        _row("nacs", 0, 0.70, 0.50),
        _row("random", 0, 0.60, 0.55),
        _row("nacs", 1, 0.62, 0.60),
        _row("random", 1, 0.64, 0.50),
        _row("nacs", 2, 0.66, 0.40),
        _row("random", 2, 0.62, 0.47),
        _row("nacs", 0, 0.70, budget="1%"),
        _row("random", 0, 0.60, budget="1%"),
    ]
    table = difference_tables(rows).splitlines()
    assert table[0] == "d, symmetric 20%, deepfm: method less baseline, seed by seed"
    assert table[2].startswith(
        "| budget | method | baseline | seeds | test AUC difference (mean ± s.e.)"
    )
    assert table[4].startswith("| 1% | nacs | random | 1 | +0.1000 | - | 1/1 |")
    assert table[5] == (
        "| 5% | nacs | random | 3 | +0.0400 ± 0.0346 | [-0.1090, +0.1890] | 2/3 "
        "| -0.0067 ± 0.0536 | [-0.2375, +0.2241] | 2/3 |"
    )


def test_targets_hold_nacs_against_random_per_setting() -> None:
    def pair(seed, nacs_auc, random_auc, nacs_loss, random_loss, **fields):
        return [
            _row("nacs", seed, nacs_auc, nacs_loss, **fields),
            _row("random", seed, random_auc, random_loss, **fields),
        ]

    rows = []
    for seed, gain in enumerate((0.03, 0.0, 0.01)):  # mean +0.0133: above the noisy margin at 5%
        rows += pair(seed, 0.7 + gain, 0.7, 0.50, 0.495)  # log loss +0.005: within the limit
        rows += pair(seed, 0.7 + gain / 2, 0.7, 0.50, 0.48, budget="10%")  # +0.005 < 0.01
        rows += pair(seed, 0.7 - 0.001, 0.7, 0.50, 0.50, noise="clean", flip_rate=0.0)
        rows += pair(seed, 0.7 + 0.005, 0.7, 0.5, 0.5, budget="25%")  # 25%: the margin is 0
    checks = check_targets(rows)
    found = {(c["noise"], c["budget"]): c for c in checks}
    assert list(found) == [
        ("clean", "5%"),
        ("symmetric", "5%"),
        ("symmetric", "10%"),
        ("symmetric", "25%"),
    ]
    assert (
        found[("clean", "5%")]["auc_target"] == 0.0 and found[("clean", "5%")]["auc_pass"] is False
    )
    assert found[("symmetric", "5%")]["auc_target"] == 0.01
    assert found[("symmetric", "5%")]["auc"]["mean"] == pytest.approx(0.04 / 3)
    assert found[("symmetric", "5%")]["auc_pass"] is True
    assert found[("symmetric", "5%")]["log_loss_pass"] is True
    assert found[("symmetric", "10%")]["auc_pass"] is False
    assert found[("symmetric", "10%")]["log_loss_pass"] is False
    assert (
        found[("symmetric", "25%")]["auc_target"] == 0.0 and found[("symmetric", "25%")]["auc_pass"]
    )
    text = format_checks(checks)
    assert "| d | symmetric 20% | deepfm | 10% | 3 | +0.0067 [" in text
    assert text.endswith("5 of 8 checks pass")


def test_flipped_share_targets_follow_the_full_data_auc() -> None:
    rows = [
        _row("full", 0, 0.80, budget="100%", noise="clean", flip_rate=0.0),
        _row("full", 1, 0.74, budget="100%", noise="clean", flip_rate=0.0),
        _row("full", 0, 0.90, budget="100%", noise="clean", flip_rate=0.0, evaluator="logistic"),
        _row("full", 0, 0.70, budget="100%", dataset="e", noise="clean", flip_rate=0.0),
    ]
    for dataset in ("d", "e"):
        for seed, share in ((0, 0.08), (1, 0.10)):
            for evaluator in ("deepfm", "logistic"):
                rows.append(
                    _row(
                        "nacs",
                        seed,
                        0.7,
                        dataset=dataset,
                        evaluator=evaluator,
                        coreset_flipped_share=share,
                        data_flipped_share=0.2,
                    )
                )
            rows.append(
                _row(
                    "nacs",
                    seed,
                    0.7,
                    dataset=dataset,
                    budget="25%",
                    coreset_flipped_share=0.3,
                    data_flipped_share=0.2,
                )
            )
    assert full_data_auc(rows)[("d", "deepfm")] == {"mean": pytest.approx(0.77), "seeds": 2}
    checks = check_flipped_shares(rows)
    assert [(c["dataset"], c["budget"]) for c in checks] == [("d", "5%"), ("e", "5%")]
    d, e = checks
    assert (
        d["seeds"] == 2
        and d["coreset_share"] == pytest.approx(0.09)
        and d["ratio"] == pytest.approx(0.45)
    )
    assert d["full_auc"] == pytest.approx(0.77) and d["target"] == 0.5 and d["passed"] is True
    assert e["full_auc"] == pytest.approx(0.70) and e["target"] == 0.8 and e["passed"] is True
    strict = check_flipped_shares(rows, targets=QualityTargets(flipped_ratio_learnable=0.4))
    assert strict[0]["passed"] is False and strict[1]["passed"] is True
    assert "| d | 20% | 5% | 2 | 0.090 | 0.200 | 0.45 | 0.7700 | <= 0.5x | yes |" in format_checks(
        [], checks
    )


def test_the_audit_is_held_against_the_offline_difference_of_its_family() -> None:
    def audited(seed: int, auc: float, audit: float, verdict: str, **fields) -> dict:
        return _row(
            "nacs", seed, auc, audit_auc_difference=audit, audit_family_verdict=verdict, **fields
        )

    rows = [
        audited(0, 0.70, 0.03, "better"),
        audited(1, 0.66, 0.01, "level"),
        _row("random", 0, 0.65),
        _row("random", 1, 0.64),
        # logistic: the audit says better, the offline evaluation says worse.
        audited(0, 0.60, 0.02, "better", evaluator="logistic"),
        audited(1, 0.60, -0.01, "level", evaluator="logistic"),
        _row("random", 0, 0.62, evaluator="logistic"),
        _row("random", 1, 0.61, evaluator="logistic"),
        # dcnv2: the audit has no such family, so no check.
        _row("nacs", 0, 0.7, evaluator="dcnv2", audit_auc_difference=None),
        _row("random", 0, 0.6, evaluator="dcnv2"),
        # dataset e: three seeds gain 0.04-0.06 offline, an interval above zero.
        *(
            audited(seed, 0.70 + gain, 0.01, "better", dataset="e")
            for seed, gain in enumerate((0.04, 0.05, 0.06))
        ),
        *(_row("random", seed, 0.70, dataset="e") for seed in range(3)),
    ]
    checks = check_audit_agreement(rows)
    assert [(c["dataset"], c["evaluator"]) for c in checks] == [
        ("d", "deepfm"),
        ("d", "logistic"),
        ("e", "deepfm"),
    ]
    deepfm, logistic, settled = checks
    # Two seeds of d leave intervals that hold zero; e's three agree on the sign.
    assert not deepfm["settled"] and not logistic["settled"]
    assert settled["settled"] and settled["agree"] and settled["offline"] == pytest.approx(0.05)
    assert deepfm["audit"] == pytest.approx(0.02) and deepfm["offline"] == pytest.approx(0.035)
    assert deepfm["verdicts"] == {"better": 1, "level": 1} and deepfm["agree"] is True
    assert logistic["audit"] == pytest.approx(0.005) and logistic["offline"] == pytest.approx(
        -0.015
    )
    assert logistic["agree"] is False
    text = format_audit_agreement(checks)
    assert (
        "| d | symmetric 20% | logistic | 5% | 2 | +0.0050 | better 1, level 1 | -0.0150 | no |"
        in text
    )
    assert (
        "(less random) on 2 of 3 settings (67%); of its 5 decisive verdicts (better or worse), "
        "1 contradict" in text
    )
    assert (
        "Of the 1 settings where the offline 95% interval excludes zero, the audit agrees on 1."
        in text
    )
    assert format_audit_agreement([]) == "No audited rows."
    # Where the rows hold stratified sampling, the audit's own baseline, it is the default;
    # elsewhere random (a failed run of it pairs with nothing).
    stratified = [
        _row("stratified", 0, 0.69, evaluator="logistic"),
        _row("stratified", 1, 0.68, evaluator="logistic"),
        _row("stratified", 0, None, dataset="e"),
    ]
    checks = check_audit_agreement(rows + stratified)
    assert [c["baseline"] for c in checks] == ["random", "stratified", "random"]
    assert checks[1]["offline"] == pytest.approx(-0.085) and checks[1]["agree"] is False
    assert checks[0] == check_audit_agreement(rows)[0]
    assert [c["baseline"] for c in check_audit_agreement(rows + stratified, baseline="random")] \
        == ["random"] * 3
    assert "(less stratified) on 0 of 1" in format_audit_agreement([checks[1]])
    assert "(less random and stratified) on 2 of 3" in format_audit_agreement(checks)


def test_leave_one_dataset_out_chooses_on_the_other_datasets() -> None:
    # AUC gains over random per dataset: "a" wins on d and e, "b" only on f.
    gains = {"d": {"a": 0.03, "b": 0.01}, "e": {"a": 0.02, "b": 0.01}, "f": {"a": -0.01, "b": 0.05}}
    rows = []
    for dataset, by in gains.items():
        for seed in (0, 1):
            rows.append(_row("random", seed, 0.6, dataset=dataset))
            for candidate, gain in by.items():
                rows.append(_row(candidate, seed, 0.6 + gain, dataset=dataset))
    rows.append(_row("a", 0, 0.9, dataset="d", budget="10%"))  # b lacks it: left out
    result = leave_one_dataset_out(rows, ["a", "b"], default="a")
    assert result["settings"] == {"d": 1, "e": 1, "f": 1}
    assert result["scores"]["a"]["f"] == pytest.approx(-0.01)
    assert result["below"]["a"] == {"d": 0, "e": 0, "f": 1}
    held = {h["dataset"]: h for h in result["held_out"]}
    # Held out d: on e and f, b averages 0.03 against a's 0.005.
    assert held["d"]["chosen"] == "b" and held["d"]["chosen_score"] == pytest.approx(0.01)
    assert held["d"]["default_score"] == pytest.approx(0.03) and held["d"]["best"] == "a"
    assert held["f"]["chosen"] == "a" and held["f"]["best"] == "b"
    text = format_leave_one_dataset_out(result)
    assert "| a | +0.0300 (0 below) | +0.0200 (0 below) | -0.0100 (1 below) |" in text
    assert "| f | a | -0.0100 | -0.0100 | b |" in text


def test_noise_kinds_are_recorded_and_clicks_lose_exactly_their_share(splits) -> None:
    train, validation, test = splits
    rows = compare_methods(
        train,
        validation,
        test,
        methods=["random", "full"],
        budgets=[50],
        seeds=[4],
        evaluation_options=FAST,
        evaluators=["logistic"],
        noise_kind="clicks-to-non-clicks",
        flip_rate=0.25,
    )
    clicks = int(train.labels.sum())
    lost = round(0.25 * clicks)
    assert [(r["method"], r["budget"], r["budget_rows"]) for r in rows] == [
        ("full", "100%", train.n_rows),
        ("random", "50", 50),
    ]
    for row in rows:
        assert row["noise"] == "clicks-to-non-clicks" and row["flip_rate"] == 0.25
        assert row["data_flipped_share"] == pytest.approx(lost / train.n_rows)
        assert row["data_click_rate"] == pytest.approx((clicks - lost) / train.n_rows)
        assert 0.0 <= row["coreset_flipped_share"] <= 1.0
    assert "flipped in coreset" in format_table(summarise(rows))
    assert "| clicks-to-non-clicks 25% | logistic |" in format_table(summarise(rows))


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


def test_clicks_to_non_clicks_turns_only_clicks_into_zeros() -> None:
    labels = np.array([1, 0, 0, 1, 0] * 20, dtype=np.float32)  # 40 clicks
    noisy, flipped = clicks_to_non_clicks(labels, 0.2, seed=1)
    assert flipped.sum() == 8 and noisy.sum() == 32
    assert np.all(labels[flipped] == 1) and np.all(noisy[flipped] == 0)
    np.testing.assert_array_equal(noisy[~flipped], labels[~flipped])
    again, _ = clicks_to_non_clicks(labels, 0.2, seed=1)
    other, _ = clicks_to_non_clicks(labels, 0.2, seed=2)
    np.testing.assert_array_equal(noisy, again)
    assert not np.array_equal(noisy, other)
    most, _ = clicks_to_non_clicks(labels, 0.9, seed=1)
    assert most.sum() == 4
    with pytest.raises(ValueError, match="flip_rate"):
        clicks_to_non_clicks(labels, 1.0, seed=1)


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
        ({"noise_kind": "burst"}, "noise_kind"),
        ({"evaluators": ["deepfm", "forest"]}, "evaluators"),
        ({"evaluators": ["logistic", "logistic"]}, "evaluators"),
        ({"evaluators": "logistic"}, "evaluators"),
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
