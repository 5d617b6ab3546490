"""Training on a subset: embedding tables of the ids it takes against the whole vocabulary.

An evaluator or an audit model trains on a coreset, a small share of the rows, but the
data's vocabulary can be large. ``evaluate_coreset`` builds the model's tables for the
ids the training rows take (``renumbering``); a model of the whole vocabulary, as before,
has the same logits (ids no training row takes never train, and score as OOV) but its
optimizer steps touch every row of its tables.

For each largest field size M: ROWS synthetic Criteo-like rows (``make_synthetic_ctr``, 39
fields, ``default_cardinalities(39, max_cardinality=M)``), soft labels, one DeepFM (the evaluators'
sizes, batch ``default_batch_size(ROWS)``) trained EPOCHS epochs on the whole vocabulary
and one on the seen ids, in turn, after a warm-up epoch; one torch thread.

    .venv/bin/python bench/vocabulary_speed.py --rows 10000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from nacs_engine.data.synthetic import default_cardinalities, make_synthetic_ctr
from nacs_engine.evaluate import renumber_ids, renumbered_dims, renumbering
from nacs_engine.models import build_model
from nacs_engine.train import default_batch_size, fit_early_stopping


def epoch_seconds(
    dims: tuple[int, ...], features: np.ndarray, targets: torch.Tensor, epochs: int
) -> float:
    """Seconds per epoch of a DeepFM with tables of ``dims`` trained on ``features``."""
    torch.manual_seed(0)
    model = build_model("deepfm", dims)
    started = time.perf_counter()
    fit_early_stopping(
        model,
        features,
        targets,
        None,
        validate=lambda current: 0.0,
        learning_rate=0.01,
        weight_decay=0.0,
        batch_size=default_batch_size(features.shape[0]),
        max_epochs=epochs,
        patience=epochs + 1,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
    )
    return (time.perf_counter() - started) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument(
        "--max-cardinalities", type=int, nargs="+", default=[10_000, 100_000, 1_000_000]
    )
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"DeepFM, {args.rows:,} training rows, {args.epochs} epochs each, one thread")
    print(
        "| largest field | whole vocabulary | seen ids | ms/epoch, whole | ms/epoch, seen | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for largest in args.max_cardinalities:
        cardinalities = default_cardinalities(39, max_cardinality=largest)
        data = make_synthetic_ctr(args.rows, cardinalities=cardinalities, seed=0).dataset
        features = np.asarray(data.features)
        targets = torch.from_numpy(np.clip(data.labels, 0.1, 0.9).astype(np.float32))
        tables = renumbering(features, tuple(data.field_dims))
        seen = renumbered_dims(tables)
        runs = ((tuple(data.field_dims), features), (seen, renumber_ids(features, tables)))
        for dims, x in runs:
            epoch_seconds(dims, x, targets, 1)
        whole, compact = (epoch_seconds(dims, x, targets, args.epochs) for dims, x in runs)
        print(
            f"| {largest:,} | {sum(data.field_dims):,} | {sum(seen):,} | {1000 * whole:.0f} "
            f"| {1000 * compact:.0f} | {whole / compact:.2f}x |"
        )


if __name__ == "__main__":
    main()
