"""Teachers built with torch's layers and with ``nacs_engine.models.layers``' CPU routes, on
the same data: does the route change how well they rank?

For each seed, one split of a dataset of ``bench/quality.py`` (its 70/10/20 split of that
seed) with that seed's label noise on the training rows, and two cross-fitted teachers
(default selection options, one torch thread): one inside ``layers_speed.torch_layers``
(``F.embedding`` and ``nn.Dropout``), one with the current layers. Prints each teacher's
out-of-fold AUC against the training rows' clean labels, and the mean paired difference
with its standard error.

    .venv/bin/python bench/layers_teachers.py --dataset criteo --noise symmetric:0.2
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.layers_speed import torch_layers  # noqa: E402
from bench.quality import load, parse_noise  # noqa: E402
from nacs_engine.compare import add_label_noise  # noqa: E402
from nacs_engine.config import SelectionConfig  # noqa: E402
from nacs_engine.evaluate import auc  # noqa: E402
from nacs_engine.teacher import cross_fit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="criteo")
    parser.add_argument("--noise", default="symmetric:0.2", help="clean, or KIND:RATE")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    args = parser.parse_args()
    kind, rate = parse_noise(args.noise)
    torch.set_num_threads(1)
    print("| seed | torch's layers | ours | ours less torch's |")
    print("|---|---|---|---|")
    differences = []
    for seed in args.seeds:
        train, _, _ = load(args.dataset, seed)
        clean = np.asarray(train.labels, dtype=np.float32)
        given = clean if kind == "clean" else add_label_noise(clean, kind, rate, seed)[0]
        aucs = []
        for use_torch in (True, False):
            with torch_layers() if use_torch else contextlib.nullcontext():
                teacher = cross_fit(
                    train.features,
                    given,
                    np.arange(train.n_rows),
                    train.field_dims,
                    SelectionConfig(size=1, device="cpu", seed=seed),
                    device=torch.device("cpu"),
                )
            aucs.append(auc(clean, teacher.probabilities))
        differences.append(aucs[1] - aucs[0])
        print(f"| {seed} | {aucs[0]:.4f} | {aucs[1]:.4f} | {differences[-1]:+.4f} |")
    d = np.array(differences)
    error = d.std(ddof=1) / math.sqrt(d.size) if d.size > 1 else float("nan")
    print(f"mean difference {d.mean():+.4f} ± {error:.4f} (standard error, {d.size} seeds)")


if __name__ == "__main__":
    main()
