"""NaCS: a cross-fitted teacher, likely wrong labels set aside, and soft labels.

The steps of one selection over the candidate rows:

1. Teacher (``nacs_engine.teacher``): K proxies, each trained on all folds but
   one, give every candidate an out-of-fold click probability, recalibrated by
   Platt scaling. Where candidates have the same encoded values, the click rate
   of a row's duplicates in the other folds is pooled in, the teacher's
   probability counting as ``duplicate_prior`` rows: by default 30 where half the
   candidates or more are in groups of 100 or more, else none
   (``nacs_engine.duplicates``).
2. Noise (``nacs_engine.denoise.noise_estimate``): the flip rate is read from
   the lowest and highest probabilities, and within each class the rows whose
   given label the teacher supports least are set aside, ``set_aside_factor``
   times the count of wrong labels in that class that the flip rate less two
   standard errors of its anchors' click rate implies (the rate the correction of
   step 4 reads). On labels with few flips little is set aside. Where duplicates
   are pooled, within a group of 100 or more of them, which the ranking cannot tell
   apart, no more rows stay set aside than the wrong labels the group likely holds
   (``nacs_engine.duplicates.capped_set_aside``).
3. Selection among the kept rows. The default ``class_balance="auto"`` is
   "balanced" where fewer than 8% of the given labels are clicks
   (``resolved_class_balance``), else "stratified".
   ``coverage`` with ``class_balance="stratified"`` cuts all the candidates into equal-count
   strata of the teacher's click probability and draws evenly across them,
   uniformly among each stratum's kept rows: the coreset covers every level of
   click probability in the data's proportions, so the rows set aside (mostly
   clicks with a low probability and non-clicks with a high one) do not tilt
   it towards either end. With ``class_balance`` "balanced" (50/50 given
   labels, re-weighted to the kept rows' click rate) or "none", and for the
   other strategies, rows are chosen within each class: ``coverage`` across
   strata of the teacher's support for the given label, ``facility-location``
   by partitioned facility location on the fold model's ``embedding`` of each
   row (partitions never mix folds, whose models differ), ``random``
   uniformly (the kept rows' click rate).
4. Labels and weights: each row's soft label is ``label_mix`` (by default 0.3 in a
   balanced coreset, else 0.1: ``resolved_label_mix``) * its given label
   + (1 - ``label_mix``) * the teacher's calibrated probability, corrected for
   flips; with ``keep_click_rate`` the teacher's part is shifted on the logit
   scale until the soft labels' weighted mean is the teacher's uncorrected mean
   over the coreset, so that neither the correction nor the set-aside moves the
   click rate (``shift_to_mean``); weights are
   uniform, or facility location's cluster sizes (``weighting="craig"``),
   tempered until their effective sample size is at least
   ``min_effective_share`` of the rows. The uncertainty column is the teacher's
   probability that the given label is wrong.

Why a teacher instead of the paper's rounds (``nacs_engine.paper``): measured on
five real datasets and three model families, the paper's facility location on
raw last-layer gradients favoured hard and wrongly labelled rows and did not
carry over to other models, while the out-of-fold probabilities both find wrong
labels and, as soft labels, pass on what the proxy learned from every row
(docs/BENCHMARKS.md, docs/design/).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from nacs_engine import selection
from nacs_engine.baselines import class_quota, prior_weights
from nacs_engine.config import ClassBalance, SelectionConfig
from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.denoise.noise_estimate import (
    at_flip_rate,
    clean_probability,
    estimate_noise,
    flip_rate_lower_bound,
    label_support,
    likely_wrong,
    uncertainty_cuts,
)
from nacs_engine.duplicates import (
    CROWDED_GROUP_ROWS,
    capped_set_aside,
    duplicate_groups,
    pooled_probabilities,
    resolved_duplicate_prior,
)
from nacs_engine.errors import DataError
from nacs_engine.evaluate import auc, logistic
from nacs_engine.paper import CHUNK_ROWS, automatic_partition_size
from nacs_engine.pipeline import CoresetResult
from nacs_engine.runtime import numpy_generator, resolve_device, torch_generator
from nacs_engine.teacher import Teacher, TeacherCache, embeddings

# Difficulty strata of the coverage selection (fewer when a class takes fewer rows).
COVERAGE_STRATA = 10
# keep_click_rate: how near 0 or 1 a probability is read, and the largest logit offset.
SHIFT_EPSILON = 1e-6
MAX_LOGIT_SHIFT = 10.0
# A teacher is trusted only when its out-of-fold AUC is this many standard errors of a
# chance AUC above 0.5 (``trusted_auc``; with the default ``min_teacher_auc`` the only
# floor): on 300 rows, half of them clicks, a teacher that knows nothing reaches 0.55 about
# one time in fifteen.
TRUST_STANDARD_ERRORS = 2.0
# A teacher trusted by fewer standard errors than this, whose set-aside took more than half
# of the given clicks or of the given non-clicks, is trusted narrowly (the manifest's
# ``noise.narrow_trust``): three such selections on data with 20% symmetric flips (iPinYou,
# rwm5yr, COVID tests; 2-3 standard errors, nearly every given click set aside) lost 0.08
# and 0.02 AUC a cell against the same splits untrusted, and gained 0.05 on the third
# (bench/results/2026-12-07-fifteen-seeds-today.md). A floor chosen on two of the three
# lost on the third each time, so such a teacher stays trusted and the user is told.
NARROW_TRUST_STANDARD_ERRORS = 3.0
NARROW_TRUST_SET_ASIDE_SHARE = 0.5
# Share of the selecting phase's progress given to the teacher.
_TEACHER_SHARE = 0.9
# class_balance "auto" takes half clicks below this rate of given clicks: a coreset at the
# data's rate then holds too few clicks to learn them from. Half clicks beat the data's rate
# or were level from 0.55% to 6% given clicks on twelve datasets: below 3% with label_mix 0.1
# (iPinYou, Lahman's Gold Gloves, and six no default was tuned on), from 3.3% to 6% with 0.3
# (nassCDS and four no default was tuned on). They lost on Minneapolis stops (9.6% and 12%,
# with 0.3) and, with 0.1, on the Avazu sample (17%), and were level on Criteo's (22%):
# bench/results/2026-12-07-rare-clicks.md, bench/results/2026-12-07-balanced-label-mix.md.
RARE_CLICK_RATE = 0.08
# The given label's weight in the soft labels when ``label_mix`` is left unset. In a balanced
# coreset the clicks' soft labels otherwise sit near the teacher's low probabilities, and the
# model learns little more than the teacher knew: 0.3 against 0.1 there raised the AUC on
# iPinYou, Lahman's Gold Gloves and four datasets no default was tuned on (openintro's
# Lending Club loans, RAND's poor health, county executions, NHIS poor health), with the log
# loss within 0.01 of random's; 0.5 broke Lahman's log loss. Elsewhere 0.1 was chosen
# leave-one-dataset-out.
# bench/results/2026-12-07-balanced-label-mix.md.
LABEL_MIX = 0.1
BALANCED_LABEL_MIX = 0.3

Report = Callable[[str, float, str], None]


def run_nacs(
    data: EncodedDataset,
    config: SelectionConfig,
    k: int,
    report: Report,
    *,
    candidates: np.ndarray | None = None,
    teacher_cache: TeacherCache | None = None,
) -> CoresetResult:
    """Select ``k`` of the ``candidates`` rows of ``data`` (default: all) as ``config`` says.

    teacher_cache: where a teacher trained on the same rows with the same
    options may be found, and this run's teacher is kept (None: none is kept).

    ``report(phase, fraction, message)`` is called as the teacher trains, after
    the set-aside and after the selection; an exception it raises propagates.
    Raises DataError when the labels are not 0/1 or hold one class only.
    """
    if not isinstance(data, EncodedDataset):
        raise ValueError(f"data: expected an EncodedDataset, got {type(data).__name__}")
    if not isinstance(config, SelectionConfig) or not config.uses_teacher:
        raise ValueError("config: expected a SelectionConfig of a teacher method (nacs, ...)")
    rows = (
        np.arange(data.n_rows, dtype=np.int64)
        if candidates is None
        else np.asarray(candidates, np.int64)
    )
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= rows.shape[0]:
        raise ValueError(f"k: expected an integer in [1, {rows.shape[0]}], got {k!r}")
    if not callable(report):
        raise ValueError("report: expected a callable report(phase, fraction, message)")
    labels = np.asarray(data.labels, dtype=np.float32)
    given = labels[rows]
    if not np.all((given == 0.0) | (given == 1.0)):
        bad = given[(given != 0.0) & (given != 1.0)][0]
        raise DataError("labels_not_binary", f"labels: expected 0 or 1, found {bad!r}")
    if given.min() == given.max():
        raise DataError(
            "single_class",
            f"labels: every row is labelled {int(given[0])}; the teacher needs clicks and "
            "non-clicks (method random or stratified selects from one class)",
        )
    device = resolve_device(config.device)
    started = time.perf_counter()
    report("selecting", 0.0, f"{config.method}: training the teacher models")

    def teacher_progress(fraction: float, message: str) -> None:
        report("selecting", _TEACHER_SHARE * fraction, message)

    cache = teacher_cache or TeacherCache()
    teacher = cache.get(
        data.features,
        labels,
        rows,
        data.field_dims,
        config,
        device=device,
        progress=teacher_progress,
    )
    teacher_seconds = time.perf_counter() - started

    started = time.perf_counter()
    probabilities = teacher.probabilities
    group, size = duplicate_groups(data.features, rows)
    group_rows = size[group]
    duplicated = group_rows > 1
    crowded = float((group_rows >= CROWDED_GROUP_ROWS).mean())
    prior = resolved_duplicate_prior(config.duplicate_prior, crowded)
    if prior > 0.0 and duplicated.any():
        probabilities = pooled_probabilities(probabilities, given, teacher.folds, group, prior)
    estimate = estimate_noise(probabilities, given)
    signal = teacher_signal(teacher, given)
    least = trusted_auc(given, config.min_teacher_auc)
    trusted = signal is None or signal >= least
    spread = chance_auc_spread(given)
    margin = None if signal is None or spread is None else (signal - 0.5) / spread
    if not trusted:
        report(
            "denoising",
            0.0,
            f"the teacher's out-of-fold AUC {signal:.3f} is below {least:.3f}: "
            "its predictions are not used",
        )
    # The set-aside reads the flip rate as the correction does, two standard errors lower.
    aside_rate = flip_rate_lower_bound(estimate) if config.denoise and trusted else 0.0
    click_rate = float(np.mean(given, dtype=np.float64))
    at_rate = at_flip_rate(estimate, aside_rate, click_rate)
    if aside_rate > 0.0:
        ranked = likely_wrong(probabilities, given, at_rate, config.set_aside_factor)
        # Where pooled, within each crowded group no more than its likely wrong labels.
        aside = (
            capped_set_aside(ranked, probabilities, given, group, aside_rate) if prior else ranked
        )
        capped = int(ranked.sum() - aside.sum())
    else:
        aside = np.zeros(rows.shape[0], dtype=bool)
        capped = 0
    kept = np.flatnonzero(~aside)  # positions into rows
    if kept.shape[0] < k:
        # The budget needs more rows than survive: keep the best supported of those set aside.
        support = label_support(probabilities, given)
        order = np.flatnonzero(aside)[np.argsort(-support[aside], kind="stable")]
        kept = np.sort(np.concatenate([kept, order[: k - kept.shape[0]]]))
        aside = np.ones(rows.shape[0], dtype=bool)
        aside[kept] = False
    cuts = uncertainty_cuts(1.0 - label_support(probabilities, given), aside, given)
    class_balance = resolved_class_balance(config.class_balance, trusted, click_rate)
    label_mix = resolved_label_mix(config.label_mix, class_balance)
    config = replace(config, class_balance=class_balance)
    denoising_seconds = time.perf_counter() - started
    report(
        "denoising",
        1.0,
        f"estimated flip rate {estimate.flip_rate:.3f}; {int(aside.sum())} rows set aside",
    )

    started = time.perf_counter()
    strategy = "random" if config.method == "denoised-random" or not trusted else config.selection
    picked, craig, objective = _select(
        data, teacher, given, kept, k, strategy, config, device, report
    )
    weights = np.ones(k)
    if config.weighting == "craig" and craig is not None:
        weights = _weights(craig, config.min_effective_share)
    picked_given = given[picked]
    if config.class_balance == "balanced":
        weights = weights * prior_weights(picked_given, float(given[kept].mean()))
    weights = weights / weights.mean()
    correction = 0.0
    logit_shift = 0.0
    if config.relabel and trusted:
        if config.flip_correction:
            correction = flip_rate_lower_bound(estimate)
        teacher_p = clean_probability(probabilities[picked], correction)
        if config.keep_click_rate:
            target = float(np.average(probabilities[picked], weights=weights))
            teacher_p, logit_shift = shift_to_mean(
                teacher_p, picked_given, label_mix, weights, target
            )
        soft = label_mix * picked_given + (1.0 - label_mix) * teacher_p
    else:
        soft = picked_given.astype(np.float64)
    uncertainty = 1.0 - label_support(probabilities[picked], picked_given)
    selecting_seconds = teacher_seconds + time.perf_counter() - started
    report("selecting", 1.0, f"{k} rows selected")

    dataset_rows = rows[picked]
    effective = float(weights.sum() ** 2 / (weights**2).sum()) / k
    diagnostics: dict[str, Any] = {
        "method": config.method,
        "backbone": config.backbone,
        "device": str(device),
        "phase_seconds": {"selecting": selecting_seconds, "denoising": denoising_seconds},
        "data_rows": int(data.n_rows),
        "data_clicks": int(labels.sum(dtype=np.float64)),
        "candidate_rows": int(rows.shape[0]),
        "coreset_rows": int(k),
        "coreset_clicks": int(picked_given.sum(dtype=np.float64)),
        "noise": estimate.to_dict()
        | {
            "teacher_trusted": trusted,
            "narrow_trust": narrow_trust(
                margin if trusted else None,
                aside_share(aside, given > 0.5),
                aside_share(aside, given <= 0.5),
            ),
            "set_aside_factor": float(config.set_aside_factor) if config.denoise else 0.0,
            "correction_flip_rate": correction,
            "set_aside_flip_rate": aside_rate,
            "set_aside_wrong_share_positive": at_rate.wrong_share_positive,
            "set_aside_wrong_share_negative": at_rate.wrong_share_negative,
            "set_aside_rows": int(aside.sum()),
            "set_aside_capped_rows": capped,
            "set_aside_positive": int((aside & (given > 0.5)).sum()),
            "set_aside_negative": int((aside & (given <= 0.5)).sum()),
            "uncertainty_cuts": cuts,
        },
        "teacher": teacher.summary()
        | {
            "signal_auc": signal,
            "min_signal_auc": least,
            "signal_standard_errors": margin,
            "trusted": trusted,
            "duplicated_share": float(duplicated.mean()),
            "crowded_share": crowded,
            "duplicate_prior": prior,
        },
        "selection": {
            "strategy": strategy,
            "class_balance": config.class_balance,
            "label_mix": label_mix if config.relabel and trusted else 1.0,
            "embedding": config.embedding if strategy == "facility-location" else None,
            "weighting": config.weighting if strategy == "facility-location" else "uniform",
            "objective": objective,
            "effective_sample_share": effective,
        },
        "soft_label_mean": float(soft.mean()),
        "soft_label_mean_abs_change": float(np.abs(soft - picked_given).mean()),
        "soft_label_logit_shift": logit_shift,
    }
    return CoresetResult(
        rows=dataset_rows.astype(np.int64),
        labels=picked_given.astype(np.float32),
        soft_labels=np.clip(soft, 0.0, 1.0).astype(np.float32),
        weights=weights.astype(np.float32),
        uncertainty=uncertainty.astype(np.float32),
        diagnostics=diagnostics,
    )


def shift_to_mean(
    teacher_p: np.ndarray,
    given: np.ndarray,
    label_mix: float,
    weights: np.ndarray,
    target: float,
) -> tuple[np.ndarray, float]:
    """``teacher_p`` shifted by one logit offset d, sigmoid(logit(p) + d), so that the
    weighted mean of the soft labels ``label_mix`` * ``given`` + (1 - ``label_mix``) * the
    shifted probabilities is ``target``; returns (shifted probabilities, d).

    Probabilities of exactly 0 or 1 are read as ``SHIFT_EPSILON`` from them; d stays
    within +-``MAX_LOGIT_SHIFT`` (the nearest mean there when ``target`` is out of reach),
    and is 0 at ``label_mix`` 1, where the teacher has no part in the soft labels.
    """
    p = np.asarray(teacher_p, dtype=np.float64)
    if label_mix >= 1.0 or p.size == 0:
        return p, 0.0
    w = np.asarray(weights, dtype=np.float64)
    fixed = label_mix * float(np.average(given, weights=w))
    clipped = np.clip(p, SHIFT_EPSILON, 1.0 - SHIFT_EPSILON)
    logits = np.log(clipped) - np.log1p(-clipped)

    def shifted(shift: float) -> np.ndarray:
        return logistic(logits + shift)

    low, high = -MAX_LOGIT_SHIFT, MAX_LOGIT_SHIFT
    # The mean rises with the shift: bisect to well below a millionth of the mean.
    for _ in range(60):
        middle = 0.5 * (low + high)
        mean = fixed + (1.0 - label_mix) * float(np.average(shifted(middle), weights=w))
        if mean < target:
            low = middle
        else:
            high = middle
    shift = 0.5 * (low + high)
    return shifted(shift), float(shift)


def teacher_signal(teacher: Teacher, given: np.ndarray) -> float | None:
    """The AUC of the teacher's out-of-fold predictions against the ``given`` labels of its
    candidates (None with one class): how well it tells the data's clicks from non-clicks."""
    if given.min() == given.max():
        return None
    return auc(given, teacher.logits)


