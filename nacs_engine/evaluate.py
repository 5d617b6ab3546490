"""How good a coreset is: train a fresh model on it, score it on held-out data.

A fresh model of one evaluator family is trained on the coreset rows with their
soft labels and weights as delivered (binary cross-entropy with soft targets,
Adam), early-stopped on the validation split's AUC (or log loss), and scored
on the test split by AUC and log loss, the latter also after Platt scaling
fitted on the validation split (a model trained on a few hundred rows ranks
well long before its probabilities are calibrated; production CTR models are
recalibrated the same way). The model's tables hold the feature values its
training rows take (``renumbering``); every other value maps to its field's
out-of-vocabulary id 0 in the validation and test rows, whose embedding no
training row moves from its initial value.

The families (``EVALUATORS``, named once here): every selection backbone of
``models.registry`` ("deepfm", "dcnv2"), and "logistic", a logistic regression
on one-hot features: one scalar weight per (field, id) and a bias
(``OneHotLogisticRegression``). Its weights (not its bias) carry an L2
penalty 0.5 * l2 * |w|^2 with l2 = 1 / k on the mean loss over k training
rows, that is 0.5 * |w|^2 against their summed loss (a standard normal prior
on every weight, whatever the coreset's size); its bias starts at the log-odds
of the weighted mean target, so that its probabilities start at the coreset's
click rate.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.models.layers import FeaturesLinear, use_generator
from nacs_engine.models.registry import BACKBONES, build_model
from nacs_engine.runtime import numpy_generator, resolve_device, seeded_scope, torch_generator
from nacs_engine.train import (
    check_min_gain,
    default_batch_size,
    fit_early_stopping,
    predict_logits,
)

_PROBABILITY_FLOOR = 1e-7
# Rows per inference batch: a DeepFM over 40 fields holds about 30 MB of activations per 16k
# rows. On a CPU batches that stay in its caches score the same logits faster (a DeepFM's
# early-stopped evaluation on 10,000 rows: 28% less time with 8,192 than with 65,536).
_INFERENCE_BATCH_ROWS = {"cuda": 65536, "cpu": 8192}
MONITORS = ("auc", "log_loss")


def _labels_and_values(
    labels: object, values: object, values_name: str
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(values, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"labels: expected a 1-D array, got shape {y.shape}")
    if s.shape != y.shape:
        raise ValueError(f"{values_name}: expected shape {y.shape}, got {s.shape}")
    if y.size == 0:
        raise ValueError("labels: expected at least one row")
    if not np.all((y == 0.0) | (y == 1.0)):
        raise ValueError("labels: expected 0/1 values")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{values_name}: contains NaN or infinite values")
    return y, s


def _mid_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share their mean rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    boundaries = np.flatnonzero(np.diff(ordered)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [values.shape[0]]])
    ranks = np.empty(values.shape[0], dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U); tied scores share their mean rank.

    labels: (n,) 0/1; scores: (n,) any real numbers. Raises ValueError when
    only one class is present.
    """
    y, s = _labels_and_values(labels, scores, "scores")
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("labels: AUC needs both positive and negative rows")
    positive_rank_sum = float(_mid_ranks(s)[y == 1.0].sum())
    return (positive_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def auc_components(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each row's part of the AUC (DeLong's placement values), shape (n,).

    A positive row's part is the share of negative rows scored below it, a
    negative row's the share of positive rows scored above it (ties count half):
    the mean over either class is the AUC, and the variance of the parts within
    each class gives the AUC's standard error from the sampling of the rows
    (DeLong, DeLong and Clarke-Pearson, 1988). Raises ValueError with one class.
    """
    y, s = _labels_and_values(labels, scores, "scores")
    positive = y == 1.0
    n_pos = int(positive.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("labels: AUC needs both positive and negative rows")
    overall = _mid_ranks(s)
    within = np.empty_like(overall)
    within[positive] = _mid_ranks(s[positive])
    within[~positive] = _mid_ranks(s[~positive])
    # overall - within: how many rows of the other class rank below (ties half).
    below = overall - within
    return np.where(positive, below / n_neg, 1.0 - below / n_pos)


def row_log_losses(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of each row, probabilities clipped to [1e-7, 1 - 1e-7]; shape (n,)."""
    y, p = _labels_and_values(labels, probs, "probs")
    if np.any((p < 0.0) | (p > 1.0)):
        raise ValueError("probs: expected values in [0, 1]")
    p = np.clip(p, _PROBABILITY_FLOOR, 1.0 - _PROBABILITY_FLOOR)
    return -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities ``probs`` (clipped to [1e-7, 1 - 1e-7])."""
    return float(row_log_losses(labels, probs).mean())


def logistic(values: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x), elementwise; a logit far below zero gives 0 without numpy's overflow
    warning."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-values))


def platt_scaling(
    logits: np.ndarray, labels: np.ndarray, *, iterations: int = 50
) -> tuple[float, float]:
    """(a, b) minimising the log loss of sigmoid(a * logit + b) on (``logits``, ``labels``).

    A monotone recalibration (Platt scaling): it leaves every ranking, hence the
    AUC, unchanged and corrects only the probability scale. Solved by Newton's
    method on the two parameters with step halving, from (1, 0); the result
    is never worse than (1, 0) on the data it is fitted to.
    """
    y, z = _labels_and_values(labels, logits, "logits")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations: expected a positive integer, got {iterations!r}")

    def loss(params: np.ndarray) -> float:
        t = params[0] * z + params[1]
        # log(1 + e^t) - y t, written to stay finite for large |t|.
        return float(np.mean(np.logaddexp(0.0, t) - y * t))

    params = np.array([1.0, 0.0])
    current = loss(params)
    design = np.stack([z, np.ones_like(z)], axis=1)
    for _ in range(iterations):
        p = logistic(design @ params)
        gradient = design.T @ (p - y) / y.shape[0]
        curvature = (design * (p * (1.0 - p))[:, None]).T @ design / y.shape[0]
        try:
            step = np.linalg.solve(curvature + 1e-9 * np.eye(2), gradient)
        except np.linalg.LinAlgError:
            break
        scale = 1.0
        while scale > 1e-6:
            candidate = params - scale * step
            candidate_loss = loss(candidate)
            if candidate_loss <= current:
                break
            scale /= 2.0
        else:
            break
        if current - candidate_loss < 1e-12:
            params, current = candidate, candidate_loss
            break
        params, current = candidate, candidate_loss
    return float(params[0]), float(params[1])


def renumbering(seen: np.ndarray, field_dims: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Per field, a table from every id to its position among the ids the rows ``seen`` (n, F)
    take, the OOV id 0 first; the ids they do not take map to 0.

    A model trained on rows renumbered so (``renumber_ids``) needs embedding rows for the seen
    ids only: on a coreset of a large dataset, a small share of the vocabulary."""
    seen = np.asarray(seen)
    if seen.ndim != 2 or seen.shape[1] != len(field_dims):
        raise ValueError(f"seen: expected shape (n, {len(field_dims)}), got {seen.shape}")
    tables = []
    for column, dim in enumerate(field_dims):
        present = np.zeros(dim, dtype=bool)
        present[seen[:, column]] = True
        present[0] = True
        tables.append(np.where(present, np.cumsum(present) - 1, 0).astype(np.int32))
    return tuple(tables)


def renumbered_dims(tables: tuple[np.ndarray, ...]) -> tuple[int, ...]:
    """The vocabulary sizes after ``renumbering``: the seen ids per field, OOV included."""
    return tuple(int(table.max()) + 1 for table in tables)


def renumber_ids(features: np.ndarray, tables: tuple[np.ndarray, ...]) -> np.ndarray:
    """``features`` (m, F) mapped through the tables of ``renumbering``, field by field."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != len(tables):
        raise ValueError(f"features: expected shape (m, {len(tables)}), got {features.shape}")
    out = np.empty(features.shape, dtype=np.int32)
    for column, table in enumerate(tables):
        out[:, column] = table[features[:, column]]
    return out


def split_rows(
    n_rows: int, *, validation_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random disjoint (train, validation, test) positions, each ascending."""
    if isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 3:
        raise ValueError(f"n_rows: expected an integer of at least 3, got {n_rows!r}")
    for name, value in (
        ("validation_fraction", validation_fraction),
        ("test_fraction", test_fraction),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
            raise ValueError(f"{name}: expected a number in (0, 1), got {value!r}")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError("test_fraction: validation_fraction + test_fraction must be below 1")
    order = numpy_generator(seed, "split").permutation(n_rows)
    n_val = max(1, int(round(validation_fraction * n_rows)))
    n_test = max(1, int(round(test_fraction * n_rows)))
    return (
        np.sort(order[n_val + n_test :]),
        np.sort(order[:n_val]),
        np.sort(order[n_val : n_val + n_test]),
    )


class OneHotLogisticRegression(nn.Module):
    """logit = bias + sum over fields of w[field, id]: a logistic regression on one-hot features.

    Forward maps (B, F) per-field ids to logits (B,). The weights start at zero.
    l2: every backward pass adds l2 * w, the gradient of 0.5 * l2 * |w|^2, to
    the weights' gradient (whatever the optimizer); the bias is not penalised.
    """

    def __init__(self, field_dims: Sequence[int], *, l2: float = 0.0) -> None:
        super().__init__()
        if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not l2 >= 0:
            raise ValueError(f"l2: expected a non-negative number, got {l2!r}")
        self.linear = FeaturesLinear(field_dims)
        self.l2 = float(l2)
        weight = self.linear.weight.weight  # (total ids, 1)
        if self.l2 > 0:
            weight.register_hook(lambda grad: grad + self.l2 * weight.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)  # (B,)

    @torch.no_grad()
    def start_at(self, click_rate: float) -> None:
        """Set the bias to the log-odds of ``click_rate`` (clipped to [1e-4, 1 - 1e-4])."""
        rate = min(max(float(click_rate), 1e-4), 1.0 - 1e-4)
        self.linear.bias.fill_(math.log(rate / (1.0 - rate)))


@dataclass(frozen=True)
class EvaluatorFamily:
    """A kind of model a coreset is judged with: how to build it, and its L2 penalty."""

    name: str
    # build(field_dims, options, l2): a fresh model, returning logits (B,) for ids (B, F).
    build: Callable[[tuple[int, ...], EvaluationOptions, float], nn.Module]
    # The L2 penalty for k training rows when ``EvaluationOptions.weight_decay`` is None.
    default_l2: Callable[[int], float]
    # Whether Adam applies the penalty (its weight decay) or the model itself does.
    l2_in_adam: bool = True


def _backbone_family(name: str) -> EvaluatorFamily:
    def build(field_dims: tuple[int, ...], options: EvaluationOptions, l2: float) -> nn.Module:
        return build_model(name, field_dims, embed_dim=options.embed_dim, dropout=options.dropout)

    return EvaluatorFamily(name=name, build=build, default_l2=lambda k: 0.0)


EVALUATORS: dict[str, EvaluatorFamily] = {
    **{name: _backbone_family(name) for name in BACKBONES},
    "logistic": EvaluatorFamily(
        name="logistic",
        build=lambda field_dims, options, l2: OneHotLogisticRegression(field_dims, l2=l2),
        default_l2=lambda k: 1.0 / k,
        l2_in_adam=False,
    ),
}
"""Every evaluator family by name: the selection backbones and "logistic"."""


@dataclass(frozen=True)
class EvaluationOptions:
    """How the fresh model is trained: evaluator family, sizes, Adam, early stopping."""

    # The evaluator family, a name from ``EVALUATORS``: "deepfm", "dcnv2" or "logistic".
    backbone: str = "deepfm"
    embed_dim: int = 10
    dropout: float = 0.5
    learning_rate: float = 0.01
    # The L2 penalty: Adam's weight decay for the deep families (default 0), the
    # penalty on the weights (not the bias) for "logistic" (default 1 / k for
    # k training rows). None: the family's default.
    weight_decay: float | None = None
    batch_size: int | None = None
    max_epochs: int = 20
    patience: int = 2
    # What early stopping watches on the validation split: "auc" or "log_loss".
    monitor: str = "auc"
    # An epoch counts as an improvement for the patience only when the watched score rises
    # by more than this over the last one that did (0: any rise; ``fit_early_stopping``).
    min_gain: float = 0.0

    def __post_init__(self) -> None:
        if self.monitor not in MONITORS:
            raise ValueError(
                f"monitor: expected one of {', '.join(MONITORS)}, got {self.monitor!r}"
            )
        if self.backbone not in EVALUATORS:
            raise ValueError(
                f"backbone: expected one of {', '.join(EVALUATORS)}, got {self.backbone!r}"
            )
        if self.batch_size is not None and (
            not isinstance(self.batch_size, int) or self.batch_size < 2
        ):
            raise ValueError(
                f"batch_size: expected an integer of at least 2, got {self.batch_size!r}"
            )
        check_min_gain(self.min_gain)

    @property
    def family(self) -> EvaluatorFamily:
        return EVALUATORS[self.backbone]

    def l2_for(self, n_rows: int) -> float:
        """The L2 penalty of a model trained on ``n_rows`` rows: the option, else the family's
        default."""
        return (
            self.family.default_l2(n_rows)
            if self.weight_decay is None
            else float(self.weight_decay)
        )


@dataclass(frozen=True)
class Evaluation:
    """Scores of a model trained on a coreset."""

    test_auc: float
    test_log_loss: float
    # Test log loss after Platt scaling fitted on the validation split (the AUC is unchanged).
    test_log_loss_calibrated: float
    validation_auc: float
    best_epoch: int
    epochs_run: int
    train_rows: int
    seconds: float
    # The test rows' logits, only on request (``evaluate_coreset(keep_test_logits=True)``).
    test_logits: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "test_auc": self.test_auc,
            "test_log_loss": self.test_log_loss,
            "test_log_loss_calibrated": self.test_log_loss_calibrated,
            "validation_auc": self.validation_auc,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "train_rows": self.train_rows,
            "seconds": self.seconds,
        }


def evaluate_coreset(
    train: EncodedDataset,
    validation: EncodedDataset,
    test: EncodedDataset,
    *,
    rows: np.ndarray | None = None,
    soft_labels: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    options: EvaluationOptions | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: Callable[[int, float], None] | None = None,
    keep_test_logits: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Train a fresh backbone on ``train`` rows ``rows`` and score it on ``test``.

    rows: (k,) positions in ``train`` (None: all rows, i.e. the full-data model).
    soft_labels: (k,) targets in [0, 1] (None: the given labels).
    weights: (k,) non-negative weights (None: all 1).
    progress(epoch, score) is called after every epoch with the validation
    score early stopping watches (``options.monitor``: the AUC, or the log loss
    negated, so that higher is better for both). keep_test_logits: the result
    carries the test rows' logits (float32). on_batch(done, total) is called after every
    training step; an exception it raises (a cancel) stops the training.
    """
    started = time.perf_counter()
    for name, value in (("train", train), ("validation", validation), ("test", test)):
        if not isinstance(value, EncodedDataset):
            raise ValueError(f"{name}: expected an EncodedDataset, got {type(value).__name__}")
    for name, value in (("validation", validation), ("test", test)):
        if tuple(value.field_dims) != tuple(train.field_dims):
            raise ValueError(f"{name}: its field_dims differ from the training data's")
    options = options or EvaluationOptions()
    if not isinstance(options, EvaluationOptions):
        raise ValueError(f"options: expected EvaluationOptions, got {type(options).__name__}")
    resolved = resolve_device(device)
    if rows is None:
        positions = np.arange(train.n_rows, dtype=np.int64)
    else:
        positions = np.asarray(rows)
        if positions.ndim != 1 or positions.size < 2 or positions.dtype.kind not in "iu":
            raise ValueError("rows: expected a 1-D integer array of at least 2 positions")
        if positions.min() < 0 or positions.max() >= train.n_rows:
            raise ValueError(f"rows: positions must lie in [0, {train.n_rows})")
        positions = positions.astype(np.int64)
    k = positions.shape[0]
    given = np.asarray(train.labels[positions], dtype=np.float32)
    if soft_labels is None:
        targets = given
    else:
        targets = np.asarray(soft_labels, dtype=np.float32)
        if targets.shape != (k,):
            raise ValueError(f"soft_labels: expected shape ({k},), got {targets.shape}")
        if not np.all((targets >= 0.0) & (targets <= 1.0)):
            raise ValueError("soft_labels: expected values in [0, 1]")
    if weights is None:
        row_weights = None
    else:
        w = np.asarray(weights, dtype=np.float32)
        if w.shape != (k,):
            raise ValueError(f"weights: expected shape ({k},), got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
            raise ValueError("weights: expected finite non-negative values with a positive sum")
        row_weights = torch.from_numpy(w)

    # The model's tables hold the ids the training rows take; the others score as OOV.
    chosen = train.features[positions]
    tables = renumbering(chosen, tuple(train.field_dims))
    train_features = renumber_ids(chosen, tables)
    del chosen
    val_features = renumber_ids(validation.features, tables)
    test_features = renumber_ids(test.features, tables)
    val_labels = np.asarray(validation.labels, dtype=np.float64)
    inference_rows = _INFERENCE_BATCH_ROWS.get(resolved.type, _INFERENCE_BATCH_ROWS["cuda"])
    batch_size = options.batch_size or default_batch_size(k)
    family = options.family
    l2 = options.l2_for(k)

    with seeded_scope(seed, "evaluation", resolved):
        model = family.build(renumbered_dims(tables), options, l2)
    if isinstance(model, OneHotLogisticRegression):
        model.start_at(_weighted_mean(targets, row_weights))
    model = model.to(resolved)
    # On a CPU the dropout masks come from the model's own generator (models may train at
    # once in threads); on a GPU from the global one, seeded alike: the same numbers.
    if resolved.type == "cpu":
        use_generator(model, torch_generator(seed, "dropout"))
        dropout_scope: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    else:
        dropout_scope = seeded_scope(seed, "dropout", resolved)
    with dropout_scope:
        # The validation logits of the best epoch so far: the model ends with that
        # epoch's weights, so they are not computed again.
        best: dict[str, float | torch.Tensor] = {"score": -math.inf}

        def validate(current: torch.nn.Module) -> float:
            logits = predict_logits(
                current, val_features, batch_size=inference_rows, device=resolved
            )
            if options.monitor == "log_loss":
                score = -log_loss(val_labels, torch.sigmoid(logits.double()).numpy())
            else:
                score = auc(val_labels, logits.numpy())
            if score > best["score"]:
                best["score"], best["logits"] = score, logits
            return score

        fit = fit_early_stopping(
            model,
            train_features,
            torch.from_numpy(targets),
            row_weights,
            validate=validate,
            learning_rate=options.learning_rate,
            weight_decay=l2 if family.l2_in_adam else 0.0,
            batch_size=batch_size,
            max_epochs=options.max_epochs,
            patience=options.patience,
            device=resolved,
            generator=torch_generator(seed, "training"),
            on_epoch=progress,
            on_batch=on_batch,
            min_gain=options.min_gain,
        )
    validation_logits = best["logits"]
    assert isinstance(validation_logits, torch.Tensor)
    test_logits = predict_logits(model, test_features, batch_size=inference_rows, device=resolved)
    test_probs = torch.sigmoid(test_logits.double()).numpy()
    test_labels = np.asarray(test.labels, dtype=np.float64)
    scale, shift = platt_scaling(validation_logits.double().numpy(), val_labels)
    calibrated = logistic(scale * test_logits.double().numpy() + shift)
    return Evaluation(
        test_auc=auc(test_labels, test_logits.numpy()),
        test_log_loss=log_loss(test_labels, test_probs),
        test_log_loss_calibrated=log_loss(test_labels, calibrated),
        validation_auc=auc(val_labels, validation_logits.numpy()),
        best_epoch=fit.best_epoch,
        epochs_run=fit.epochs_run,
        train_rows=int(k),
        seconds=time.perf_counter() - started,
        test_logits=test_logits.numpy().astype(np.float32) if keep_test_logits else None,
    )


def _weighted_mean(targets: np.ndarray, weights: torch.Tensor | None) -> float:
    if weights is None:
        return float(np.mean(targets, dtype=np.float64))
    w = weights.double().numpy()
    return float(np.dot(w, targets) / w.sum())
