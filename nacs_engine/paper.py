"""The paper's NaCS (method ``nacs-paper``): gradient-matching rounds, MC-dropout denoising,
relabelling.

How the pieces are sized here:
- Over-selection: when denoising, the rounds select k' = ceil(k / (1 - remove_rate))
  rows (at most n) and denoising removes exactly k' - k, so the result has k rows.
- Class balance: "stratified" and "balanced" fix the number of positives and
  negatives once (``baselines.class_quota``) for k' and for k; each round
  selects its share of each class among that class's rows, and denoising
  removes the highest-scoring rows within each class down to the quota for k,
  so the class mix the user asked for survives denoising. "none" selects and
  removes over all rows together.
- Round budgets: each class quota is split evenly over the rounds (the first
  rounds take the remainder).
- Candidates: every round considers all rows not yet selected, streamed in
  chunks of at most ``CHUNK_ROWS`` rows (one ``select_partitions`` call per
  chunk, its budget proportional to the chunk), so memory stays bounded for
  data of any size while no row is left out.
- Partition size: ``config.partition_size``, or else the largest that keeps
  a round's greedy within what it costs at 1M rows. A partition of N rows
  costs N^2 similarities, so a pass over n candidates costs n N; the
  automatic size is ``PAIRS_PER_PASS`` / n, clipped to [``MIN_PARTITION``,
  ``MAX_PARTITION``] (and to the rows available): 512 rows from 1M
  candidates on, which keeps selection well under full training on a CPU,
  and 4,096 rows up to 125,000 candidates. Larger partitions give facility
  location a wider view: on MovieLens they gained 0.006-0.013 test AUC with
  clean labels and 0.001-0.008 with noise, for selection several times
  slower there (docs/BENCHMARKS.md).
- Label-correction horizon: T is the number of optimizer steps the rounds'
  training will take in total (known in advance from the round sizes), so the
  global trust g(t) rises from about 0 in round 1 to about 1 in the last
  epoch. A warm-up (``config.warmup_ratio``) trains with the given labels and
  is not counted in T.
- MC-dropout losses are taken against the given labels: a row whose given
  label the model keeps disputing, across dropout masks, scores high.
- Soft labels: by default the correction uses the proxy's prediction for each
  row at the moment it was selected (``config.soft_labels``), not the final
  proxy's, which has fitted every coreset row's given label (see
  ``_Selection._soft_labels``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from nacs_engine import selection
from nacs_engine.baselines import class_quota, prior_weights
from nacs_engine.config import SelectionConfig
from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.denoise.label_correction import (
    corrected_targets,
    correction_strength,
    global_trust,
)
from nacs_engine.denoise.mc_dropout import mc_dropout_scores
from nacs_engine.denoise.noise_estimate import uncertainty_cuts
from nacs_engine.errors import DataError
from nacs_engine.gradients import adam_precondition, head_moments, last_layer_gradients
from nacs_engine.models.registry import CTRModel, build_model
from nacs_engine.pipeline import CoresetResult
from nacs_engine.runtime import numpy_generator, resolve_device, seeded_scope, torch_generator
from nacs_engine.train import (
    as_feature_tensor,
    default_batch_size,
    make_optimizer,
    predict_logits,
    steps_per_epoch,
    train_label_correcting,
)

CHUNK_ROWS = 1 << 20
# Similarities one round's greedy may compute: 1M candidates in partitions of 512.
PAIRS_PER_PASS = 512 * 1_000_000
MIN_PARTITION = 512
MAX_PARTITION = 4096
# Rows per forward pass when scoring candidates (inference needs no small batches).
INFERENCE_BATCH_ROWS = 16384
# Share of each round's progress given to scoring and selection; the rest is training.
_SELECT_SHARE = 0.8
# Share of the selecting phase's progress given to the warm-up, when there is one.
_WARMUP_SHARE = 0.1
# Training reports progress after this many optimizer steps.
_REPORT_EVERY_STEPS = 8

Report = Callable[[str, float, str], None]


@dataclass
class _Group:
    """Rows selected together: one class, or all rows when class balance is "none"."""

    name: str
    mask: np.ndarray  # (n,) bool
    pre_quota: int
    final_quota: int
    round_budgets: list[int]


def over_selection_size(k: int, n_rows: int, remove_rate: float, denoise: bool) -> int:
    """k' = ceil(k / (1 - remove_rate)) when denoising (at most n_rows), else k."""
    if not denoise or remove_rate <= 0:
        return k
    return min(n_rows, math.ceil(k / (1.0 - remove_rate) - 1e-9))


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers differing by at most one, larger first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def automatic_partition_size(candidates: int) -> int:
    """Rows per partition for a round over ``candidates`` rows: ``PAIRS_PER_PASS`` / candidates,
    within [``MIN_PARTITION``, ``MAX_PARTITION``] and at most ``candidates``."""
    wanted = PAIRS_PER_PASS // max(candidates, 1)
    return int(max(1, min(candidates, max(MIN_PARTITION, min(MAX_PARTITION, wanted)))))


