"""Synthetic CTR data: shapes, rates, known noise, determinism, a learnable teacher."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from nacs_engine.data import load_dataset
from nacs_engine.data.synthetic import default_cardinalities, make_synthetic_ctr, write_synthetic


def rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum formula (ties get mean ranks)."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, counts)
    positive = labels > 0.5
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_rank_auc_on_a_known_case():
    assert rank_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75


def test_shapes_dtypes_and_rates():
    synthetic = make_synthetic_ctr(50_000, click_rate=0.25, flip_rate=0.2, seed=3)
    data = synthetic.dataset
    cards = default_cardinalities(39)
    assert data.features.shape == (50_000, 39) and data.features.dtype == np.int32
    assert data.labels.dtype == np.float32 and synthetic.clean_labels.dtype == np.float32
    assert synthetic.flipped.dtype == bool
    assert data.field_dims == tuple(c + 1 for c in cards)
    assert data.features.min() >= 1
    assert np.all(data.features.max(axis=0) < np.array(data.field_dims))
    assert abs(synthetic.clean_labels.mean() - 0.25) < 0.01
    assert abs(synthetic.flipped.mean() - 0.2) < 0.01
    np.testing.assert_array_equal(synthetic.flipped, data.labels != synthetic.clean_labels)
    # noisy rate = 0.25 * 0.8 + 0.75 * 0.2
    assert abs(data.labels.mean() - 0.35) < 0.01
    assert min(cards) <= 5 and max(cards) == 100_000


def test_values_follow_a_skewed_law():
    data = make_synthetic_ctr(20_000, cardinalities=[1000], seed=0).dataset
    counts = np.bincount(data.features[:, 0], minlength=1001)[1:]
    assert counts[0] > 10 * counts[99]  # the most frequent value dominates the 100th
    assert (counts > 0).sum() > 200  # and the tail is long


def test_same_seed_same_data_and_other_seed_other_data():
    a = make_synthetic_ctr(3_000, n_fields=8, seed=7)
    b = make_synthetic_ctr(3_000, n_fields=8, seed=7)
    c = make_synthetic_ctr(3_000, n_fields=8, seed=8)
    np.testing.assert_array_equal(a.dataset.features, b.dataset.features)
    np.testing.assert_array_equal(a.dataset.labels, b.dataset.labels)
    assert a.dataset.fingerprint == b.dataset.fingerprint != c.dataset.fingerprint
    assert not np.array_equal(a.dataset.features, c.dataset.features)


def test_teacher_separates_clean_labels():
    synthetic = make_synthetic_ctr(30_000, seed=1)
    clean_auc = rank_auc(synthetic.click_probability, synthetic.clean_labels)
    noisy_auc = rank_auc(synthetic.click_probability, synthetic.dataset.labels)
    assert clean_auc > 0.75
    assert 0.5 < noisy_auc < clean_auc


def test_class_conditional_noise():
    synthetic = make_synthetic_ctr(
        40_000, n_fields=6, click_rate=0.3, flip_rate=(0.05, 0.4), seed=2
    )
    clean = synthetic.clean_labels > 0.5
    assert abs(synthetic.flipped[~clean].mean() - 0.05) < 0.01
    assert abs(synthetic.flipped[clean].mean() - 0.4) < 0.02


def test_large_data_go_to_a_memory_map(tmp_path):
    synthetic = make_synthetic_ctr(
        70_000, n_fields=4, seed=0, workdir=tmp_path, memmap_threshold_bytes=1 << 16
    )
    assert isinstance(synthetic.dataset.features, np.memmap)
    in_memory = make_synthetic_ctr(70_000, n_fields=4, seed=0)
    np.testing.assert_array_equal(synthetic.dataset.features, in_memory.dataset.features)


def test_write_synthetic_matches_make_and_loads(tmp_path):
    path = tmp_path / "syn.parquet"
    truth_path = tmp_path / "truth.parquet"
    truth = write_synthetic(path, 5_000, n_fields=5, seed=4, truth_path=truth_path)
    made = make_synthetic_ctr(5_000, n_fields=5, seed=4)
    table = pq.read_table(path)
    assert table.column_names == ["label", "f0", "f1", "f2", "f3", "f4"]
    np.testing.assert_array_equal(table.column("label").to_numpy(), made.dataset.labels)
    np.testing.assert_array_equal(table.column("f3").to_numpy(), made.dataset.features[:, 3])
    np.testing.assert_array_equal(truth.flipped, made.flipped)
    np.testing.assert_array_equal(
        pq.read_table(truth_path).column("flipped").to_numpy(), made.flipped
    )
    loaded = load_dataset(path, min_count=1)
    assert loaded.n_rows == 5_000 and loaded.n_clicks == truth.n_clicks
    csv_path = tmp_path / "syn.csv"
    write_synthetic(csv_path, 5_000, n_fields=5, seed=4, format="csv")
    from_csv = load_dataset(csv_path, min_count=1)
    np.testing.assert_array_equal(from_csv.features, loaded.features)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_rows": 0}, "n_rows"),
        ({"click_rate": 1.0}, "click_rate"),
        ({"flip_rate": 0.5}, "flip_rate"),
        ({"flip_rate": (0.1,)}, "flip_rate"),
        ({"cardinalities": [0, 3]}, "cardinalities"),
        ({"n_fields": 0}, "n_fields"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    arguments = {"n_rows": 100, **kwargs}
    with pytest.raises(ValueError, match=name):
        make_synthetic_ctr(**arguments)


def test_min_count_matches_the_encoder_on_the_written_file(tmp_path):
    path = tmp_path / "syn.parquet"
    write_synthetic(path, 6_000, cardinalities=[5, 300, 2000], seed=9)
    made = make_synthetic_ctr(6_000, cardinalities=[5, 300, 2000], seed=9, min_count=4)
    loaded = load_dataset(path, min_count=4)
    np.testing.assert_array_equal(made.dataset.features, loaded.features)
    assert made.dataset.field_dims == loaded.field_dims
    assert made.dataset.field_dims[2] < 2001 and (made.dataset.features[:, 2] == 0).any()
    mapped = make_synthetic_ctr(
        6_000,
        cardinalities=[5, 300, 2000],
        seed=9,
        min_count=4,
        workdir=tmp_path,
        memmap_threshold_bytes=0,
    )
    assert isinstance(mapped.dataset.features, np.memmap)
    np.testing.assert_array_equal(mapped.dataset.features, made.dataset.features)