def chance_auc_spread(given: np.ndarray) -> float | None:
    """The standard error of the AUC of a teacher that knows nothing on the ``given`` labels
    (Mann-Whitney: sqrt((n1 + n0 + 1) / (12 n1 n0))); None with one class."""
    clicks = float(np.count_nonzero(given > 0.5))
    others = float(given.shape[0]) - clicks
    if clicks == 0 or others == 0:
        return None
    return math.sqrt((clicks + others + 1.0) / (12.0 * clicks * others))


def trusted_auc(given: np.ndarray, min_teacher_auc: float) -> float:
    """The out-of-fold AUC the teacher must reach on the ``given`` labels to be trusted: the
    higher of ``min_teacher_auc`` and 0.5 plus ``TRUST_STANDARD_ERRORS`` standard errors of
    the AUC of a teacher that knows nothing (``chance_auc_spread``), which decides for any
    ``min_teacher_auc`` up to 0.5 (the default). 0 trusts it always."""
    if min_teacher_auc <= 0.0:
        return 0.0
    chance = chance_auc_spread(given)
    if chance is None:
        return float(min_teacher_auc)
    return max(float(min_teacher_auc), 0.5 + TRUST_STANDARD_ERRORS * chance)


def aside_share(aside: np.ndarray, in_class: np.ndarray) -> float:
    """The share of the rows of a class (``in_class``) that ``aside`` sets aside; 0 when the
    class has none."""
    members = int(np.count_nonzero(in_class))
    return float(np.count_nonzero(aside & in_class)) / members if members else 0.0


