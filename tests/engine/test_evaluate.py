"""AUC and log loss on arrays, OOV mapping, splits, and training a fresh model on a coreset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.data.synthetic import make_synthetic_ctr
from nacs_engine.evaluate import (
    EVALUATORS,
    EvaluationOptions,
    OneHotLogisticRegression,
    auc,
    auc_components,
    evaluate_coreset,
    log_loss,
    platt_scaling,
    renumber_ids,
    renumbered_dims,
    renumbering,
    split_rows,
)
from nacs_engine.models import build_model
from nacs_engine.train import default_batch_size, fit_early_stopping, steps_per_epoch

# (label, score) rows holding both classes, with many tied scores.
LABELLED_SCORES = st.lists(
    st.tuples(st.integers(0, 1), st.integers(-3, 3)), min_size=2, max_size=40
).filter(lambda rows: len({label for label, _ in rows}) == 2)


def _pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    positives = scores[labels == 1]
    negatives = scores[labels == 0]
    wins = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (
        positives[:, None] == negatives[None, :]
    ).sum()
    return float(wins / (positives.size * negatives.size))


def test_auc_by_hand_and_with_ties() -> None:
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auc(np.array([0, 1, 0, 1]), np.array([0.3, 0.3, 0.3, 0.3])) == pytest.approx(0.5)
    assert auc(np.array([0, 1, 1]), np.array([0.2, 0.2, 0.9])) == pytest.approx(0.75)
    assert auc(np.array([1, 0]), np.array([2.0, -1.0])) == pytest.approx(1.0)


@settings(max_examples=50, deadline=None)
@given(LABELLED_SCORES)
def test_auc_equals_pairwise_count(rows: list[tuple[int, int]]) -> None:
    labels = np.array([label for label, _ in rows], dtype=np.float32)
    scores = np.array([score for _, score in rows], dtype=np.float64)
    assert auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores))


@settings(max_examples=50, deadline=None)
@given(LABELLED_SCORES)
def test_auc_components_are_each_rows_share_of_the_pairs(rows: list[tuple[int, int]]) -> None:
    labels = np.array([label for label, _ in rows], dtype=np.float32)
    scores = np.array([score for _, score in rows], dtype=np.float64)
    parts = auc_components(labels, scores)
    positives, negatives = scores[labels == 1], scores[labels == 0]
    for row in range(labels.shape[0]):
        other = negatives if labels[row] == 1 else positives
        beaten = (other < scores[row]).sum() if labels[row] == 1 else (other > scores[row]).sum()
        expected = (beaten + 0.5 * (other == scores[row]).sum()) / other.shape[0]
        assert parts[row] == pytest.approx(expected)
    for members in (labels == 1, labels == 0):
        assert parts[members].mean() == pytest.approx(auc(labels, scores))


def test_log_loss_by_hand() -> None:
    value = log_loss(np.array([1, 0]), np.array([0.8, 0.4]))
    assert value == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert math.isfinite(log_loss(np.array([1, 0]), np.array([0.0, 1.0])))


def test_platt_scaling_recovers_the_scale_and_shift_of_overconfident_logits() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0.0, 1.5, 200_000)
    labels = (rng.random(true_logits.size) < 1.0 / (1.0 + np.exp(-true_logits))).astype(np.float64)
    # A model three times too confident, and shifted: a = 1/3 and b = 0.5/3 undo it.
    scale, shift = platt_scaling(3.0 * true_logits - 0.5, labels)
    assert scale == pytest.approx(1 / 3, abs=0.01) and shift == pytest.approx(0.5 / 3, abs=0.01)
    raw = log_loss(labels, 1.0 / (1.0 + np.exp(-(3.0 * true_logits - 0.5))))
    fitted = log_loss(labels, 1.0 / (1.0 + np.exp(-(scale * (3.0 * true_logits - 0.5) + shift))))
    assert fitted < raw - 0.05


def test_platt_scaling_is_never_worse_than_the_identity_and_checks_inputs() -> None:
    labels = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    logits = np.array([-40.0, 35.0, -30.0, 0.5, 60.0])  # huge logits, one badly wrong
    scale, shift = platt_scaling(logits, labels)
    assert math.isfinite(scale) and math.isfinite(shift)
    t = scale * logits + shift
    assert np.mean(np.logaddexp(0, t) - labels * t) <= np.mean(
        np.logaddexp(0, logits) - labels * logits
    )
    with pytest.raises(ValueError, match="logits"):
        platt_scaling(np.array([0.1]), labels)
    with pytest.raises(ValueError, match="iterations"):
        platt_scaling(logits, labels, iterations=0)


def test_metric_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="labels"):
        auc(np.array([1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="scores"):
        auc(np.array([1, 0]), np.array([0.1]))
    with pytest.raises(ValueError, match="scores"):
        auc(np.array([1, 0]), np.array([np.nan, 0.1]))
    with pytest.raises(ValueError, match="labels"):
        log_loss(np.array([2, 0]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="probs"):
        log_loss(np.array([1, 0]), np.array([1.5, 0.2]))


def test_renumber_ids_keeps_the_seen_ids_and_maps_the_rest_to_oov() -> None:
    seen = np.array([[1, 5], [3, 5]])
    tables = renumbering(seen, (4, 7))
    assert renumbered_dims(tables) == (3, 2)  # ids 0, 1, 3 | 0, 5
    other = np.array([[1, 1], [2, 5], [3, 0], [0, 6]])
    np.testing.assert_array_equal(
        renumber_ids(other, tables), np.array([[1, 0], [0, 1], [2, 0], [0, 0]])
    )
    with pytest.raises(ValueError, match="features"):
        renumber_ids(np.zeros((2, 3), dtype=np.int32), tables)
    with pytest.raises(ValueError, match="seen"):
        renumbering(np.zeros((2, 3), dtype=np.int32), (4, 7))


def test_tables_of_the_seen_ids_train_the_same_model_as_the_whole_vocabulary() -> None:
    # A logistic regression starts at zero, so the two can start alike: ids no training row
    # takes get no gradient (nor penalty, at zero) and score as OOV either way.
    data = make_synthetic_ctr(2000, n_fields=6, flip_rate=0.0, seed=3).dataset
    rows, others = np.arange(0, 2000, 20), np.arange(1, 2000, 7)
    tables = renumbering(data.features[rows], tuple(data.field_dims))
    assert sum(renumbered_dims(tables)) < sum(data.field_dims)
    oov = renumber_ids(data.features[others], tables) == 0
    whole_ids = np.where(oov, 0, data.features[others])
    logits = []
    for dims, train_x, test_x in (
        (data.field_dims, data.features[rows], whole_ids),
        (
            renumbered_dims(tables),
            renumber_ids(data.features[rows], tables),
            renumber_ids(data.features[others], tables),
        ),
    ):
        model = OneHotLogisticRegression(dims, l2=0.01)
        labels = torch.from_numpy(data.labels[rows].astype(np.float32))
        _fit_on_cpu(model, train_x, labels, lambda m: 0.0, batch_size=16, epochs=3, patience=5)
        with torch.no_grad():
            logits.append(model(torch.from_numpy(test_x)))
    torch.testing.assert_close(logits[1], logits[0])
    assert logits[0].std() > 0.1


def test_split_rows_is_a_seeded_partition() -> None:
    train, validation, test = split_rows(1000, validation_fraction=0.1, test_fraction=0.2, seed=3)
    assert (validation.size, test.size, train.size) == (100, 200, 700)
    assert np.array_equal(np.sort(np.concatenate([train, validation, test])), np.arange(1000))
    again = split_rows(1000, validation_fraction=0.1, test_fraction=0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, validation, test), again, strict=True))
    with pytest.raises(ValueError, match="test_fraction"):
        split_rows(1000, validation_fraction=0.5, test_fraction=0.5)


def test_batch_sizes() -> None:
    assert default_batch_size(10_000_000) == 8192
    assert default_batch_size(100_000) == 4096
    assert default_batch_size(500) == 16
    # A coreset of 56 rows (1% of the Criteo sample's training rows) trains 7 steps an epoch.
    assert default_batch_size(56) == 8 and steps_per_epoch(56, 8) == 7
    assert default_batch_size(5) == 8
    assert steps_per_epoch(130, 64) == 3
    assert steps_per_epoch(129, 64) == 2  # a trailing single row is skipped
    with pytest.raises(ValueError, match="n_rows"):
        default_batch_size(0)


def _fit_on_cpu(
    model, x, y, validate, *, batch_size: int, epochs: int, patience: int, min_gain: float = 0.0
):
    """``fit_early_stopping`` with Adam at 0.05, no weight decay, batches drawn from seed 0."""
    return fit_early_stopping(
        model,
        x,
        y,
        None,
        validate=validate,
        learning_rate=0.05,
        weight_decay=0.0,
        batch_size=batch_size,
        max_epochs=epochs,
        patience=patience,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        min_gain=min_gain,
    )


def test_early_stopping_keeps_the_best_epoch() -> None:
    torch.manual_seed(0)
    model = build_model("deepfm", (4, 4), embed_dim=2, hidden_dims=(4,), dropout=0.0)
    x = np.array([[1, 2], [3, 1], [2, 2], [0, 3]] * 8, dtype=np.int32)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0] * 8)
    scores = iter([0.6, 0.9, 0.7, 0.65, 0.99])
    snapshots: list[dict] = []

    def validate(current: torch.nn.Module) -> float:
        snapshots.append({k: v.clone() for k, v in current.state_dict().items()})
        return next(scores)

    fit = _fit_on_cpu(model, x, y, validate, batch_size=8, epochs=5, patience=2)
    assert (fit.best_epoch, fit.epochs_run, fit.best_score) == (2, 4, 0.9)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, snapshots[1][key])


def test_early_stopping_with_a_minimum_gain_stops_on_small_rises_and_keeps_the_best() -> None:
    x = np.array([[1, 2], [3, 1], [2, 2], [0, 3]] * 8, dtype=np.int32)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0] * 8)
    # Rises of 0.0003 to 0.0005 an epoch after epoch 3: each one above a gain of 0, and the
    # next two together (0.0009) not above 0.001.
    sequence = [0.70, 0.74, 0.750, 0.7505, 0.7509, 0.7512, 0.7516, 0.7519]
    runs = {}
    for gain in (0.0, 0.001):
        torch.manual_seed(0)
        model = build_model("deepfm", (4, 4), embed_dim=2, hidden_dims=(4,), dropout=0.0)
        snapshots: list[dict] = []

        def validate(current: torch.nn.Module, snapshots=snapshots) -> float:
            snapshots.append({k: v.clone() for k, v in current.state_dict().items()})
            return sequence[len(snapshots) - 1]

        fit = _fit_on_cpu(
            model, x, y, validate, batch_size=8, epochs=len(sequence), patience=2, min_gain=gain
        )
        runs[gain] = fit
        # Either way the model ends with the weights of the best epoch it ran.
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, snapshots[fit.best_epoch - 1][key])
    assert (runs[0.0].epochs_run, runs[0.0].best_epoch) == (8, 8)
    # Epoch 3 is the last to rise by more than 0.001 over the last that did; two epochs on,
    # training stops, and the best of the five (epoch 5, which rose by less) is kept.
    assert (runs[0.001].epochs_run, runs[0.001].best_epoch) == (5, 5)
    assert runs[0.001].best_score == 0.7509
    with pytest.raises(ValueError, match="min_gain"):
        EvaluationOptions(min_gain=-0.1)


@pytest.fixture(scope="module")
def splits() -> tuple[EncodedDataset, EncodedDataset, EncodedDataset]:
    data = make_synthetic_ctr(
        4000, cardinalities=(20, 50, 8, 100, 30), click_rate=0.3, flip_rate=0.0, signal=2.5, seed=2
    ).dataset
    train, validation, test = split_rows(data.n_rows, seed=0)
    return data.subset(train), data.subset(validation), data.subset(test)


def test_evaluate_coreset_learns_the_task(splits) -> None:
    train, validation, test = splits
    options = EvaluationOptions(embed_dim=4, max_epochs=4)
    full = evaluate_coreset(train, validation, test, options=options, device="cpu", seed=0)
    assert full.train_rows == train.n_rows
    assert full.test_auc > 0.7
    assert 0 < full.test_log_loss < 0.69
    assert 0 < full.test_log_loss_calibrated < 0.69
    assert 1 <= full.best_epoch <= full.epochs_run <= 4
    assert full.test_logits is None
    again = evaluate_coreset(
        train, validation, test, options=options, device="cpu", seed=0, keep_test_logits=True
    )
    assert again.test_auc == full.test_auc
    assert again.test_logits is not None and again.test_logits.shape == (test.n_rows,)
    assert auc(test.labels, again.test_logits) == again.test_auc
    rows = np.arange(0, train.n_rows, 4)
    epochs: list[int] = []
    small = evaluate_coreset(
        train,
        validation,
        test,
        rows=rows,
        soft_labels=np.clip(train.labels[rows], 0.05, 0.95),
        weights=np.ones(rows.size),
        options=options,
        device="cpu",
        progress=lambda epoch, score: epochs.append(epoch),
    )
    assert small.train_rows == rows.size and 0.5 < small.test_auc <= 1.0
    assert epochs == list(range(1, small.epochs_run + 1))


def test_evaluate_coreset_rejects_bad_inputs(splits) -> None:
    train, validation, test = splits
    rows = np.arange(10)
    with pytest.raises(ValueError, match="rows"):
        evaluate_coreset(train, validation, test, rows=np.array([0, train.n_rows]))
    with pytest.raises(ValueError, match="soft_labels"):
        evaluate_coreset(train, validation, test, rows=rows, soft_labels=np.full(10, 1.5))
    with pytest.raises(ValueError, match="weights"):
        evaluate_coreset(train, validation, test, rows=rows, weights=np.full(9, 1.0))
    with pytest.raises(ValueError, match="validation"):
        evaluate_coreset(train, train.features, test)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backbone"):
        EvaluationOptions(backbone="lr")
    with pytest.raises(ValueError, match="backbone"):
        EvaluationOptions(backbone="forest")
    with pytest.raises(ValueError, match="monitor"):
        EvaluationOptions(monitor="accuracy")


def test_early_stopping_on_log_loss_keeps_the_epoch_of_best_validation_log_loss(splits) -> None:
    train, validation, test = splits
    rows = np.arange(0, train.n_rows, 8)
    scores: dict[str, list[float]] = {"auc": [], "log_loss": []}
    results = {}
    for monitor in scores:
        options = EvaluationOptions(embed_dim=4, max_epochs=6, patience=6, monitor=monitor)
        results[monitor] = evaluate_coreset(
            train,
            validation,
            test,
            rows=rows,
            options=options,
            device="cpu",
            seed=0,
            progress=lambda epoch, score, m=monitor: scores[m].append(score),
        )
    # Same seed, same training: the epochs' scores differ only in what they measure.
    assert len(scores["auc"]) == len(scores["log_loss"]) == 6
    assert all(score < 0 for score in scores["log_loss"])  # the log loss, negated
    for monitor, result in results.items():
        assert result.best_epoch == 1 + int(np.argmax(scores[monitor]))
    best = results["log_loss"]
    assert best.validation_auc == pytest.approx(scores["auc"][best.best_epoch - 1], abs=1e-12)


def test_the_families_and_their_default_l2() -> None:
    assert set(EVALUATORS) >= {"deepfm", "dcnv2", "logistic"}
    assert EvaluationOptions(backbone="deepfm").l2_for(500) == 0.0
    assert EvaluationOptions(backbone="logistic").l2_for(500) == pytest.approx(1 / 500)
    assert EvaluationOptions(backbone="logistic", weight_decay=0.1).l2_for(500) == 0.1
    model = OneHotLogisticRegression((3, 4), l2=0.5)
    assert (
        sum(p.numel() for p in model.parameters()) == 3 + 4 + 1
    )  # a weight per (field, id), a bias
    model.start_at(0.2)
    x = torch.tensor([[1, 2], [0, 3]])
    torch.testing.assert_close(torch.sigmoid(model(x)), torch.full((2,), 0.2))
    # The penalty's gradient 0.5 * w reaches the weights, not the bias.
    with torch.no_grad():
        model.linear.weight.weight.copy_(torch.arange(7.0).unsqueeze(1))
    model(x).sum().backward()
    data_gradient = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]).unsqueeze(
        1
    )  # ids 1, 0 | 3+2, 3+3
    torch.testing.assert_close(
        model.linear.weight.weight.grad, data_gradient + 0.5 * torch.arange(7.0).unsqueeze(1)
    )
    torch.testing.assert_close(model.linear.bias.grad, torch.tensor([2.0]))


def test_logistic_regression_learns_the_task(splits) -> None:
    train, validation, test = splits
    options = EvaluationOptions(backbone="logistic")
    full = evaluate_coreset(train, validation, test, options=options, device="cpu", seed=0)
    assert full.test_auc > 0.75 and full.test_log_loss < 0.6
    rows = np.arange(0, train.n_rows, 10)
    small = evaluate_coreset(
        train, validation, test, rows=rows, options=options, device="cpu", seed=0
    )
    assert 0.6 < small.test_auc < full.test_auc
    again = evaluate_coreset(
        train, validation, test, rows=rows, options=options, device="cpu", seed=0
    )
    assert again.test_auc == small.test_auc and again.test_log_loss == small.test_log_loss


def _one_value_data(labels: list[int]) -> EncodedDataset:
    """Every row has the same single feature value: the model can only learn one probability."""
    n = len(labels)
    return EncodedDataset(
        features=np.ones((n, 1), dtype=np.int32),
        labels=np.array(labels, dtype=np.float32),
        field_names=("f",),
        field_dims=(2,),
    )


def _constant_probability(labels: np.ndarray, log_loss_value: float) -> float:
    """The probability p >= mean(labels) whose constant prediction has this log loss."""
    rate = float(labels.mean())
    low, high = rate, 1.0 - 1e-9
    for _ in range(100):
        p = (low + high) / 2
        if -(rate * math.log(p) + (1 - rate) * math.log(1 - p)) < log_loss_value:
            low = p
        else:
            high = p
    return (low + high) / 2


def test_logistic_regression_learns_the_soft_labels_and_the_weights() -> None:
    # One feature value: the best fit is the weighted mean of the soft targets,
    # where the bias starts. (Adam turns float32 rounding of a zero gradient into
    # steps of up to about lr, hence the tolerance; one batch of all the rows, so that no
    # batch's mix of labels moves it.)
    train = _one_value_data([1, 0] * 20)
    validation = _one_value_data([1, 0, 0, 0] * 5)
    test = _one_value_data([1, 1, 0, 0, 0] * 4)
    rows = np.arange(40)
    soft = np.where(train.labels == 1, 0.75, 0.25).astype(np.float32)
    weights = np.where(train.labels == 1, 3.0, 1.0)
    options = EvaluationOptions(backbone="logistic", max_epochs=3, batch_size=40)
    cases = [
        (dict(soft_labels=soft), 0.5),
        (dict(soft_labels=soft, weights=weights), (3 * 0.75 + 0.25) / 4),
        (dict(weights=weights), 0.75),
    ]
    for arguments, probability in cases:
        result = evaluate_coreset(train, validation, test, rows=rows, options=options, **arguments)
        assert result.test_auc == 0.5
        fitted = _constant_probability(test.labels, result.test_log_loss)
        assert fitted == pytest.approx(probability, abs=5e-3), arguments


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluate_coreset_on_cuda(splits) -> None:
    train, validation, test = splits
    options = EvaluationOptions(embed_dim=4, max_epochs=3)
    result = evaluate_coreset(train, validation, test, options=options, device="cuda", seed=0)
    assert result.test_auc > 0.7


def test_logistic_of_far_logits_is_exact_and_quiet() -> None:
    import warnings

    from nacs_engine.evaluate import logistic

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning would fail here
        values = logistic(np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0]))
    np.testing.assert_array_equal(values[1:4], 1.0 / (1.0 + np.exp(-np.array([-30.0, 0.0, 30.0]))))
    assert values[0] == 0.0 and values[2] == 0.5 and values[4] == 1.0
