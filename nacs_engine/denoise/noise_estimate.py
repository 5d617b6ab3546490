"""How many labels are wrong, and which: read from out-of-fold click probabilities.

The noise model is the usual one for flipped labels: a row's true label y is
drawn from its click probability p(x), then flipped to the observed label with
a rate that does not depend on x. With a flip rate rho in both directions the
observed click probability is

    q(x) = rho + (1 - 2 rho) p(x),

so q never falls below rho nor rises above 1 - rho. Rows that a model
trained on the observed labels ranks lowest (or highest) out of fold are the
best candidates for "anchors", rows whose true click probability is near 0 (or
near 1); the observed click rate among them is an unbiased estimate of their
mean q, hence an upper bound of rho that is tight when they are true anchors.
``estimate_noise`` takes the click rate of the lowest ``ANCHOR_SHARE`` of the
rows (at least ``ANCHOR_MIN_ROWS``) and one less that of the highest, and
reads rho as the smaller of the two: on click data most rows have a click
probability near 0, so the lower bound is tight, while the upper one is only
tight where some rows are near-certain clicks. The labels are read rather
than the probabilities, because an early-stopped model's probabilities are
too extreme in exactly those tails, and selecting the lowest of noisy
estimates biases them further down. Without anchors (data where every row's
click probability is far from 0 and from 1) noise and uncertainty cannot be
told apart, and the estimate stays an upper bound; on clean labels it is small
wherever anchors exist.

The flip rate is read only where the anchors could hold a few wrong labels.
rho is at most min(r, 1 - r) for an observed click rate r, so at most
a min(r, 1 - r) of a anchor rows are flipped; where that is below
``MIN_ANCHOR_FLIPS`` (rare clicks, few rows), one click among the anchors
moves the estimated share of wrong clicks by more than a fifth, and a true
click the anchors happen to hold reads as noise. The estimate is then not
``measurable``: the flip rate reads 0 and nothing is set aside. (On
iPinYou's clean training rows, 0.6% clicks, 2 clicks among the 168
lowest-ranked rows read as a flip rate of 0.012, twice the click rate, with
every click wrong.)

From rho and the observed click rate r, the clean click rate is
pi = (r - rho) / (1 - 2 rho), and the expected share of wrong labels among the
rows labelled 1 is rho (1 - pi) / r, among the rows labelled 0 rho pi / (1 - r).
``likely_wrong`` marks, within each class, that share of the rows times a
factor, taking the rows whose given label the out-of-fold probability supports
least. The selection reads those shares at rho less two standard errors of its
anchors' click rate (``flip_rate_lower_bound``, ``at_flip_rate``), as the correction
below does: a few dozen anchors read a flip rate of a few points on clean labels, and
where clicks are rare that reads as most clicks wrong (on a registry of hospital stays,
8.6% clicks and a teacher barely above chance, 5 clicks among 88 anchors read 0.057,
and 79% of the clicks were set aside).

The teacher learns q, not p: with flips its probabilities are squeezed toward
the middle, and soft labels made of them teach a model the same squeeze.
``clean_probability`` inverts the model, p = (q - rho) / (1 - 2 rho), within
0-1. An overestimated rho stretches q too far (rows near the edges become
certain, and a model trained on them is overconfident), an underestimated one
leaves part of the squeeze; so the correction reads rho less two standard
errors of its anchors' click rate (``flip_rate_lower_bound``), which is 0 on
clean labels wherever the anchors are few.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

ANCHOR_SHARE = 0.005
ANCHOR_MIN_ROWS = 50
# The fewest wrong labels the anchors must be able to hold for the flip rate to be read.
MIN_ANCHOR_FLIPS = 5
# The most of a class that is ever set aside, whatever the estimate and factor.
MAX_SET_ASIDE_SHARE = 0.9
# Standard errors of the anchors' click rate below the estimate, for the set-aside and the
# correction.
CORRECTION_STANDARD_ERRORS = 2.0


@dataclass(frozen=True)
class NoiseEstimate:
    """What ``estimate_noise`` reads from the probabilities.

    flip_rate: rho, the estimated rate at which a label is flipped.
    lower_floor, upper_floor: click rate of the lowest-ranked anchor rows, and one
        less that of the highest-ranked (each an upper bound of the flip rate).
    clean_click_rate: pi, the click rate the labels would have without flips.
    wrong_share_positive, wrong_share_negative: expected share of wrong labels
        among the rows labelled 1 and among those labelled 0.
    wrong_share: expected share of wrong labels among all rows.
    anchor_rows: rows in each anchor group.
    measurable: whether the anchors could hold ``MIN_ANCHOR_FLIPS`` wrong labels at the
        largest flip rate the click rate allows; where not, the flip rate reads 0.
    """

    flip_rate: float
    lower_floor: float
    upper_floor: float
    clean_click_rate: float
    wrong_share_positive: float
    wrong_share_negative: float
    wrong_share: float
    anchor_rows: int
    measurable: bool = True

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "flip_rate": self.flip_rate,
            "lower_floor": self.lower_floor,
            "upper_floor": self.upper_floor,
            "clean_click_rate": self.clean_click_rate,
            "wrong_share_positive": self.wrong_share_positive,
            "wrong_share_negative": self.wrong_share_negative,
            "wrong_share": self.wrong_share,
            "anchor_rows": self.anchor_rows,
            "measurable": self.measurable,
        }


def _check(probabilities: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"probabilities: expected a non-empty 1-D array, got shape {p.shape}")
    if y.shape != p.shape:
        raise ValueError(f"labels: expected shape {p.shape}, got {y.shape}")
    if not np.all(np.isfinite(p)) or np.any((p < 0.0) | (p > 1.0)):
        raise ValueError("probabilities: expected values in [0, 1]")
    if not np.all((y == 0.0) | (y == 1.0)):
        raise ValueError("labels: expected 0/1 values")
    return p, y


def estimate_noise(probabilities: np.ndarray, labels: np.ndarray) -> NoiseEstimate:
    """Estimate the flip rate from out-of-fold ``probabilities`` (n,) and the observed
    ``labels`` (n,).

    Only the ranking of ``probabilities`` matters to the flip rate."""
    p, y = _check(probabilities, labels)
    n = p.shape[0]
    anchors = int(min(max(ANCHOR_MIN_ROWS, round(ANCHOR_SHARE * n)), max(1, n // 4)))
    order = np.lexsort((np.arange(n), p))  # ascending probability, ties by position
    lower = float(y[order[:anchors]].mean())
    upper = float(1.0 - y[order[-anchors:]].mean())
    click_rate = float(y.mean())
    measurable = anchors * min(click_rate, 1.0 - click_rate) >= MIN_ANCHOR_FLIPS
    rho = min(lower, upper, 0.499) if measurable else 0.0
    clean, wrong_positive, wrong_negative, wrong = _wrong_shares(rho, click_rate)
    return NoiseEstimate(
        flip_rate=float(rho),
        lower_floor=lower,
        upper_floor=upper,
        clean_click_rate=clean,
        wrong_share_positive=float(wrong_positive),
        wrong_share_negative=float(wrong_negative),
        wrong_share=float(wrong),
        anchor_rows=anchors,
        measurable=bool(measurable),
    )


def at_flip_rate(estimate: NoiseEstimate, flip_rate: float, click_rate: float) -> NoiseEstimate:
    """``estimate`` with the clean click rate and the shares of wrong labels read at
    ``flip_rate`` for the observed ``click_rate`` (its floors and anchors unchanged)."""
    if not 0.0 <= flip_rate < 0.5:
        raise ValueError(f"flip_rate: expected a number in [0, 0.5), got {flip_rate!r}")
    if not 0.0 <= click_rate <= 1.0:
        raise ValueError(f"click_rate: expected a number in [0, 1], got {click_rate!r}")
    clean, positive, negative, wrong = _wrong_shares(flip_rate, click_rate)
    return replace(
        estimate,
        flip_rate=float(flip_rate),
        clean_click_rate=clean,
        wrong_share_positive=positive,
        wrong_share_negative=negative,
        wrong_share=wrong,
    )


def _wrong_shares(rho: float, click_rate: float) -> tuple[float, float, float, float]:
    """(clean click rate, wrong share among clicks, among non-clicks, among all rows) at
    flip rate ``rho`` and observed ``click_rate``."""
    clean = float(np.clip((click_rate - rho) / (1.0 - 2.0 * rho), 0.0, 1.0))
    positive = min(1.0, rho * (1.0 - clean) / click_rate) if click_rate > 0 else 0.0
    negative = min(1.0, rho * clean / (1.0 - click_rate)) if click_rate < 1 else 0.0
    wrong = positive * click_rate + negative * (1.0 - click_rate)
    return clean, float(positive), float(negative), float(wrong)


def label_support(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(n,) the probability each row's given label has: p for a 1, 1 - p for a 0."""
    p, y = _check(probabilities, labels)
    return np.where(y > 0.5, p, 1.0 - p)


