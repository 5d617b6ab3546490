"""The CPU routes of ``nacs_engine.models.layers`` against torch's own layers, same run.

Times, on this machine's CPU with torch's default threads: a table lookup forward and
backward (``lookup``: ``index_select``; torch: ``F.embedding``), dropout forward and
backward (``Dropout``: a uniform mask; torch: ``nn.Dropout``'s Bernoulli mask), and a
whole DeepFM training step (forward, backward, fused Adam) built with either pair.
Sizes: batches of 512 rows (the audit's models on 10,000 rows) and 8,192 (the teacher),
39 fields of 700 ids, embeddings of 10, an MLP of 100-100-100.

    .venv/bin/python bench/layers_speed.py
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from nacs_engine.models import layers
from nacs_engine.models.deepfm import DeepFM

FIELDS, IDS, EMBED, HIDDEN = 39, 700, 10, 100


def per_call_ms(step: Callable[[], object], seconds: float) -> float:
    """Median over 5 rounds of the mean time of one call, each round about seconds / 5."""
    for _ in range(3):
        step()
    started = time.perf_counter()
    step()
    calls = max(3, int(seconds / 5 / max(time.perf_counter() - started, 1e-6)))
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            step()
        rounds.append((time.perf_counter() - started) / calls * 1000)
    return sorted(rounds)[2]


@contextlib.contextmanager
def torch_layers() -> Iterator[None]:
    """Inside, models look rows up with ``F.embedding``, and those built inside drop out
    with ``nn.Dropout``."""
    lookup, dropout = layers.lookup, layers.Dropout
    layers.lookup = lambda table, ids: F.embedding(ids, table)
    layers.Dropout = nn.Dropout  # type: ignore[misc]
    try:
        yield
    finally:
        layers.lookup, layers.Dropout = lookup, dropout


def lookup_step(rows: int, use_torch: bool) -> Callable[[], None]:
    table = torch.randn(FIELDS * IDS, EMBED, requires_grad=True)
    ids = torch.randint(0, FIELDS * IDS, (rows, FIELDS))
    grad = torch.randn(rows, FIELDS, EMBED)

    def step() -> None:
        out = F.embedding(ids, table) if use_torch else layers.lookup(table, ids)
        out.backward(grad)
        table.grad = None

    return step


def dropout_step(rows: int, use_torch: bool) -> Callable[[], None]:
    module = nn.Dropout(0.5) if use_torch else layers.Dropout(0.5)
    x = torch.randn(rows, HIDDEN, requires_grad=True)
    grad = torch.randn(rows, HIDDEN)

    def step() -> None:
        module(x).backward(grad)
        x.grad = None

    return step


def model_step(rows: int, use_torch: bool) -> Callable[[], None]:
    """A DeepFM's training step; ``use_torch`` only says which layers the caller has set."""
    torch.manual_seed(0)
    model = DeepFM([IDS] * FIELDS, embed_dim=EMBED, hidden_dims=(HIDDEN,) * 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    x = torch.randint(0, IDS, (rows, FIELDS))
    y = torch.rand(rows)

    def step() -> None:
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| what | rows | torch's layers ms | ours ms | speed-up |")
    print("|---|---|---|---|---|")
    for name, make in (
        ("lookup, forward and backward", lookup_step),
        ("dropout 0.5, forward and backward", dropout_step),
        ("DeepFM training step", model_step),
    ):
        for rows in (512, 8192):
            with torch_layers():
                theirs = per_call_ms(make(rows, True), args.seconds)
            ours = per_call_ms(make(rows, False), args.seconds)
            print(f"| {name} | {rows:,} | {theirs:.2f} | {ours:.2f} | {theirs / ours:.2f}x |")


if __name__ == "__main__":
    main()
