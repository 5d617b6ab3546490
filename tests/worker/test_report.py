"""The report of a job: the numbers of report.json and the self-contained page of report.html."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest

from worker.report import (
    build_report,
    coverage,
    effective_sample_size,
    render_html,
    report_json,
)

AUDIT = {
    "families": {
        "logistic": {
            "coreset": {"auc": 0.71, "log_loss": 0.5}, "random": {"auc": 0.69, "log_loss": 0.52},
            "auc_difference": 0.02, "auc_difference_se": 0.004, "verdict": "better",
        },
        "deepfm": {
            "coreset": {"auc": 0.72, "log_loss": 0.5}, "random": {"auc": 0.715, "log_loss": 0.5},
            "auc_difference": 0.005, "auc_difference_se": 0.004, "verdict": "level",
        },
    },
    "verdict": "level", "scored_rows": 5000, "seeds": 2, "delivered": "coreset",
}


def test_effective_sample_size() -> None:
    assert effective_sample_size(np.ones(50)) == pytest.approx(50.0)
    assert effective_sample_size(np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_sample_size(np.array([2.0, 1.0, 1.0])) == pytest.approx(16 / 6)
    assert effective_sample_size(np.zeros(0)) == 0.0


def test_coverage_counts_the_rows_holding_a_value_the_coreset_lacks() -> None:
    features = np.array([[0, 0], [1, 0], [2, 1], [1, 2], [0, 2]], dtype=np.int32)
    vocabulary, by_field, rows = coverage(features, [3, 3], np.array([0, 3]))
    # The coreset holds field 0 ids {0, 1} and field 1 ids {0, 2}.
    assert vocabulary.tolist() == [2, 2]
    assert by_field.tolist() == [1, 1]  # row 2 (id 2 of field 0, id 1 of field 1)
    assert rows == 1


def _report(method: str, diagnostics: dict[str, Any], k: int = 200) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    n = 2000
    features = rng.integers(0, 30, size=(n, 4)).astype(np.int32)
    data_labels = (rng.random(n) < 0.2).astype(np.float32)
    rows = np.sort(rng.choice(n, k, replace=False))
    labels = data_labels[rows]
    baseline = method in ("random", "stratified", "balanced")
    soft = labels.copy() if baseline else np.clip(0.8 * labels + 0.2 * rng.random(k), 0, 1)
    weights = np.ones(k) if baseline else rng.lognormal(0, 0.4, k)
    uncertainty = np.zeros(k) if baseline else rng.random(k) * 0.5
    return build_report(
        job_id="job1", request={"dataset_uri": "file:///d.parquet", "size": k, "method": method},
        method=method, engine_version="0.1.0", created_at="2026-01-01T00:00:00.000Z",
        field_names=["a", "b", "c", "d"], field_dims=[30, 30, 30, 30], features=features,
        data_labels=data_labels, rows=rows, labels=labels, soft_labels=soft,
        weights=weights / weights.mean(), uncertainty=uncertainty, diagnostics=diagnostics,
        phase_seconds={"loading": 0.5, "selecting": 1.5},
    )


def _self_contained(page: str) -> None:
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "nothing fetched"
    assert "@import" not in page and "@font-face" not in page
    assert not re.search(r"url\((?!#)", page), "url() only to the page's own clip paths"
    assert not page.lstrip().startswith("<?xml")
    assert "<?xml" not in page, "the plots are inline SVG elements"


def test_a_nacs_report_has_every_section() -> None:
    diagnostics = {
        "noise": {
            "flip_rate": 0.12, "wrong_share_positive": 0.3, "wrong_share_negative": 0.05,
            "clean_click_rate": 0.15, "set_aside_rows": 120, "set_aside_positive": 70,
            "set_aside_negative": 50, "uncertainty_cuts": {"positive": 0.45, "negative": 0.4},
            "correction_flip_rate": 0.0875, "set_aside_flip_rate": 0.0875,
            "set_aside_wrong_share_positive": 0.25, "set_aside_wrong_share_negative": 0.04,
            "set_aside_capped_rows": 31,
        },
        "audit": AUDIT,
    }
    report = _report("nacs", diagnostics)
    assert json.loads(report_json(report)) == report
    assert report["data"]["rows"] == 2000 and report["coreset"]["rows"] == 200
    assert 0 <= report["coreset"]["rows_with_unseen_value_share"] <= 1
    assert sum(report["labels"]["soft_label_clicked"]) == report["coreset"]["clicks"]
    assert sum(report["uncertainty"]["counts"]) == 200
    assert report["uncertainty"]["cuts"] == {"positive": 0.45, "negative": 0.4}
    assert sum(report["weights"]["counts"]) == 200
    assert 0 < report["weights"]["effective_share"] <= 1
    page = render_html(report)
    _self_contained(page)
    assert page.count("<svg") == 5  # labels, uncertainty, weights, phases, audit
    assert "removal cut" in page and "12.00%" in page
    assert re.search(r"flip rate the soft labels correct for</td>\s*<td>8\.75%", page)
    assert re.search(r"flip rate the set-aside reads</td>\s*<td>8\.75%", page)
    assert re.search(r"wrong labels among clicks at it</td>\s*<td>25\.00%", page)
    assert re.search(r"their group of duplicates</td>\s*<td>31<", page)
    assert "lost only their likely wrong labels: some of their rows past the cut remain" in page
    assert 'class="verdict level"' in page and "logistic" in page and "deepfm" in page


def test_a_flip_rate_too_rare_to_read_is_said_so() -> None:
    noise = {
        "flip_rate": 0.0, "wrong_share_positive": 0.0, "wrong_share_negative": 0.0,
        "clean_click_rate": 0.006, "anchor_rows": 150, "set_aside_rows": 0,
        "set_aside_positive": 0, "set_aside_negative": 0, "uncertainty_cuts": {},
    }
    note = "The flip rate could not be read"
    page = render_html(_report("nacs", {"noise": {**noise, "measurable": False}}))
    assert note in page and "(150)" in page and "upper bound" not in page
    assert re.search(r"estimated wrong-label rate \(flip rate\)</td>\s*<td>-<", page)
    read = render_html(_report("nacs", {"noise": {**noise, "measurable": True}}))
    assert note not in read and "The rate is an upper bound" in read
    assert "No audit checked them here" in read and "The audit below says" not in read
    audited = {"verdict": "level", "families": {}, "seeds": 3}
    checked = render_html(_report("nacs", {"noise": {**noise, "measurable": True},
                                           "audit": audited}))
    assert "The audit below says" in checked and "No audit checked them" not in checked


def test_estimates_of_an_untrusted_teacher_are_said_to_be_unused() -> None:
    noise = {
        "flip_rate": 0.3, "wrong_share_positive": 0.93, "wrong_share_negative": 0.0,
        "clean_click_rate": 0.02, "set_aside_rows": 0, "set_aside_positive": 0,
        "set_aside_negative": 0, "uncertainty_cuts": {}, "measurable": True,
    }
    note = "these estimates are not used"
    assert note in render_html(_report("nacs", {"noise": {**noise, "teacher_trusted": False}}))
    assert note not in render_html(_report("nacs", {"noise": {**noise, "teacher_trusted": True}}))


def test_a_narrowly_trusted_teacher_is_said_so() -> None:
    noise = {
        "flip_rate": 0.17, "wrong_share_positive": 0.77, "wrong_share_negative": 0.01,
        "clean_click_rate": 0.05, "set_aside_rows": 6676, "set_aside_positive": 5502,
        "set_aside_negative": 1174, "uncertainty_cuts": {}, "measurable": True,
        "teacher_trusted": True,
    }
    note = "The proxy models were trusted narrowly"
    narrow = render_html(_report("nacs", {"noise": {**noise, "narrow_trust": True}}))
    assert note in narrow and "--methods nacs,stratified,random" in narrow
    assert note not in render_html(_report("nacs", {"noise": {**noise, "narrow_trust": False}}))
    assert note not in render_html(_report("nacs", {"noise": noise}))  # manifests before it


def test_the_papers_rounds_are_drawn() -> None:
    diagnostics = {
        "removed_rows": 20, "uncertainty_cuts": {"positive": 0.3},
        "rounds": [
            {"round": 1, "selected": 110, "objective": 12.5, "seconds": 0.4},
            {"round": 2, "selected": 110, "objective": 9.5, "seconds": 0.3},
        ],
        "audit": {"skipped": "the audit is off (audit=false)"},
    }
    report = _report("nacs-paper", diagnostics)
    assert [entry["selected"] for entry in report["rounds"]] == [110, 110]
    page = render_html(report)
    _self_contained(page)
    assert "facility-location objective" in page
    assert "rows removed by the denoising" in page
    assert "the audit is off" in page


@pytest.mark.parametrize("method", ["random", "stratified", "balanced"])
def test_a_baseline_gets_a_report_with_what_applies(method: str) -> None:
    diagnostics = {"audit": {"skipped": "a random baseline is not audited against random"}}
    report = _report(method, diagnostics)
    assert report["noise"] is None and report["rounds"] == []
    assert report["uncertainty"]["scored"] is False
    assert report["weights"]["effective_sample_size"] == pytest.approx(200.0)
    page = render_html(report)
    _self_contained(page)
    assert f"Method {method} does not estimate label noise" in page
    assert "scores no uncertainty" in page and "not audited" in page
    assert page.count("<svg") == 3  # labels, weights, phases


def test_an_audit_with_numbers_missing_still_draws() -> None:
    family = {
        "coreset": {"auc": 0.7, "log_loss": 0.5}, "random": {"auc": float("nan"), "log_loss": 0.5},
        "auc_difference": float("nan"), "auc_difference_se": None, "verdict": "level",
    }
    audit = {"families": {"logistic": family}, "verdict": "level", "scored_rows": 100, "seeds": 1}
    report = _report("nacs", {"audit": audit})
    assert report["audit"]["families"]["logistic"]["random"]["auc"] is None
    json.loads(report_json(report))
    assert render_html(report).count("<svg") == 5
