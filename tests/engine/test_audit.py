"""The audit: the held-back rows, the report in every audited job, and the guard's fallback."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from nacs_engine import audit as audit_module
from nacs_engine import select_coreset
from nacs_engine.audit import (
    MAX_HOLDOUT_ROWS,
    STOP_MIN_GAIN,
    STOP_PATIENCE,
    AuditModel,
    AuditScore,
    Holdout,
    audit_arms,
    audit_coreset,
    audit_models,
    conclude_audit,
    holdout_split,
)
from nacs_engine.config import SelectionConfig
from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.data.synthetic import make_synthetic_ctr
from nacs_engine.evaluate import auc, log_loss
from nacs_engine.pipeline import CoresetResult

VERDICTS = {"better", "worse", "level"}


@pytest.fixture(scope="module")
def data() -> EncodedDataset:
    return make_synthetic_ctr(
        4000,
        cardinalities=(20, 50, 8, 100, 30, 5),
        click_rate=0.3,
        flip_rate=0.1,
        signal=2.0,
        seed=3,
    ).dataset


def _config(**options: object) -> SelectionConfig:
    values = {"size": 300, "device": "cpu", "seed": 0, "embed_dim": 4, "audit_seeds": 2}
    values["teacher_folds"] = 2
    return SelectionConfig(**(values | options))


def test_the_holdout_is_a_tenth_split_into_stopping_and_scored_rows() -> None:
    labels = (np.arange(5000) % 3 == 0).astype(np.float32)
    holdout = holdout_split(labels, k=100, seed=7)
    assert isinstance(holdout, Holdout)
    assert holdout.stop.shape[0] == 500 // 3 and holdout.score.shape[0] == 500 - 500 // 3
    parts = np.concatenate([holdout.candidates, holdout.stop, holdout.score])
    np.testing.assert_array_equal(np.sort(parts), np.arange(5000))
    for part in (holdout.candidates, holdout.stop, holdout.score):
        assert np.all(np.diff(part) > 0)
    again = holdout_split(labels, k=100, seed=7)
    assert isinstance(again, Holdout)
    np.testing.assert_array_equal(again.score, holdout.score)
    other = holdout_split(labels, k=100, seed=8)
    assert isinstance(other, Holdout) and not np.array_equal(other.score, holdout.score)


def test_the_holdout_is_capped_and_says_why_it_is_skipped() -> None:
    big = holdout_split(np.tile([0.0, 1.0], 1_100_000), k=1000, seed=0)
    assert isinstance(big, Holdout)
    assert big.stop.shape[0] + big.score.shape[0] == MAX_HOLDOUT_ROWS
    assert "too few rows" in str(holdout_split(np.tile([0.0, 1.0], 400), k=10, seed=0))
    assert "budget" in str(holdout_split(np.tile([0.0, 1.0], 1000), k=1950, seed=0))
    assert "one class" in str(holdout_split(np.zeros(3000), k=10, seed=0))
    # One held-back click gives no spread for the scored rows' standard error.
    parts = holdout_split(np.tile([0.0, 1.0], 1500), k=10, seed=0)
    assert isinstance(parts, Holdout)
    one_click = np.zeros(3000)
    one_click[parts.stop[0]] = 1.0
    one_click[parts.score[0]] = 1.0
    assert "fewer than 2 rows of one class" in str(holdout_split(one_click, k=10, seed=0))
    # One click suffices to stop on.
    one_click[parts.score[1]] = 1.0
    assert isinstance(holdout_split(one_click, k=10, seed=0), Holdout)


def test_every_audited_job_reports_both_families_and_never_picks_held_rows(
    data: EncodedDataset,
) -> None:
    phases: set[str] = set()
    result = select_coreset(data, _config(), progress=lambda phase, *_: phases.add(phase))
    audit = json.loads(json.dumps(result.diagnostics["audit"]))
    assert audit["validation_rows"] == 400
    assert audit["stopping_rows"] + audit["scored_rows"] == 400
    assert audit["seeds"] == 2 and audit["guard"] == "report" and audit["delivered"] == "coreset"
    assert set(audit["families"]) == {"logistic", "deepfm"}
    for family in audit["families"].values():
        for arm in ("coreset", "random"):
            assert 0.0 <= family[arm]["auc"] <= 1.0 and family[arm]["log_loss"] > 0
        difference = family["coreset"]["auc"] - family["random"]["auc"]
        assert family["auc_difference"] == pytest.approx(difference)
        assert family["auc_difference_se"] >= 0 and family["verdict"] in VERDICTS
    assert audit["verdict"] in VERDICTS and audit["seconds"] > 0
    assert "auditing" in phases and result.diagnostics["phase_seconds"]["auditing"] > 0
    holdout = holdout_split(data.labels, 300, 0)
    assert isinstance(holdout, Holdout)
    assert np.isin(result.rows, holdout.candidates).all()


def test_audit_models_count_only_rises_above_the_minimum_gain(
    data: EncodedDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, float, int, int]] = []
    stops: list[tuple[int, int, int]] = []
    train = audit_module.evaluate_coreset

    def recording(*args, **kwargs):
        evaluation = train(*args, **kwargs)
        options = kwargs["options"]
        seen.append((options.backbone, options.min_gain, options.patience, evaluation.epochs_run))
        stops.append((evaluation.epochs_run, evaluation.best_epoch, options.max_epochs))
        return evaluation

    monkeypatch.setattr(audit_module, "evaluate_coreset", recording)
    select_coreset(data, _config())
    # 2 families x 2 seeds x (coreset, random), each stopping by the audit's rule: at the
    # first epoch without a rise above the minimum gain.
    assert len(seen) == 8
    assert {(family, gain, patience) for family, gain, patience, _ in seen} == {
        ("logistic", STOP_MIN_GAIN, STOP_PATIENCE),
        ("deepfm", STOP_MIN_GAIN, STOP_PATIENCE),
    }
    assert STOP_MIN_GAIN > 0 and STOP_PATIENCE == 1
    assert all(1 <= epochs <= 20 for *_, epochs in seen)
    # No model trains on past the first epoch after its best (unless it reached the cap).
    assert all(run <= best + 1 or run == cap for run, best, cap in stops)


def test_the_audit_runs_two_seeds_by_default() -> None:
    config = SelectionConfig(ratio=0.01)
    assert config.audit_seeds == 2 and len(audit_models(config)) == 8


def test_the_audit_can_be_turned_off_and_baselines_are_not_audited(data: EncodedDataset) -> None:
    off = select_coreset(data, _config(audit=False))
    assert off.diagnostics["audit"] == {"skipped": "the audit is off (audit=false)"}
    baseline = select_coreset(data, _config(method="stratified"))
    assert "skipped" in baseline.diagnostics["audit"]


def _losing_coreset(data: EncodedDataset, holdout: Holdout, k: int) -> CoresetResult:
    """k candidates whose soft labels are the given labels inverted: a coreset that must lose."""
    rows = holdout.candidates[:k]
    labels = np.asarray(data.labels[rows], dtype=np.float32)
    return CoresetResult(
        rows=rows,
        labels=labels,
        soft_labels=1.0 - labels,
        weights=np.ones(k, dtype=np.float32),
        uncertainty=np.zeros(k, dtype=np.float32),
        diagnostics={"method": "nacs"},
    )


def test_the_fallback_delivers_random_rows_when_the_selection_loses(data: EncodedDataset) -> None:
    config = _config(size=400, guard="fallback")
    holdout = holdout_split(data.labels, 400, 0)
    assert isinstance(holdout, Holdout)
    losing = _losing_coreset(data, holdout, 400)
    delivered, audit = audit_coreset(data, holdout, losing, config)
    assert audit["verdict"] == "worse" and audit["delivered"] == "random"
    assert audit["fallback_auc"]["random"] > audit["fallback_auc"]["coreset"]
    assert delivered.diagnostics["delivered"] == "random"
    assert delivered.size == 400 and np.isin(delivered.rows, holdout.candidates).all()
    assert not np.array_equal(delivered.rows, losing.rows)
    np.testing.assert_array_equal(delivered.soft_labels, data.labels[delivered.rows])
    # The random subset is stratified: its click count follows the candidates' rate.
    rate = float(data.labels[holdout.candidates].mean())
    assert abs(float(delivered.labels.mean()) - rate) < 0.01

    reported, report_audit = audit_coreset(data, holdout, losing, replace(config, guard="report"))
    assert report_audit["verdict"] == "worse" and report_audit["delivered"] == "coreset"
    np.testing.assert_array_equal(reported.rows, losing.rows)


def _conclude(
    data: EncodedDataset, holdout: Holdout, config: SelectionConfig, logits: dict[str, np.ndarray]
) -> dict:
    """The audit's report when every seed's model of each arm scores the rows with
    ``logits[arm]`` (so the seeds agree exactly)."""
    labels = data.labels[holdout.score]
    coreset = _losing_coreset(data, holdout, config.size)
    scores: dict[AuditModel, AuditScore] = {}
    for model in audit_models(config):
        z = logits[model.arm].astype(np.float32)
        p = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
        scores[model] = AuditScore(auc(labels, z), log_loss(labels, p), z)
    arms = audit_arms(data.labels, holdout, coreset, config)
    _, report = conclude_audit(
        data, holdout, coreset, config, arms, scores, seconds=0.0, report=lambda *_: None
    )
    return report


def test_the_standard_error_counts_the_sampling_of_the_scored_rows(data: EncodedDataset) -> None:
    config = _config()
    holdout = holdout_split(data.labels, config.size, 0)
    assert isinstance(holdout, Holdout)
    labels = np.asarray(data.labels[holdout.score], dtype=np.float64)
    rng = np.random.default_rng(5)
    weak = {
        "coreset": 0.4 * labels + rng.normal(size=labels.shape[0]),
        "random": rng.normal(size=labels.shape[0]),
    }
    family = _conclude(data, holdout, config, weak)["families"]["logistic"]
    # Every seed gives the same difference: the seeds alone would call it certain.
    assert family["auc_difference_se_seeds"] == pytest.approx(0.0, abs=1e-12)
    assert family["auc_difference"] > 0.05 and family["auc_difference_se_rows"] > 0.02
    assert family["auc_difference_se"] == pytest.approx(family["auc_difference_se_rows"])
    assert family["verdict"] == "level"

    # The row part against a bootstrap of the scored rows (DeLong's is a first-order match).
    differences, losses = [], []
    p = {arm: 1.0 / (1.0 + np.exp(-z)) for arm, z in weak.items()}
    for _ in range(400):
        rows = rng.integers(0, labels.shape[0], labels.shape[0])
        y = labels[rows]
        differences.append(auc(y, weak["coreset"][rows]) - auc(y, weak["random"][rows]))
        losses.append(log_loss(y, p["coreset"][rows]) - log_loss(y, p["random"][rows]))
    assert family["auc_difference_se_rows"] == pytest.approx(np.std(differences), rel=0.2)
    assert family["log_loss_difference_se_rows"] == pytest.approx(np.std(losses), rel=0.2)

    strong = {"coreset": 4.0 * labels + rng.normal(size=labels.shape[0]), "random": weak["random"]}
    assert _conclude(data, holdout, config, strong)["families"]["logistic"]["verdict"] == "better"


def _scores_of(data: EncodedDataset, config: SelectionConfig, threads: int, progress=None):
    import torch

    holdout = holdout_split(data.labels, config.size, 0)
    assert isinstance(holdout, Holdout)
    coreset = _losing_coreset(data, holdout, config.size)
    arms = audit_arms(data.labels, holdout, coreset, config)
    held = audit_module.held_rows(data, holdout)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return audit_module.train_audit_models(
            data, held, arms, audit_models(config), config,
            progress or (lambda phase, fraction, message: None),
        )
    finally:
        torch.set_num_threads(before)


def test_audit_models_trained_at_once_score_as_one_after_the_other(data: EncodedDataset) -> None:
    config = _config(size=300, audit_seeds=2)
    at_once = _scores_of(data, config, threads=2)
    in_turn = _scores_of(data, config, threads=1)
    assert list(at_once) == list(in_turn) == audit_models(config)
    for model in in_turn:
        assert at_once[model].auc == in_turn[model].auc
        np.testing.assert_array_equal(at_once[model].logits, in_turn[model].logits)


def test_a_failure_in_one_audit_model_stops_the_others(data: EncodedDataset) -> None:
    import threading

    calls: list[str] = []
    guard = threading.Lock()

    def progress(phase: str, fraction: float, message: str) -> None:
        with guard:
            calls.append(message)
            if len(calls) == 3:
                raise RuntimeError("cancelled by the user")

    with pytest.raises(RuntimeError, match="cancelled by the user"):
        _scores_of(data, _config(size=300, audit_seeds=2), threads=2, progress=progress)
    # the other lane stopped at its next epoch instead of training the remaining models
    assert len(calls) == 3


def test_the_audit_starts_its_longest_models_first(data: EncodedDataset) -> None:
    config = _config(size=300, audit_seeds=2)
    finished: list[str] = []

    def progress(phase: str, fraction: float, message: str) -> None:
        if "epoch" not in message:
            finished.append(message.removeprefix("audit: "))

    _scores_of(data, config, threads=1, progress=progress)
    models = audit_models(config)
    assert finished == [str(models[index]) for index in audit_module.longest_first(models)]
    backbone = config.backbone
    assert finished[:2] == [f"{backbone}, seed 1, coreset", f"{backbone}, seed 2, coreset"]