def narrow_trust(margin: float | None, clicks_aside: float, others_aside: float) -> bool:
    """Whether a trusted teacher (``margin``: its AUC over chance in standard errors; None
    when not trusted or not measured) was trusted narrowly: by fewer than
    ``NARROW_TRUST_STANDARD_ERRORS``, with more than ``NARROW_TRUST_SET_ASIDE_SHARE`` of the
    given clicks or non-clicks set aside on its word."""
    return (
        margin is not None
        and margin < NARROW_TRUST_STANDARD_ERRORS
        and max(clicks_aside, others_aside) > NARROW_TRUST_SET_ASIDE_SHARE
    )


def resolved_class_balance(
    class_balance: ClassBalance, trusted: bool, click_rate: float
) -> ClassBalance:
    """The class mix a selection takes: ``class_balance`` itself unless it is "auto", which
    is "balanced" where the teacher is trusted and the candidates' given ``click_rate`` is
    below ``RARE_CLICK_RATE``, else "stratified"."""
    if class_balance != "auto":
        return class_balance
    return "balanced" if trusted and click_rate < RARE_CLICK_RATE else "stratified"


def resolved_label_mix(label_mix: float | None, class_balance: ClassBalance) -> float:
    """The given label's weight in the soft labels: ``label_mix`` itself when set, else
    ``BALANCED_LABEL_MIX`` for a "balanced" ``class_balance`` (as resolved), else
    ``LABEL_MIX``."""
    if label_mix is not None:
        return float(label_mix)
    return BALANCED_LABEL_MIX if class_balance == "balanced" else LABEL_MIX