def run_nacs_paper(
    data: EncodedDataset, config: SelectionConfig, k: int, report: Report
) -> CoresetResult:
    """Select ``k`` rows of ``data`` by the paper's NaCS as ``config`` says; returns a
    ``CoresetResult``.

    ``report(phase, fraction, message)`` is called after every batch of
    gradients, every block of partitions, every training epoch and every
    MC-dropout pass; an exception it raises propagates.
    """
    if not isinstance(data, EncodedDataset):
        raise ValueError(f"data: expected an EncodedDataset, got {type(data).__name__}")
    if not isinstance(config, SelectionConfig):
        raise ValueError(f"config: expected a SelectionConfig, got {type(config).__name__}")
    if config.method != "nacs-paper":
        raise ValueError(f"config: method {config.method!r} is not nacs-paper")
    if config.class_balance == "auto":
        # "auto" asks a trusted teacher (the other methods'); the paper's rounds have none.
        config = replace(config, class_balance="stratified")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= data.n_rows:
        raise ValueError(f"k: expected an integer in [1, {data.n_rows}], got {k!r}")
    if not callable(report):
        raise ValueError("report: expected a callable report(phase, fraction, message)")
    labels = np.asarray(data.labels, dtype=np.float32)
    if not np.all((labels == 0.0) | (labels == 1.0)):
        bad = labels[(labels != 0.0) & (labels != 1.0)][0]
        raise DataError("labels_not_binary", f"labels: expected 0 or 1, found {bad!r}")

    device = resolve_device(config.device)
    with seeded_scope(config.seed, "dropout", device):
        return _Selection(data, labels, config, k, report, device).run()