def likely_wrong(
    probabilities: np.ndarray, labels: np.ndarray, estimate: NoiseEstimate, factor: float
) -> np.ndarray:
    """(n,) bool: the rows to set aside as likely wrong labels.

    Within each class, round(factor * estimated wrong share * rows of the class)
    rows, at most 90% of the class, with the least support for their label (ties
    by position).
    """
    p, y = _check(probabilities, labels)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 0:
        raise ValueError(f"factor: expected a non-negative number, got {factor!r}")
    support = label_support(p, y)
    wrong = np.zeros(p.shape[0], dtype=bool)
    for label, share in (
        (1.0, estimate.wrong_share_positive),
        (0.0, estimate.wrong_share_negative),
    ):
        members = np.flatnonzero(y == label)
        count = min(
            int(round(factor * share * members.shape[0])),
            int(MAX_SET_ASIDE_SHARE * members.shape[0]),
        )
        if count:
            weakest = members[np.lexsort((members, support[members]))[:count]]
            wrong[weakest] = True
    return wrong


def uncertainty_cuts(
    uncertainty: np.ndarray, removed: np.ndarray, given: np.ndarray
) -> dict[str, float]:
    """The lowest uncertainty among the removed rows, per class ("positive", "negative"):
    each class lost its most uncertain rows, down to this value (a class that lost none has
    no cut), but for groups of identical rows that ``capped_set_aside`` kept in part.

    uncertainty: (n,) float; removed: (n,) bool; given: (n,) 0/1 labels.
    """
    cuts: dict[str, float] = {}
    for name, members in (("positive", given > 0.5), ("negative", given <= 0.5)):
        gone = removed & members
        if gone.any():
            cuts[name] = float(uncertainty[gone].min())
    return cuts


def flip_rate_lower_bound(estimate: NoiseEstimate) -> float:
    """The flip rate less ``CORRECTION_STANDARD_ERRORS`` binomial standard errors of its
    anchors' click rate, at least 0: the rate the selection's set-aside reads
    (``at_flip_rate``) and ``clean_probability`` corrects for."""
    rho = estimate.flip_rate
    if rho <= 0.0 or estimate.anchor_rows <= 0:
        return 0.0
    error = math.sqrt(rho * (1.0 - rho) / estimate.anchor_rows)
    return max(0.0, rho - CORRECTION_STANDARD_ERRORS * error)


def clean_probability(observed: np.ndarray, flip_rate: float) -> np.ndarray:
    """The click probability before flips at ``flip_rate`` of the ``observed`` one (the
    teacher's): (q - rho) / (1 - 2 rho), within 0-1; ``observed`` unchanged at rate 0."""
    q = np.asarray(observed, dtype=np.float64)
    if flip_rate <= 0.0:
        return q
    return np.clip((q - flip_rate) / (1.0 - 2.0 * flip_rate), 0.0, 1.0)
