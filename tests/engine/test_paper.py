"""The paper's NaCS (method nacs-paper) through select_coreset: sizes, weights, labels,
determinism, progress, options."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nacs_engine import SelectionCancelled, select_coreset
from nacs_engine.baselines import class_quota
from nacs_engine.config import SelectionConfig
from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.data.synthetic import make_synthetic_ctr
from nacs_engine.paper import (
    automatic_partition_size,
    over_selection_size,
    run_nacs_paper,
    split_evenly,
)


@pytest.fixture(scope="module")
def data() -> EncodedDataset:
    return make_synthetic_ctr(
        3000, cardinalities=(20, 50, 8, 100, 30, 5), click_rate=0.3, flip_rate=0.2, seed=1
    ).dataset


def _config(**options: object) -> SelectionConfig:
    values = {
        "size": 300,
        "method": "nacs-paper",
        "device": "cpu",
        "seed": 0,
        "embed_dim": 4,
        "mc_passes": 3,
        "audit": False,
    } | options
    return SelectionConfig(**values)


def test_nacs_returns_k_distinct_rows_with_mean_one_weights(data: EncodedDataset) -> None:
    calls: list[tuple[str, float, str]] = []
    result = select_coreset(data, _config(), progress=lambda *args: calls.append(args))
    assert result.size == 300
    assert np.unique(result.rows).shape[0] == 300
    assert np.all(np.diff(result.rows) > 0)
    assert (
        result.rows.dtype == np.int64 and 0 <= result.rows.min() and result.rows.max() < data.n_rows
    )
    np.testing.assert_array_equal(result.labels, data.labels[result.rows])
    assert result.weights.dtype == np.float32 and result.weights.mean() == pytest.approx(
        1.0, abs=1e-5
    )
    assert np.all(result.weights >= 0)
    assert np.all((result.soft_labels >= 0) & (result.soft_labels <= 1))
    assert np.all(np.isfinite(result.uncertainty)) and result.uncertainty.max() > 0
    diagnostics = json.loads(json.dumps(result.diagnostics))
    assert set(diagnostics["phase_seconds"]) == {"selecting", "denoising"}
    assert diagnostics["device"] == "cpu"
    assert diagnostics["warmup_steps"] > 0  # the default warm-up trains the proxy first
    assert diagnostics["coreset_rows"] == 300
    assert diagnostics["coreset_clicks"] == int(result.labels.sum())
    assert [r["round"] for r in diagnostics["rounds"]] == [1, 2, 3]
    assert sum(r["selected"] for r in diagnostics["rounds"]) == diagnostics["pre_denoise_rows"]
    assert all(r["seconds"] >= 0 for r in diagnostics["rounds"])
    phases = {phase for phase, _, _ in calls}
    assert phases == {"selecting", "denoising"}
    assert all(0.0 <= fraction <= 1.0 for _, fraction, _ in calls)
    for phase in phases:
        fractions = [fraction for name, fraction, _ in calls if name == phase]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert len(calls) > 10


def test_over_selection_lands_exactly_on_k(data: EncodedDataset) -> None:
    result = select_coreset(data, _config(size=900, remove_rate=0.1))
    assert result.diagnostics["pre_denoise_rows"] == 1000  # 900 / (1 - 0.1)
    assert result.diagnostics["removed_rows"] == 100
    assert result.size == 900
    # Stratified: the class quota for k survives denoising.
    assert int(result.labels.sum()) == class_quota(data.labels, 900, "stratified")[0]


def test_denoising_removes_the_highest_scores_within_each_class(data: EncodedDataset) -> None:
    config = _config(class_balance="none", size=450, remove_rate=0.25)
    result = select_coreset(data, config)
    assert result.diagnostics["pre_denoise_rows"] == 600
    assert result.diagnostics["removed_rows"] == 150
    assert result.size == 450
    cuts = result.diagnostics["uncertainty_cuts"]
    assert cuts and set(cuts) <= {"positive", "negative"}
    for name, given in (("positive", 1.0), ("negative", 0.0)):
        if name in cuts:
            kept = result.uncertainty[result.labels == given]
            assert np.all(kept <= cuts[name] + 1e-6), "the rows kept are below the class's cut"


def test_same_seed_same_rows_and_different_seed_different_rows(data: EncodedDataset) -> None:
    first = select_coreset(data, _config(seed=7))
    second = select_coreset(data, _config(seed=7))
    other = select_coreset(data, _config(seed=8))
    np.testing.assert_array_equal(first.rows, second.rows)
    np.testing.assert_array_equal(first.weights, second.weights)
    np.testing.assert_array_equal(first.soft_labels, second.soft_labels)
    assert not np.array_equal(first.rows, other.rows)


def test_exception_from_progress_propagates(data: EncodedDataset) -> None:
    def cancel(phase: str, fraction: float, message: str) -> None:
        if fraction > 0.2:
            raise SelectionCancelled("stop")

    with pytest.raises(SelectionCancelled):
        select_coreset(data, _config(), progress=cancel)

    def cancel_denoising(phase: str, fraction: float, message: str) -> None:
        if phase == "denoising":
            raise SelectionCancelled("stop")

    with pytest.raises(SelectionCancelled):
        select_coreset(data, _config(), progress=cancel_denoising)


def test_without_denoising(data: EncodedDataset) -> None:
    no_denoise = select_coreset(data, _config(remove_rate=0.0))
    assert no_denoise.diagnostics["pre_denoise_rows"] == 300
    assert no_denoise.diagnostics["removed_rows"] == 0
    assert np.all(no_denoise.uncertainty == 0)
    assert not np.array_equal(no_denoise.soft_labels, no_denoise.labels)


def test_label_correction_acts_by_the_last_round(data: EncodedDataset) -> None:
    result = select_coreset(data, _config(remove_rate=0.0, epochs_per_round=2))
    diagnostics = result.diagnostics
    assert diagnostics["steps"] == diagnostics["planned_steps"]
    assert diagnostics["final_global_trust"] > 0.99
    corrections = [r["mean_correction"] for r in diagnostics["rounds"]]
    assert corrections[0] < 0.01 < corrections[-1]


def test_balanced_takes_half_positives_and_restores_the_click_rate(data: EncodedDataset) -> None:
    result = select_coreset(data, _config(class_balance="balanced", remove_rate=0.0))
    assert int(result.labels.sum()) == 150
    weighted_rate = float((result.weights * result.labels).sum() / result.weights.sum())
    assert weighted_rate == pytest.approx(float(data.labels.mean()), abs=1e-4)
    assert result.weights.mean() == pytest.approx(1.0, abs=1e-5)


def test_a_random_share_of_the_picks_keeps_sizes_quotas_and_determinism(
    data: EncodedDataset,
) -> None:
    config = _config(random_share=0.5, size=600)
    result = select_coreset(data, config)
    assert result.size == 600 and np.unique(result.rows).shape[0] == 600
    assert int(result.labels.sum()) == class_quota(data.labels, 600, "stratified")[0]
    assert result.weights.mean() == pytest.approx(1.0, abs=1e-5)
    assert (
        sum(r["selected"] for r in result.diagnostics["rounds"])
        == result.diagnostics["pre_denoise_rows"]
    )
    np.testing.assert_array_equal(select_coreset(data, config).rows, result.rows)
    # Uniform draws carry weight 1 before normalisation; facility location's CRAIG
    # weights vary, so half the pre-denoising rows share one weight.
    values, counts = np.unique(result.weights, return_counts=True)
    assert counts.max() >= 0.4 * result.size
    without = select_coreset(data, _config(size=600))
    assert not np.array_equal(without.rows, result.rows)
    _, plain_counts = np.unique(without.weights, return_counts=True)
    assert plain_counts.max() < 0.4 * result.size


def test_random_share_out_of_range_names_the_option() -> None:
    with pytest.raises(ValueError, match="random_share"):
        _config(random_share=0.95)
    with pytest.raises(ValueError, match="random_share"):
        _config(random_share=-0.1)


def test_dcnv2_proxy_and_one_round(data: EncodedDataset) -> None:
    result = select_coreset(data, _config(backbone="dcnv2", rounds=1, size=200, warmup_ratio=0.0))
    assert result.size == 200
    assert result.diagnostics["warmup_steps"] == 0
    assert result.diagnostics["backbone"] == "dcnv2"


def test_helpers() -> None:
    assert over_selection_size(900, 10_000, 0.1, True) == 1000
    assert over_selection_size(900, 950, 0.1, True) == 950
    assert over_selection_size(900, 10_000, 0.1, False) == 900
    assert over_selection_size(10, 100, 0.1, True) == math.ceil(10 / 0.9)
    assert split_evenly(10, 3) == [4, 3, 3]
    assert sum(split_evenly(7, 5)) == 7
    assert automatic_partition_size(1_000_000) == 512  # PAIRS_PER_PASS / candidates
    assert automatic_partition_size(400_000) == 1280
    assert automatic_partition_size(125_000) == 4096
    assert automatic_partition_size(70_000) == 4096  # at most MAX_PARTITION
    assert automatic_partition_size(10_000_000) == 512  # at least MIN_PARTITION
    assert automatic_partition_size(100) == 100  # at most the rows there are


def test_bad_inputs(data: EncodedDataset) -> None:
    report = lambda *args: None  # noqa: E731
    with pytest.raises(ValueError, match="k"):
        run_nacs_paper(data, _config(), 0, report)
    with pytest.raises(ValueError, match="k"):
        run_nacs_paper(data, _config(), data.n_rows + 1, report)
    with pytest.raises(ValueError, match="config"):
        run_nacs_paper(data, _config(method="random"), 10, report)
    with pytest.raises(ValueError, match="data"):
        run_nacs_paper(data.features, _config(), 10, report)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="report"):
        run_nacs_paper(data, _config(), 10, None)  # type: ignore[arg-type]
    bad_labels = EncodedDataset(
        data.features[:100], np.full(100, 0.5, dtype=np.float32), data.field_names, data.field_dims
    )
    with pytest.raises(ValueError, match="labels"):
        run_nacs_paper(bad_labels, _config(size=10), 10, report)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nacs_on_cuda_is_reproducible(data: EncodedDataset) -> None:
    first = select_coreset(data, _config(device="cuda", seed=3))
    second = select_coreset(data, _config(device="cuda", seed=3))
    assert first.diagnostics["device"].startswith("cuda")
    assert first.size == 300 and np.unique(first.rows).shape[0] == 300
    np.testing.assert_array_equal(first.rows, second.rows)
    assert first.weights.mean() == pytest.approx(1.0, abs=1e-5)