class _Selection:
    """The state of one NaCS run: the proxy model, its optimizer, the selection so far."""

    def __init__(
        self,
        data: EncodedDataset,
        labels: np.ndarray,
        config: SelectionConfig,
        k: int,
        report: Report,
        device: torch.device,
    ) -> None:
        self.data = data
        self.labels = labels
        self.config = config
        self.k = k
        self.report = report
        self.device = device
        self.n = data.n_rows
        self.k_pre = over_selection_size(k, self.n, config.remove_rate, config.denoise)
        self.rng = numpy_generator(config.seed, "partitions")
        self.greedy_generator = torch_generator(config.seed, "greedy", device)
        self.training_generator = torch_generator(config.seed, "training")
        self.batch_size = config.batch_size or default_batch_size(self.k_pre)
        self.data_click_rate = float(labels.mean())
        self.groups = self._groups()
        with seeded_scope(config.seed, "model_init", device):
            model = build_model(
                config.backbone, data.field_dims, embed_dim=config.embed_dim, dropout=config.dropout
            )
        self.model: CTRModel = model.to(device)
        self.optimizer = make_optimizer(
            self.model, learning_rate=config.learning_rate, weight_decay=config.weight_decay
        )
        self.step = 0
        cumulative = np.cumsum(
            [sum(g.round_budgets[r] for g in self.groups) for r in range(config.rounds)]
        )
        self.total_steps = max(
            1,
            sum(
                config.epochs_per_round * steps_per_epoch(int(c), self.batch_size)
                for c in cumulative
            ),
        )
        self.rows: list[np.ndarray] = []
        self.craig_weights: list[np.ndarray] = []
        # The proxy's probability for each selected row when it was selected (aligned with rows).
        self.selection_probs: list[np.ndarray] = []
        self.warmup_share = _WARMUP_SHARE if config.warmup_ratio > 0 else 0.0

    def _report_rounds(self, fraction: float, message: str) -> None:
        """Progress of the rounds (``fraction`` in [0, 1]) after the warm-up's share."""
        self.report("selecting", self.warmup_share + (1.0 - self.warmup_share) * fraction, message)

    def _groups(self) -> list[_Group]:
        rounds = self.config.rounds
        if self.config.class_balance == "none":
            mask = np.ones(self.n, dtype=bool)
            return [_Group("all", mask, self.k_pre, self.k, split_evenly(self.k_pre, rounds))]
        pre_pos, pre_neg = class_quota(self.labels, self.k_pre, self.config.class_balance)
        final_pos, final_neg = class_quota(self.labels, self.k, self.config.class_balance)
        # Denoising can only remove rows: never ask a class for more than it was given.
        final_pos = min(final_pos, pre_pos)
        final_neg = self.k - final_pos
        if final_neg > pre_neg:
            final_neg, final_pos = pre_neg, self.k - pre_neg
        positive = self.labels > 0.5
        return [
            _Group("positive", positive, pre_pos, final_pos, split_evenly(pre_pos, rounds)),
            _Group("negative", ~positive, pre_neg, final_neg, split_evenly(pre_neg, rounds)),
        ]

    # -- the run ---------------------------------------------------------------------

    def run(self) -> CoresetResult:
        started = time.perf_counter()
        config = self.config
        self.report(
            "selecting",
            0.0,
            f"{config.method}: selecting {self.k_pre} rows in {config.rounds} rounds",
        )
        warmup_steps = self._warmup()
        selected_mask = np.zeros(self.n, dtype=bool)
        round_log: list[dict[str, Any]] = []
        for round_index in range(config.rounds):
            round_started = time.perf_counter()
            entry = self._round(round_index, selected_mask)
            round_log.append(entry | {"seconds": time.perf_counter() - round_started})
        rows = np.concatenate(self.rows)
        weights = np.concatenate(self.craig_weights).astype(np.float64)
        probs = np.concatenate(self.selection_probs)
        selecting_seconds = time.perf_counter() - started
        self.report("selecting", 1.0, f"{rows.shape[0]} rows selected")

        started = time.perf_counter()
        uncertainty = np.zeros(rows.shape[0], dtype=np.float64)
        removed = 0
        cuts: dict[str, float] = {}
        if config.denoise and self.k_pre > self.k:
            keep, uncertainty = self._denoise(rows)
            removed = int(rows.shape[0] - keep.shape[0])
            dropped = np.ones(rows.shape[0], dtype=bool)
            dropped[keep] = False
            cuts = uncertainty_cuts(uncertainty, dropped, self.labels[rows])
            rows, weights, uncertainty, probs = (
                rows[keep],
                weights[keep],
                uncertainty[keep],
                probs[keep],
            )
        elif config.denoise:
            self.report("denoising", 1.0, "nothing to remove")
        order = np.argsort(rows, kind="stable")
        rows, weights, uncertainty, probs = (
            rows[order],
            weights[order],
            uncertainty[order],
            probs[order],
        )
        given = self.labels[rows]
        soft_labels, final_correction = self._soft_labels(rows, given, probs)
        if config.class_balance == "balanced":
            weights = weights * prior_weights(given, self.data_click_rate)
        weights = weights / weights.mean()
        denoising_seconds = time.perf_counter() - started
        if config.denoise:
            self.report("denoising", 1.0, f"{removed} rows removed, {rows.shape[0]} kept")

        diagnostics: dict[str, Any] = {
            "method": config.method,
            "backbone": config.backbone,
            "device": str(self.device),
            "phase_seconds": {"selecting": selecting_seconds, "denoising": denoising_seconds},
            "data_rows": int(self.n),
            "data_clicks": int(self.labels.sum()),
            "coreset_rows": int(rows.shape[0]),
            "coreset_clicks": int(given.sum()),
            "pre_denoise_rows": int(self.k_pre),
            "removed_rows": removed,
            "uncertainty_cuts": cuts,
            "rounds": round_log,
            "batch_size": int(self.batch_size),
            "warmup_steps": int(warmup_steps),
            "planned_steps": int(self.total_steps),
            "steps": int(self.step),
            "final_global_trust": global_trust(self.step, self.total_steps),
            "final_mean_correction": final_correction,
            "soft_label_mean_abs_change": float(np.abs(soft_labels - given).mean())
            if given.size
            else 0.0,
        }
        return CoresetResult(
            rows=rows.astype(np.int64),
            labels=given.astype(np.float32),
            soft_labels=soft_labels.astype(np.float32),
            weights=weights.astype(np.float32),
            uncertainty=uncertainty.astype(np.float32),
            diagnostics=diagnostics,
        )

    def _warmup(self) -> int:
        ratio = self.config.warmup_ratio
        count = int(round(ratio * self.n))
        if ratio <= 0 or count < 2:
            return 0
        rows = np.sort(
            numpy_generator(self.config.seed, "warmup").choice(self.n, size=count, replace=False)
        )
        self.report("selecting", 0.0, f"warm-up on {count} rows")

        def on_batch(done: int, total: int) -> None:
            self.report(
                "selecting", self.warmup_share * done / total, f"warm-up: batch {done}/{total}"
            )

        log = train_label_correcting(
            self.model,
            self.optimizer,
            self.data.features[rows],
            torch.from_numpy(self.labels[rows]),
            None,
            epochs=1,
            batch_size=self.batch_size,
            device=self.device,
            generator=torch_generator(self.config.seed, "warmup"),
            start_step=0,
            total_steps=1,
            relabel=False,
            on_batch=on_batch,
            report_every=_REPORT_EVERY_STEPS,
        )
        return log.steps

    def _round(self, round_index: int, selected_mask: np.ndarray) -> dict[str, Any]:
        rounds = self.config.rounds
        base = round_index / rounds
        groups = [
            (g, g.round_budgets[round_index])
            for g in self.groups
            if g.round_budgets[round_index] > 0
        ]
        candidates_total = sum(int(np.count_nonzero(g.mask & ~selected_mask)) for g, _ in groups)
        done_rows = 0
        objective = 0.0
        picked = 0
        partition_sizes: list[int] = []
        moments = head_moments(self.optimizer, self.model.head)
        round_partition_size = self.config.partition_size or automatic_partition_size(
            candidates_total
        )

        for group, budget in groups:
            candidates = np.flatnonzero(group.mask & ~selected_mask)
            if candidates.shape[0] > CHUNK_ROWS:
                candidates = self.rng.permutation(candidates)
            partition_size = min(round_partition_size, candidates.shape[0])
            partition_sizes.append(int(partition_size))
            chunk_count = -(-candidates.shape[0] // CHUNK_ROWS)
            chunks = np.array_split(candidates, chunk_count)
            chunk_budgets = selection.partition_budgets([c.shape[0] for c in chunks], budget)
            for chunk, chunk_budget in zip(chunks, chunk_budgets, strict=True):
                if chunk_budget == 0:
                    done_rows += chunk.shape[0]
                    continue

                def scored(rows_done: int, rows_total: int, offset: int = done_rows) -> None:
                    fraction = (offset + 0.5 * rows_done) / max(candidates_total, 1)
                    self._report_rounds(
                        base + _SELECT_SHARE * fraction / rounds,
                        f"round {round_index + 1}/{rounds}: gradients of "
                        f"{offset + rows_done}/{candidates_total} rows",
                    )

                gradients, probs = self._preconditioned_gradients(chunk, moments, scored)
                drawn, pool = self._random_share(chunk.shape[0], int(chunk_budget))
                if drawn.shape[0]:
                    self.rows.append(chunk[drawn])
                    self.selection_probs.append(probs[drawn])
                    self.craig_weights.append(np.ones(drawn.shape[0], dtype=np.float64))
                    selected_mask[chunk[drawn]] = True
                    picked += int(drawn.shape[0])
                    gradients = gradients[torch.from_numpy(pool).to(gradients.device)]
                fl_budget = int(chunk_budget) - int(drawn.shape[0])
                if fl_budget == 0:
                    done_rows += chunk.shape[0]
                    continue

                def blocks(
                    fraction: float,
                    message: str,
                    offset: int = done_rows,
                    size: int = chunk.shape[0],
                ) -> None:
                    overall = (offset + size * (0.5 + 0.5 * fraction)) / max(candidates_total, 1)
                    self._report_rounds(
                        base + _SELECT_SHARE * overall / rounds,
                        f"round {round_index + 1}/{rounds}: {message}",
                    )

                chosen = selection.select_partitions(
                    gradients,
                    fl_budget,
                    partition_size=int(min(partition_size, pool.shape[0])),
                    eps=self.config.eps,
                    generator=self.greedy_generator,
                    progress=blocks,
                )
                del gradients
                positions = pool[chosen.indices.cpu().numpy()]
                self.rows.append(chunk[positions])
                self.selection_probs.append(probs[positions])
                self.craig_weights.append(chosen.weights.cpu().numpy().astype(np.float64))
                selected_mask[chunk[positions]] = True
                objective += float(chosen.objective)
                picked += int(positions.shape[0])
                done_rows += chunk.shape[0]

        training = self._train_on_selection(round_index)
        return {
            "round": round_index + 1,
            "candidates": int(candidates_total),
            "selected": int(picked),
            "selected_total": int(selected_mask.sum()),
            "objective": float(objective),
            "partition_sizes": partition_sizes,
            "mean_correction": float(np.mean(training.epoch_corrections))
            if training.epoch_corrections
            else 0.0,
            "train_loss": float(np.mean(training.epoch_losses)) if training.epoch_losses else 0.0,
            "steps": int(self.step),
        }

    def _random_share(self, n_candidates: int, budget: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions among ``n_candidates`` drawn uniformly for ``config.random_share`` of
        ``budget``, and the positions left to facility location, both ascending."""
        count = int(round(self.config.random_share * budget))
        everything = np.arange(n_candidates)
        if count == 0:
            return everything[:0], everything
        drawn = np.sort(self.rng.choice(n_candidates, size=count, replace=False))
        left = np.ones(n_candidates, dtype=bool)
        left[drawn] = False
        return drawn, everything[left]

    @torch.no_grad()
    def _preconditioned_gradients(
        self, rows: np.ndarray, moments: Any, on_batch: Callable[[int, int], None]
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Adam-preconditioned last-layer gradients of ``rows`` under the current model, (r, H + 1),
        and the model's click probabilities for them, (r,)."""
        self.model.eval()
        hidden = self.model.head.in_features
        out = torch.empty(rows.shape[0], hidden + 1, dtype=torch.float32, device=self.device)
        probs = np.empty(rows.shape[0], dtype=np.float64)
        for start in range(0, rows.shape[0], INFERENCE_BATCH_ROWS):
            stop = min(rows.shape[0], start + INFERENCE_BATCH_ROWS)
            batch_rows = rows[start:stop]
            x = as_feature_tensor(self.data.features[batch_rows]).to(self.device)
            y = torch.from_numpy(self.labels[batch_rows]).to(self.device)
            logits, h = self.model.logits_and_features(x)
            p = torch.sigmoid(logits)
            probs[start:stop] = torch.sigmoid(logits.double()).cpu().numpy()
            targets = (
                corrected_targets(y, p, self.step, self.total_steps) if self.config.relabel else y
            )
            out[start:stop] = adam_precondition(last_layer_gradients(logits, h, targets), moments)
            on_batch(stop, rows.shape[0])
        return out, probs

    def _selected_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        rows = np.concatenate(self.rows)
        weights = np.concatenate(self.craig_weights)
        if self.config.class_balance == "balanced":
            weights = weights * prior_weights(self.labels[rows], self.data_click_rate)
        return rows, weights / weights.mean()

    def _train_on_selection(self, round_index: int) -> Any:
        rows, weights = self._selected_arrays()
        rounds = self.config.rounds
        base = round_index / rounds

        epochs = self.config.epochs_per_round
        epochs_done = [0]

        def on_epoch(epoch: int, loss: float, correction: float) -> None:
            epochs_done[0] = epoch + 1
            fraction = _SELECT_SHARE + (1 - _SELECT_SHARE) * (epoch + 1) / epochs
            self._report_rounds(
                base + fraction / rounds,
                f"round {round_index + 1}/{rounds}: training epoch {epoch + 1}, loss {loss:.4f}, "
                f"correction {correction:.3f}",
            )

        def on_batch(done: int, total: int) -> None:
            fraction = (
                _SELECT_SHARE + (1 - _SELECT_SHARE) * (epochs_done[0] + done / total) / epochs
            )
            self._report_rounds(
                base + fraction / rounds,
                f"round {round_index + 1}/{rounds}: training epoch {epochs_done[0] + 1}, "
                f"batch {done}/{total}",
            )

        log = train_label_correcting(
            self.model,
            self.optimizer,
            self.data.features[rows],
            torch.from_numpy(self.labels[rows]),
            torch.from_numpy(weights.astype(np.float32)),
            epochs=epochs,
            batch_size=self.batch_size,
            device=self.device,
            generator=self.training_generator,
            start_step=self.step,
            total_steps=self.total_steps,
            relabel=self.config.relabel,
            on_epoch=on_epoch,
            on_batch=on_batch,
            report_every=_REPORT_EVERY_STEPS,
        )
        self.step += log.steps
        return log

    def _denoise(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions (into ``rows``) to keep, and the UCB score of every row."""
        self.report("denoising", 0.0, f"MC dropout over {rows.shape[0]} rows")

        def on_pass(fraction: float, message: str) -> None:
            self.report("denoising", 0.9 * fraction, message)

        _, _, scores_tensor = mc_dropout_scores(
            self.model,
            self.data.features[rows],
            torch.from_numpy(self.labels[rows]),
            passes=self.config.mc_passes,
            batch_size=INFERENCE_BATCH_ROWS,
            device=self.device,
            progress=on_pass,
        )
        scores = scores_tensor.numpy()
        keep_mask = np.ones(rows.shape[0], dtype=bool)
        for group in self.groups:
            members = np.flatnonzero(group.mask[rows])
            remove = members.shape[0] - group.final_quota
            if remove <= 0:
                continue
            # Highest scores first; ties broken by position for determinism.
            ranked = members[np.lexsort((members, -scores[members]))]
            keep_mask[ranked[:remove]] = False
        keep = np.flatnonzero(keep_mask)
        if keep.shape[0] != self.k:
            raise RuntimeError(f"denoising kept {keep.shape[0]} rows instead of {self.k}")
        return keep, scores

    def _soft_labels(
        self, rows: np.ndarray, given: np.ndarray, selection_probs: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """y* of the kept rows (the given labels without relabelling).

        The correction y* = (1 - e) y + e p takes the final global trust; p is the
        proxy's prediction when the row was selected (``soft_labels="selection"``)
        or the final proxy's (``"final"``). The final proxy has trained for
        several epochs on every coreset row and predicts each row's given label,
        right or wrong, with confidence; the prediction made at selection time
        came before the proxy ever trained on the row (it may have been among
        the warm-up rows), so it can disagree with a wrong label.
        """
        if not self.config.relabel:
            return given.astype(np.float32).copy(), 0.0
        if self.config.soft_labels == "selection":
            probs = torch.from_numpy(np.asarray(selection_probs, dtype=np.float64))
        else:
            logits = predict_logits(
                self.model,
                self.data.features[rows],
                batch_size=INFERENCE_BATCH_ROWS,
                device=self.device,
            )
            probs = torch.sigmoid(logits.double())
        y = torch.from_numpy(given.astype(np.float64))
        soft = corrected_targets(y, probs, self.step, self.total_steps)
        strength = correction_strength(probs, self.step, self.total_steps)
        return soft.numpy(), float(strength.mean()) if strength.numel() else 0.0