def _groups(
    given: np.ndarray, kept: np.ndarray, k: int, class_balance: str
) -> list[tuple[np.ndarray, int]]:
    """(kept positions of one class, rows to take) per class; one group for "none"."""
    if class_balance == "none":
        return [(kept, k)]
    positive = kept[given[kept] > 0.5]
    negative = kept[given[kept] <= 0.5]
    take_positive, take_negative = class_quota(given[kept], k, class_balance)
    return [(positive, take_positive), (negative, take_negative)]


def _select(
    data: EncodedDataset,
    teacher: Teacher,
    given: np.ndarray,
    kept: np.ndarray,
    k: int,
    strategy: str,
    config: SelectionConfig,
    device: torch.device,
    report: Report,
) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Positions (into the candidates, ascending) of the k rows, their CRAIG weights
    (facility location only, aligned) and the facility-location objective."""
    rng = numpy_generator(config.seed, "selection")
    if strategy == "coverage" and config.class_balance == "stratified":
        report("selecting", 1.0 - 1e-9, "coverage: drawing across the teacher's probability strata")
        strata = _probability_strata(teacher.probabilities, kept)
        return _draw_across(strata, k, rng), None, None
    support = label_support(teacher.probabilities, given)
    chosen: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    objective = 0.0
    groups = _groups(given, kept, k, config.class_balance)
    for index, (members, take) in enumerate(groups):
        if take == 0:
            continue
        if strategy == "random":
            chosen.append(np.sort(rng.choice(members, size=take, replace=False)))
        elif strategy == "coverage":
            chosen.append(_coverage(members, support[members], take, rng))
        else:
            picks, weights, value = _facility_location(
                data, teacher, given, members, take, config, device
            )
            chosen.append(picks)
            counts.append(weights)
            objective += value
        report(
            "selecting",
            _TEACHER_SHARE + (1.0 - _TEACHER_SHARE) * (index + 1) / len(groups),
            f"{strategy}: {sum(c.shape[0] for c in chosen)}/{k} rows chosen",
        )
    picked = np.concatenate(chosen)
    order = np.argsort(picked, kind="stable")
    craig = np.concatenate(counts)[order] if counts else None
    return picked[order], craig, objective if strategy == "facility-location" else None


def _probability_strata(probabilities: np.ndarray, kept: np.ndarray) -> list[np.ndarray]:
    """The kept positions in each of ``COVERAGE_STRATA`` equal-count strata of the teacher's
    click probability over all the candidates (set-aside rows count toward their stratum)."""
    n = probabilities.shape[0]
    order = np.lexsort((np.arange(n), probabilities))
    is_kept = np.zeros(n, dtype=bool)
    is_kept[kept] = True
    return [
        np.sort(stratum[is_kept[stratum]]) for stratum in np.array_split(order, COVERAGE_STRATA)
    ]


def _coverage(
    members: np.ndarray, support: np.ndarray, take: int, rng: np.random.Generator
) -> np.ndarray:
    """``take`` of ``members``, drawn evenly across equal-count strata of ``support``."""
    strata_count = int(min(COVERAGE_STRATA, take, members.shape[0]))
    ordered = members[np.lexsort((members, support))]
    return _draw_across(np.array_split(ordered, strata_count), take, rng)


def _draw_across(strata: list[np.ndarray], take: int, rng: np.random.Generator) -> np.ndarray:
    """``take`` rows drawn uniformly within strata, as evenly across them as their sizes allow."""
    sizes = np.array([s.shape[0] for s in strata])
    quota = np.zeros(len(strata), dtype=np.int64)
    left = take
    # Water-filling: each stratum takes an even share of what is left, at most its size.
    for position, stratum in enumerate(np.argsort(sizes, kind="stable")):
        share = left // (len(strata) - position)
        quota[stratum] = min(share, sizes[stratum])
        left -= int(quota[stratum])
    for stratum in np.argsort(-sizes, kind="stable"):
        extra = min(left, int(sizes[stratum] - quota[stratum]))
        quota[stratum] += extra
        left -= extra
    picks = [
        rng.choice(s, size=int(q), replace=False) for s, q in zip(strata, quota, strict=True) if q
    ]
    return np.sort(np.concatenate(picks))


def _facility_location(
    data: EncodedDataset,
    teacher: Teacher,
    given: np.ndarray,
    members: np.ndarray,
    take: int,
    config: SelectionConfig,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray, float]:
    """``take`` of ``members`` by partitioned facility location, fold by fold and chunk by chunk."""
    generator = torch_generator(config.seed, "facility_location", device)
    folds = [members[teacher.folds[members] == f] for f in range(len(teacher.models))]
    chunks = [
        chunk
        for fold_members in folds
        if fold_members.shape[0]
        for chunk in np.array_split(fold_members, -(-fold_members.shape[0] // CHUNK_ROWS))
    ]
    budgets = selection.partition_budgets([c.shape[0] for c in chunks], take)
    partition_size = config.partition_size or automatic_partition_size(members.shape[0])
    picks: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    objective = 0.0
    for chunk, budget in zip(chunks, budgets, strict=True):
        if budget == 0:
            continue
        vectors = embeddings(
            teacher, data.features, data.labels, chunk, config.embedding, device=device
        )
        result = selection.select_partitions(
            vectors,
            int(budget),
            partition_size=int(min(partition_size, chunk.shape[0])),
            eps=config.eps,
            generator=generator,
        )
        del vectors
        picks.append(chunk[result.indices.cpu().numpy()])
        # Weights have mean 1 over the chunk's picks: back to rows represented per pick.
        counts.append(
            result.weights.cpu().numpy().astype(np.float64) * chunk.shape[0] / int(budget)
        )
        objective += float(result.objective)
    return np.concatenate(picks), np.concatenate(counts), objective


def _weights(counts: np.ndarray, min_effective_share: float) -> np.ndarray:
    """CRAIG counts raised to the largest power in [0, 1] whose effective sample size
    (sum w)^2 / sum w^2 is at least ``min_effective_share`` of the rows."""
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 1e-12)

    def share(power: float) -> float:
        w = counts**power
        return float(w.sum() ** 2 / (w**2).sum()) / counts.shape[0]

    if share(1.0) >= min_effective_share:
        return counts
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        if share(middle) >= min_effective_share:
            low = middle
        else:
            high = middle
    return counts**low
