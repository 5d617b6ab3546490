"""NaCS (teacher, set-aside, selection, soft labels) through select_coreset and its helpers."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import nacs_engine.nacs as nacs_module
from nacs_engine import SelectionCancelled, select_coreset
from nacs_engine.baselines import class_quota
from nacs_engine.config import EMBEDDINGS, SelectionConfig
from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.data.synthetic import make_synthetic_ctr
from nacs_engine.denoise.noise_estimate import (
    MAX_SET_ASIDE_SHARE,
    NoiseEstimate,
    at_flip_rate,
    flip_rate_lower_bound,
)
from nacs_engine.errors import DataError
from nacs_engine.nacs import (
    BALANCED_LABEL_MIX,
    LABEL_MIX,
    MAX_LOGIT_SHIFT,
    RARE_CLICK_RATE,
    _coverage,
    _draw_across,
    _probability_strata,
    _weights,
    aside_share,
    narrow_trust,
    resolved_class_balance,
    resolved_label_mix,
    run_nacs,
    shift_to_mean,
    trusted_auc,
)
from nacs_engine.teacher import automatic_folds


@pytest.fixture(scope="module")
def generated():
    return _generate(4000, click_rate=0.3, flip_rate=0.2, signal=2.0, seed=1)


def _generate(rows: int, *, click_rate: float, flip_rate: float, signal: float, seed: int):
    """Generated click data over six fields of 5 to 100 values."""
    return make_synthetic_ctr(
        rows,
        cardinalities=(20, 50, 8, 100, 30, 5),
        click_rate=click_rate,
        flip_rate=flip_rate,
        signal=signal,
        seed=seed,
    )


@pytest.fixture(scope="module")
def data(generated) -> EncodedDataset:
    return generated.dataset


def _config(**options: object) -> SelectionConfig:
    values = {"size": 300, "device": "cpu", "seed": 0, "embed_dim": 4, "audit": False} | options
    return SelectionConfig(**values)


def test_nacs_returns_k_distinct_rows_with_soft_labels_and_diagnostics(
    data: EncodedDataset,
) -> None:
    calls: list[tuple[str, float, str]] = []
    result = select_coreset(data, _config(), progress=lambda *args: calls.append(args))
    assert result.size == 300 and np.unique(result.rows).shape[0] == 300
    assert np.all(np.diff(result.rows) > 0) and result.rows.dtype == np.int64
    np.testing.assert_array_equal(result.labels, data.labels[result.rows])
    assert result.weights.dtype == np.float32 and np.allclose(result.weights, 1.0)
    assert np.all((result.soft_labels >= 0) & (result.soft_labels <= 1))
    assert not np.array_equal(result.soft_labels, result.labels)
    assert np.all((result.uncertainty >= 0) & (result.uncertainty <= 1))
    diagnostics = json.loads(json.dumps(result.diagnostics))
    assert set(diagnostics["phase_seconds"]) == {"selecting", "denoising"}
    assert diagnostics["coreset_rows"] == 300 and diagnostics["candidate_rows"] == data.n_rows
    assert diagnostics["coreset_clicks"] == int(result.labels.sum())
    change = np.abs(result.soft_labels.astype(np.float64) - result.labels).mean()
    assert diagnostics["soft_label_mean_abs_change"] == pytest.approx(change, abs=1e-6)
    noise = diagnostics["noise"]
    assert 0.0 < noise["flip_rate"] < 0.5
    assert noise["set_aside_rows"] == noise["set_aside_positive"] + noise["set_aside_negative"] > 0
    # the set-aside reads the wrong shares at the flip rate less two standard errors
    lower = flip_rate_lower_bound(estimate_from(noise))
    assert noise["set_aside_flip_rate"] == pytest.approx(lower) and 0.0 < lower < noise["flip_rate"]
    shares = at_flip_rate(estimate_from(noise), lower, float(data.labels.mean()))
    for name, given, share in (
        ("positive", 1.0, shares.wrong_share_positive),
        ("negative", 0.0, shares.wrong_share_negative),
    ):
        rows = int((data.labels == given).sum())
        # three times the wrong share of the class, but never more than 90% of it
        expected = min(round(3.0 * share * rows), int(MAX_SET_ASIDE_SHARE * rows))
        assert noise[f"set_aside_{name}"] == expected
        assert noise[f"set_aside_wrong_share_{name}"] == pytest.approx(share)
    for name, given in (("positive", 1.0), ("negative", 0.0)):
        if name in noise["uncertainty_cuts"]:
            kept = result.uncertainty[result.labels == given]
            assert np.all(kept <= noise["uncertainty_cuts"][name] + 1e-6)
    assert diagnostics["teacher"]["folds"] == automatic_folds(data.n_rows) == 5
    assert len(diagnostics["teacher"]["epochs"]) == 5
    assert diagnostics["selection"]["strategy"] == "coverage"
    assert {phase for phase, _, _ in calls} == {"selecting", "denoising"}
    for phase in ("selecting", "denoising"):
        fractions = [fraction for name, fraction, _ in calls if name == phase]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert len(calls) > 5


def estimate_from(noise: dict) -> NoiseEstimate:
    return NoiseEstimate(**{name: noise[name] for name in NoiseEstimate.__dataclass_fields__})


def test_set_aside_rows_are_never_picked_and_flipped_rows_are_fewer(generated, data) -> None:
    result = select_coreset(data, _config(size=400))
    no_denoise = select_coreset(data, _config(size=400, method="nacs-no-denoise"))
    assert no_denoise.diagnostics["noise"]["set_aside_rows"] == 0
    assert generated.flipped[result.rows].mean() < generated.flipped[no_denoise.rows].mean()
    assert generated.flipped[result.rows].mean() < 0.5 * generated.flipped.mean()


def test_same_seed_same_rows_and_different_seed_different_rows(data: EncodedDataset) -> None:
    first = select_coreset(data, _config(seed=7))
    second = select_coreset(data, _config(seed=7))
    other = select_coreset(data, _config(seed=8))
    np.testing.assert_array_equal(first.rows, second.rows)
    np.testing.assert_array_equal(first.soft_labels, second.soft_labels)
    assert not np.array_equal(first.rows, other.rows)


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_facility_location_on_each_embedding(data: EncodedDataset, embedding: str) -> None:
    result = select_coreset(
        data, _config(selection="facility-location", embedding=embedding, weighting="craig")
    )
    assert result.size == 300 and np.unique(result.rows).shape[0] == 300
    selection = result.diagnostics["selection"]
    assert selection["embedding"] == embedding and selection["objective"] > 0
    assert selection["effective_sample_share"] >= 0.5 - 1e-9
    assert result.weights.mean() == pytest.approx(1.0, abs=1e-5)


def test_keep_click_rate_shifts_the_soft_labels_back_to_the_teachers_mean(
    data: EncodedDataset,
) -> None:
    moved = select_coreset(data, _config(keep_click_rate=False))
    kept = select_coreset(data, _config())
    np.testing.assert_array_equal(kept.rows, moved.rows)
    # The uncertainty column is the teacher's probability that the given label is wrong.
    teacher = np.where(kept.labels > 0.5, 1.0 - kept.uncertainty, kept.uncertainty)
    target = np.average(teacher, weights=kept.weights)
    # With 20% flips the correction lowers the mean; the shift brings it back.
    assert np.average(moved.soft_labels, weights=moved.weights) < target - 0.01
    assert np.average(kept.soft_labels, weights=kept.weights) == pytest.approx(target, abs=1e-4)
    assert kept.diagnostics["soft_label_logit_shift"] > 0.0
    assert moved.diagnostics["soft_label_logit_shift"] == 0.0
    for label in (0.0, 1.0):
        members = kept.labels == label
        order = np.argsort(moved.soft_labels[members], kind="stable")
        assert np.all(np.diff(kept.soft_labels[members][order]) >= -1e-6)


def test_shift_to_mean_reaches_the_target_or_its_bound() -> None:
    teacher = np.array([0.0, 0.1, 0.3, 0.6, 1.0])
    given = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    weights = np.array([1.0, 2.0, 1.0, 1.0, 1.0])
    shifted, shift = shift_to_mean(teacher, given, 0.2, weights, 0.5)
    soft = 0.2 * given + 0.8 * shifted
    assert np.average(soft, weights=weights) == pytest.approx(0.5, abs=1e-6) and shift > 0
    assert np.all(np.diff(shifted) > 0)
    unchanged, none = shift_to_mean(teacher, given, 1.0, weights, 0.5)
    np.testing.assert_array_equal(unchanged, teacher)
    assert none == 0.0
    _, bound = shift_to_mean(teacher, given, 0.2, weights, 0.0)
    assert bound == pytest.approx(-MAX_LOGIT_SHIFT, abs=1e-6)


def test_random_selection_and_the_denoised_random_method(data: EncodedDataset) -> None:
    random = select_coreset(data, _config(selection="random"))
    baseline = select_coreset(data, _config(method="denoised-random"))
    assert baseline.diagnostics["selection"]["strategy"] == "random"
    np.testing.assert_array_equal(random.rows, baseline.rows)


def test_ablations_and_label_mix(data: EncodedDataset) -> None:
    no_relabel = select_coreset(data, _config(method="nacs-no-relabel"))
    np.testing.assert_array_equal(no_relabel.soft_labels, no_relabel.labels)
    assert no_relabel.diagnostics["noise"]["set_aside_rows"] > 0
    given = select_coreset(data, _config(label_mix=1.0))
    np.testing.assert_array_equal(given.soft_labels, given.labels)
    teacher = select_coreset(data, _config(label_mix=0.0, keep_click_rate=False))
    half = select_coreset(data, _config(label_mix=0.5, keep_click_rate=False))
    np.testing.assert_allclose(
        half.soft_labels, 0.5 * teacher.labels + 0.5 * teacher.soft_labels, atol=1e-6
    )


def test_the_flip_correction_brings_soft_labels_toward_the_clean_click_probability(
    generated, data: EncodedDataset
) -> None:
    options = {"size": 400, "label_mix": 0.0, "keep_click_rate": False}
    corrected = select_coreset(data, _config(**options))
    as_read = select_coreset(data, _config(**options, flip_correction=False))
    np.testing.assert_array_equal(corrected.rows, as_read.rows)
    rate = corrected.diagnostics["noise"]["correction_flip_rate"]
    assert 0.0 < rate < corrected.diagnostics["noise"]["flip_rate"]
    assert as_read.diagnostics["noise"]["correction_flip_rate"] == 0.0
    expected = np.clip((as_read.soft_labels - rate) / (1.0 - 2.0 * rate), 0.0, 1.0)
    np.testing.assert_allclose(corrected.soft_labels, expected, atol=1e-6)
    truth = generated.click_probability[corrected.rows]
    assert np.abs(corrected.soft_labels - truth).mean() < np.abs(as_read.soft_labels - truth).mean()


def test_a_teacher_that_cannot_tell_the_labels_apart_is_not_trusted(data: EncodedDataset) -> None:
    rng = np.random.default_rng(0)
    noise = replace(data, labels=(rng.random(data.n_rows) < 0.3).astype(np.float32))
    result = select_coreset(noise, _config(teacher_folds=2))
    teacher = result.diagnostics["teacher"]
    assert teacher["trusted"] is False and abs(teacher["signal_auc"] - 0.5) < 0.03
    assert result.diagnostics["noise"]["set_aside_rows"] == 0
    assert result.diagnostics["selection"]["strategy"] == "random"
    np.testing.assert_array_equal(result.soft_labels, result.labels)
    assert int(result.labels.sum()) == class_quota(noise.labels, 300, "stratified")[0]
    trusting = select_coreset(noise, _config(teacher_folds=2, min_teacher_auc=0.0))
    assert trusting.diagnostics["teacher"]["trusted"] is True
    assert trusting.diagnostics["selection"]["strategy"] == "coverage"
    assert not np.array_equal(trusting.soft_labels, trusting.labels)
    signal = select_coreset(data, _config(teacher_folds=2)).diagnostics["teacher"]
    assert signal["trusted"] is True and signal["signal_auc"] > 0.6


def test_a_narrow_trust_is_under_three_standard_errors_with_most_of_a_class_set_aside() -> None:
    given = np.array([1.0] * 4 + [0.0] * 6)
    aside = np.array([True, True, True, False] + [False] * 5 + [True])
    assert aside_share(aside, given > 0.5) == 0.75
    assert aside_share(aside, given <= 0.5) == pytest.approx(1 / 6)
    assert aside_share(aside, np.zeros(10, dtype=bool)) == 0.0
    assert narrow_trust(2.3, 0.75, 0.1) is True
    assert narrow_trust(2.3, 0.1, 0.6) is True
    assert narrow_trust(2.3, 0.5, 0.5) is False  # half or less of each class
    assert narrow_trust(3.0, 0.9, 0.9) is False  # three standard errors or more
    assert narrow_trust(None, 0.9, 0.9) is False  # not trusted, or not measured


def test_on_small_data_a_teacher_must_beat_what_chance_reaches() -> None:
    assert trusted_auc(np.array([0.0, 1.0] * 150), 0.53) == pytest.approx(
        0.5 + 2 * np.sqrt(301 / (12 * 150 * 150))
    )
    many = np.array([0.0, 1.0] * 500_000)
    assert trusted_auc(many, 0.53) == 0.53 and trusted_auc(many, 0.0) == 0.0
    assert trusted_auc(np.array([0.0] * 299 + [1.0]), 0.53) > 0.9  # one click: never trusted
    assert trusted_auc(np.zeros(10), 0.53) == 0.53


def test_with_rare_clicks_and_flips_a_teacher_above_chance_is_trusted(monkeypatch) -> None:
    # 1.5% clicks, 20% of all labels flipped: 14 of 15 given clicks are flips, so even a
    # teacher that ranks the clean labels well tells the given ones apart barely (AUC about
    # 0.52, under the old fixed floor of 0.53); that is still four to five standard errors of
    # a chance AUC above 0.5 on 20,000 rows, and trusting it keeps the flips out
    generated = _generate(20_000, click_rate=0.015, flip_rate=0.2, signal=3.0, seed=3)
    flipped = generated.flipped
    for seed in (0, 1):
        result = select_coreset(generated.dataset, _config(size=None, ratio=0.05, seed=seed))
        teacher = result.diagnostics["teacher"]
        assert teacher["min_signal_auc"] < teacher["signal_auc"] < 0.53
        assert teacher["trusted"] is True
        # four to five standard errors: not narrow, though most given clicks are set aside
        margin = (teacher["signal_auc"] - 0.5) / (teacher["min_signal_auc"] - 0.5) * 2.0
        assert teacher["signal_standard_errors"] == pytest.approx(margin)
        assert teacher["signal_standard_errors"] > 3.0
        assert result.diagnostics["noise"]["narrow_trust"] is False
        assert flipped[result.rows].mean() < 0.5 * flipped.mean()
    # the same selection read against a higher bar for a narrow trust is flagged
    monkeypatch.setattr(nacs_module, "NARROW_TRUST_STANDARD_ERRORS", 5.0)
    narrow = select_coreset(generated.dataset, _config(size=None, ratio=0.05, seed=0))
    assert narrow.diagnostics["noise"]["narrow_trust"] is True
    monkeypatch.undo()
    options = {"size": None, "ratio": 0.05, "min_teacher_auc": 0.53}
    fixed = select_coreset(generated.dataset, _config(**options))
    assert fixed.diagnostics["teacher"]["trusted"] is False
    assert flipped[fixed.rows].mean() > 0.8 * flipped.mean()


def test_a_small_teacher_that_chance_could_have_made_is_not_trusted(
    generated,
) -> None:
    small = generated.dataset.subset(np.arange(300))
    rng = np.random.default_rng(4)
    noise = replace(small, labels=(rng.random(300) < 0.5).astype(np.float32))
    result = select_coreset(noise, _config(size=15, teacher_folds=2))
    teacher = result.diagnostics["teacher"]
    # above min_teacher_auc, as a teacher that knows nothing is one time in fifteen here
    assert 0.53 < teacher["signal_auc"] < teacher["min_signal_auc"]
    assert teacher["trusted"] is False and result.diagnostics["noise"]["set_aside_rows"] == 0
    # the given labels are delivered as they are
    assert result.diagnostics["selection"]["label_mix"] == 1.0


def test_class_balance(data: EncodedDataset) -> None:
    balanced = select_coreset(data, _config(class_balance="balanced"))
    assert int(balanced.labels.sum()) == 150
    assert balanced.weights.mean() == pytest.approx(1.0, abs=1e-5)
    assert len(np.unique(balanced.weights)) == 2
    stratified = select_coreset(data, _config(method="nacs-no-denoise", selection="random"))
    assert int(stratified.labels.sum()) == class_quota(data.labels, 300, "stratified")[0]
    assert select_coreset(data, _config(class_balance="none")).size == 300


def test_auto_class_balance_takes_half_clicks_where_clicks_are_rare(data: EncodedDataset) -> None:
    rare = _generate(8000, click_rate=0.012, flip_rate=0.0, signal=3.0, seed=5).dataset
    result = select_coreset(rare, _config(size=400))
    clicks = int(rare.labels.sum())
    assert result.diagnostics["teacher"]["trusted"] is True
    assert result.diagnostics["selection"]["class_balance"] == "balanced"
    # half the rows are clicks (or every click the kept rows hold), weighted back to the rate
    taken = int(result.labels.sum())
    assert taken == min(200, clicks - result.diagnostics["noise"]["set_aside_positive"])
    weighted = float(np.average(result.labels, weights=result.weights))
    assert weighted == pytest.approx(rare.labels.mean(), rel=0.2)
    # with 30% given clicks the rows keep the data's rate, and an explicit choice is kept
    moderate = select_coreset(data, _config())
    assert moderate.diagnostics["selection"]["class_balance"] == "stratified"
    explicit = select_coreset(rare, _config(size=400, class_balance="stratified"))
    assert explicit.diagnostics["selection"]["class_balance"] == "stratified"
    assert int(explicit.labels.sum()) < taken / 4
    # with an untrusted teacher, or at the threshold, the rows keep the data's rate
    assert resolved_class_balance("auto", False, 0.001) == "stratified"
    assert resolved_class_balance("auto", True, RARE_CLICK_RATE) == "stratified"
    assert resolved_class_balance("auto", True, 0.05) == "balanced"
    assert resolved_class_balance("auto", True, 0.12) == "stratified"
    assert resolved_class_balance("none", True, 0.001) == "none"


def test_a_balanced_coreset_gives_the_given_label_more_weight(data: EncodedDataset) -> None:
    rare = _generate(8000, click_rate=0.012, flip_rate=0.0, signal=3.0, seed=5).dataset
    teacher = select_coreset(rare, _config(size=400, label_mix=0.0, keep_click_rate=False))
    mixed = select_coreset(rare, _config(size=400, keep_click_rate=False))
    assert mixed.diagnostics["selection"]["class_balance"] == "balanced"
    assert mixed.diagnostics["selection"]["label_mix"] == BALANCED_LABEL_MIX == 0.3
    np.testing.assert_array_equal(mixed.rows, teacher.rows)
    np.testing.assert_allclose(
        mixed.soft_labels, 0.3 * teacher.labels + 0.7 * teacher.soft_labels, atol=1e-6
    )
    # a stratified coreset keeps 0.1, and a label_mix that is set is kept
    stratified = select_coreset(rare, _config(size=400, class_balance="stratified"))
    assert stratified.diagnostics["selection"]["label_mix"] == LABEL_MIX == 0.1
    assert select_coreset(data, _config()).diagnostics["selection"]["label_mix"] == LABEL_MIX
    assert resolved_label_mix(0.2, "balanced") == 0.2
    assert resolved_label_mix(None, "none") == LABEL_MIX
    with pytest.raises(ValueError, match="label_mix: must be at most 1.0"):
        SelectionConfig(ratio=0.1, label_mix=1.5)


def test_candidates_restrict_the_rows(data: EncodedDataset) -> None:
    candidates = np.arange(0, data.n_rows, 2)
    result = run_nacs(data, _config(), 200, lambda *args: None, candidates=candidates)
    assert np.all(result.rows % 2 == 0) and result.size == 200
    assert result.diagnostics["candidate_rows"] == candidates.shape[0]


def test_one_class_and_bad_labels_are_data_errors(data: EncodedDataset) -> None:
    ones = EncodedDataset(
        data.features[:500], np.ones(500, np.float32), data.field_names, data.field_dims
    )
    with pytest.raises(DataError, match="labels") as caught:
        select_coreset(ones, _config(size=50))
    assert caught.value.code == "single_class"
    half = EncodedDataset(
        data.features[:500], np.full(500, 0.5, np.float32), data.field_names, data.field_dims
    )
    with pytest.raises(DataError, match="labels"):
        select_coreset(half, _config(size=50))
    with pytest.raises(ValueError, match="k"):
        run_nacs(data, _config(), data.n_rows + 1, lambda *args: None)


def test_a_progress_exception_stops_the_selection(data: EncodedDataset) -> None:
    def cancel(phase: str, fraction: float, message: str) -> None:
        if fraction > 0.3:
            raise SelectionCancelled("stop")

    with pytest.raises(SelectionCancelled):
        select_coreset(data, _config(), progress=cancel)


def test_coverage_draws_evenly_across_strata() -> None:
    members = np.arange(1000)
    support = np.linspace(0, 1, 1000)
    rng = np.random.default_rng(0)
    picks = _coverage(members, support, 100, rng)
    assert picks.shape[0] == 100 and np.unique(picks).shape[0] == 100
    np.testing.assert_array_equal(np.bincount(picks // 100, minlength=10), np.full(10, 10))
    # Fewer picks than strata: one stratum per pick.
    assert np.unique(_coverage(members, support, 3, rng) // 334).shape[0] == 3
    # Uneven strata: small strata are filled, the rest is shared out.
    skewed = _coverage(np.arange(25), np.arange(25.0), 24, rng)
    assert skewed.shape[0] == 24


def test_craig_weights_are_tempered_to_the_effective_share() -> None:
    counts = np.array([100.0, 1, 1, 1, 1, 1, 1, 1])
    tempered = _weights(counts, 0.5)
    share = tempered.sum() ** 2 / (tempered**2).sum() / counts.shape[0]
    assert share == pytest.approx(0.5, abs=1e-6)
    assert tempered[0] > tempered[1]
    even = np.array([3.0, 2, 2, 3])
    np.testing.assert_array_equal(_weights(even, 0.5), even)


def test_probability_strata_count_set_aside_rows_toward_their_stratum() -> None:
    probabilities = np.linspace(0.0, 1.0, 1000)
    kept = np.flatnonzero(np.arange(1000) % 4 != 0)  # a quarter set aside
    kept = kept[kept >= 200]  # and the lowest fifth entirely
    strata = _probability_strata(probabilities, kept)
    assert len(strata) == 10
    assert [s.shape[0] for s in strata] == [0, 0] + [75] * 8
    picks = _draw_across(strata, 200, np.random.default_rng(0))
    # The two empty strata's share goes to the others: 25 from each.
    np.testing.assert_array_equal(np.bincount(picks // 100, minlength=10), [0, 0] + [25] * 8)
    assert np.isin(picks, kept).all()


def test_automatic_folds() -> None:
    assert automatic_folds(70_000) == 5
    assert automatic_folds(250_000) == 5
    assert automatic_folds(400_000) == 3
    assert automatic_folds(1_000_000) == 2
    assert automatic_folds(45_000_000) == 2
