"""Noise awareness on synthetic data with known flips: NaCS keeps fewer flipped rows than random.

A small version of ``bench/noise.py`` (20,000 rows, 20% flipped, ratio 5%).
The selection is deterministic for a seed on one machine, but its float
arithmetic (and so its rows) differs between CPUs and thread counts, and a
1,000-row coreset's flipped share has a standard error of about 0.013: the
test averages two seeds and its thresholds leave room for that spread.
"""

from __future__ import annotations

import numpy as np
import pytest

from nacs_engine.config import SelectionConfig
from nacs_engine.data.synthetic import make_synthetic_ctr
from nacs_engine.pipeline import select_coreset

OPTIONS = {"ratio": 0.05, "device": "cpu"}
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def noisy():
    return make_synthetic_ctr(20_000, flip_rate=0.2, seed=2)


def test_nacs_coreset_holds_fewer_flipped_rows_than_the_data_and_random(noisy) -> None:
    flipped = noisy.flipped
    nacs_shares, random_shares, given_errors, soft_errors = [], [], [], []
    for seed in SEEDS:
        nacs = select_coreset(noisy.dataset, SelectionConfig(**OPTIONS, seed=seed))
        random = select_coreset(
            noisy.dataset, SelectionConfig(**OPTIONS, seed=seed, method="random")
        )
        nacs_shares.append(float(flipped[nacs.rows].mean()))
        random_shares.append(float(flipped[random.rows].mean()))
        truth = noisy.click_probability[nacs.rows]
        given_errors.append(float(np.mean((nacs.labels - truth) ** 2)))
        soft_errors.append(float(np.mean((nacs.soft_labels - truth) ** 2)))
    data_share = float(flipped.mean())
    nacs_share = sum(nacs_shares) / len(SEEDS)
    random_share = sum(random_shares) / len(SEEDS)
    assert data_share == pytest.approx(0.2, abs=0.01)
    # Random keeps the data's share (2 x 1,000 rows: one standard error is 0.009).
    assert abs(random_share - data_share) < 0.025
    # Measured: 0.063 on both seeds (random 0.186 and 0.200).
    assert nacs_share < 0.5 * data_share
    # Soft labels are closer than the given labels to the click probability that
    # generated the clean labels, in squared error. Measured: 0.047 and 0.048
    # against 0.063 and 0.072.
    assert sum(soft_errors) < 0.85 * sum(given_errors)
