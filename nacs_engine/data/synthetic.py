"""Synthetic Criteo-like CTR data with a known teacher and known label noise.

Each of the F fields draws its values from a Zipf-like law over its own
cardinality (by default a spread from a handful to 100,000 values, as in
Criteo: the first fields look like bucketed counts, the rest like hashed
categories). A hidden teacher gives every row a click probability

    p = sigmoid(b + s * (sum_f w_f[x_f] + sum_{(a, c) in pairs} <e_a[x_a], e_c[x_c]>))

with random per-value weights w (a random scale per field, so some fields
matter and others do not) and a few pairwise interactions through low-rank
value embeddings e (what an FM or DeepFM can learn). s sets the spread of the
logits (``signal``, their standard deviation) and b is solved for so that the
mean of p is ``click_rate``. Clean labels are drawn from p; then labels are
flipped at ``flip_rate`` (uniformly at random, or class-conditionally with a
pair of rates), and the flipped rows are returned.

Rows are generated in fixed chunks from per-chunk random streams, so the data
depend only on the arguments and the seed, and any size from 1e3 to 1e7 rows
fits in bounded memory (features go to a memory-mapped file above a threshold;
``write_synthetic`` streams straight to a Parquet or CSV file).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.data.storage import DEFAULT_MEMMAP_THRESHOLD_BYTES, FeatureSink

CHUNK_ROWS = 1 << 16
_PILOT_ROWS = 200_000
_MAX_ROWS = 2_000_000_000


@dataclass(frozen=True)
class SyntheticData:
    """Generated data and the truth behind it.

    dataset: the EncodedDataset with the noisy (observed) labels.
    clean_labels: (n,) float32 labels drawn from the teacher before flipping.
    flipped: (n,) bool, True where the observed label differs from the clean one.
    click_probability: (n,) float32 the teacher's click probability of each row.
    """

    dataset: EncodedDataset
    clean_labels: np.ndarray
    flipped: np.ndarray
    click_probability: np.ndarray


@dataclass(frozen=True)
class SyntheticTruth:
    """What ``write_synthetic`` knows about the file it wrote (arrays of shape (n,))."""

    clean_labels: np.ndarray
    flipped: np.ndarray
    click_probability: np.ndarray
    n_rows: int
    n_clicks: int


@dataclass(frozen=True)
class _Spec:
    n_rows: int
    cardinalities: tuple[int, ...]
    exponents: tuple[float, ...]
    click_rate: float
    flip_negative: float
    flip_positive: float
    signal: float
    n_interactions: int
    interaction_dim: int
    seed: int


class _Teacher:
    """The hidden click model: per-value weights plus low-rank pairwise interactions."""

    def __init__(self, spec: _Spec, rng: np.random.Generator) -> None:
        n_fields = len(spec.cardinalities)
        field_scale = rng.lognormal(mean=0.0, sigma=0.75, size=n_fields)
        field_scale *= rng.random(n_fields) < 0.8  # about a fifth of the fields carry no signal
        self.weights = [
            (rng.standard_normal(card) * scale).astype(np.float32)
            for card, scale in zip(spec.cardinalities, field_scale, strict=True)
        ]
        n_pairs = min(spec.n_interactions, n_fields * (n_fields - 1) // 2)
        pairs: set[tuple[int, int]] = set()
        while len(pairs) < n_pairs:
            a, c = sorted(rng.choice(n_fields, size=2, replace=False).tolist())
            pairs.add((a, c))
        self.pairs = sorted(pairs)
        involved = sorted({f for pair in self.pairs for f in pair})
        d = spec.interaction_dim
        self.embeddings = {
            f: (rng.standard_normal((spec.cardinalities[f], d)) / np.sqrt(d)).astype(np.float32)
            for f in involved
        }
        self.scale = 1.0
        self.bias = 0.0

    def raw_logits(self, values: np.ndarray) -> np.ndarray:
        """(n,) float64 logits before scale and bias; values (F, n) 0-based value ranks."""
        logits = np.zeros(values.shape[1], dtype=np.float64)
        for f, weights in enumerate(self.weights):
            logits += weights[values[f]]
        for a, c in self.pairs:
            ea = self.embeddings[a][values[a]]  # (n, d)
            ec = self.embeddings[c][values[c]]  # (n, d)
            logits += np.einsum("nd,nd->n", ea, ec)
        return logits

    def probability(self, values: np.ndarray) -> np.ndarray:
        return _sigmoid(self.bias + self.scale * self.raw_logits(values))

    def calibrate(self, pilot: np.ndarray, signal: float, click_rate: float) -> None:
        """Set the scale so the logits' std is ``signal`` and the bias so mean p = click_rate."""
        raw = self.raw_logits(pilot)
        spread = float(raw.std())
        self.scale = signal / spread if spread > 0 else 0.0
        z = self.scale * (raw - raw.mean())
        low, high = -30.0, 30.0
        bias = float(np.log(click_rate / (1 - click_rate)))
        for _ in range(60):  # Newton steps, kept inside a shrinking bracket
            p = _sigmoid(bias + z)
            gap = float(p.mean()) - click_rate
            if abs(gap) < 1e-10:
                break
            if gap > 0:
                high = bias
            else:
                low = bias
            slope = float((p * (1 - p)).mean())
            step = bias - gap / slope if slope > 0 else (low + high) / 2
            bias = step if low < step < high else (low + high) / 2
        self.bias = bias - self.scale * float(raw.mean())


def default_cardinalities(n_fields: int, *, max_cardinality: int = 100_000) -> tuple[int, ...]:
    """Criteo-like cardinalities: about a third of the fields like bucketed counts
    (8-64 values), the rest spread log-uniformly from 3 to ``max_cardinality``."""
    if isinstance(n_fields, bool) or not isinstance(n_fields, int) or n_fields < 1:
        raise ValueError(f"n_fields: expected a positive integer, got {n_fields!r}")
    if (
        isinstance(max_cardinality, bool)
        or not isinstance(max_cardinality, int)
        or max_cardinality < 3
    ):
        raise ValueError(
            f"max_cardinality: expected an integer of at least 3, got {max_cardinality!r}"
        )
    n_numeric = min(13, n_fields // 3)
    numeric = np.rint(np.geomspace(8, 64, n_numeric)).astype(int) if n_numeric else np.empty(0, int)
    n_categorical = n_fields - n_numeric
    categorical = np.rint(np.geomspace(3, max_cardinality, n_categorical)).astype(int)
    # interleave small and large categorical fields so that no block of fields is all tiny
    order = np.argsort(np.arange(n_categorical) % 2, kind="stable")
    return tuple(int(c) for c in np.concatenate([numeric, categorical[order]]))


def make_synthetic_ctr(
    n_rows: int,
    *,
    n_fields: int = 39,
    cardinalities: Sequence[int] | None = None,
    click_rate: float = 0.25,
    flip_rate: float | tuple[float, float] = 0.2,
    signal: float = 1.5,
    n_interactions: int = 8,
    interaction_dim: int = 4,
    seed: int = 0,
    min_count: int = 1,
    workdir: str | os.PathLike[str] | None = None,
    memmap_threshold_bytes: int = DEFAULT_MEMMAP_THRESHOLD_BYTES,
) -> SyntheticData:
    """Generate ``n_rows`` rows of Criteo-like data with known label noise.

    n_fields: F, the number of categorical fields (ignored when cardinalities is given).
    cardinalities: (F,) number of values of each field (default ``default_cardinalities``).
    click_rate: mean teacher click probability, i.e. the rate of the clean labels, in (0, 1).
    flip_rate: share of labels flipped uniformly at random, in [0, 0.5); or a pair
        (rate of clean 0s turned 1, rate of clean 1s turned 0) for class-conditional noise.
    signal: standard deviation of the teacher's logits (higher: an easier task).
    n_interactions, interaction_dim: pairwise field interactions in the teacher and their rank.
    seed: the same arguments and seed give the same data.
    min_count: values seen fewer times map to id 0 (OOV) and the others are
        renumbered, most frequent first, exactly as ``load_dataset`` with this
        min_count encodes the file ``write_synthetic`` writes; 1 keeps every value.
    workdir, memmap_threshold_bytes: features larger than the threshold go to a
        memory-mapped file in workdir (default: the temp folder).

    Returns SyntheticData; dataset.features is (n, F) int32 with ids 1..card
    (frequent values first; with min_count 1 the OOV id 0 is unused),
    dataset.labels the noisy labels.
    """
    _check_int("min_count", min_count, 1, 1_000_000)
    spec = _make_spec(
        n_rows,
        n_fields,
        cardinalities,
        click_rate,
        flip_rate,
        signal,
        n_interactions,
        interaction_dim,
        seed,
    )
    n_fields = len(spec.cardinalities)
    sink = FeatureSink(n_fields, spec.n_rows, memmap_threshold_bytes, workdir, "synthetic data")
    labels = np.empty(spec.n_rows, dtype=np.float32)
    clean = np.empty(spec.n_rows, dtype=np.float32)
    flipped = np.empty(spec.n_rows, dtype=bool)
    probability = np.empty(spec.n_rows, dtype=np.float32)
    try:
        for start, chunk in _generate(spec):
            ids, noisy, clean_chunk, flipped_chunk, p = chunk
            stop = start + ids.shape[0]
            sink.append(ids)
            labels[start:stop] = noisy
            clean[start:stop] = clean_chunk
            flipped[start:stop] = flipped_chunk
            probability[start:stop] = p
        features, storage = sink.finish()
    except BaseException:
        sink.discard()
        raise
    field_dims = tuple(c + 1 for c in spec.cardinalities)
    if min_count > 1:
        field_dims = _apply_min_count(features, spec.cardinalities, min_count)
    n_clicks = int(labels.sum(dtype=np.float64))
    dataset = EncodedDataset(
        features=features,
        labels=labels,
        field_names=tuple(f"f{i}" for i in range(n_fields)),
        field_dims=field_dims,
        fingerprint=_fingerprint(spec, min_count),
        metadata={
            "source": "synthetic",
            "n_rows": spec.n_rows,
            "n_clicks": n_clicks,
            "click_rate": n_clicks / spec.n_rows,
            "clean_click_rate": float(clean.mean(dtype=np.float64)),
            "flip_share": float(flipped.mean()),
            "storage": storage,
            "min_count": min_count,
            "synthetic": _spec_dict(spec),
        },
    )
    return SyntheticData(dataset, clean, flipped, probability)


def write_synthetic(
    path: str | os.PathLike[str],
    n_rows: int,
    *,
    format: str = "parquet",
    truth_path: str | os.PathLike[str] | None = None,
    n_fields: int = 39,
    cardinalities: Sequence[int] | None = None,
    click_rate: float = 0.25,
    flip_rate: float | tuple[float, float] = 0.2,
    signal: float = 1.5,
    n_interactions: int = 8,
    interaction_dim: int = 4,
    seed: int = 0,
) -> SyntheticTruth:
    """Write the rows ``make_synthetic_ctr`` would make (same arguments, same seed)
    to a file, chunk by chunk: columns ``label`` (int8, the noisy label) and
    ``f0``..``f{F-1}`` (int32 value ids).

    format: "parquet" (one row group per 65,536 rows) or "csv" (with a header).
    truth_path: if given, also write a Parquet file with the columns
        clean_label, flipped and click_probability, one row per data row.
    Returns the truth arrays.
    """
    if format not in ("parquet", "csv"):
        raise ValueError(f"format: expected 'parquet' or 'csv', got {format!r}")
    spec = _make_spec(
        n_rows,
        n_fields,
        cardinalities,
        click_rate,
        flip_rate,
        signal,
        n_interactions,
        interaction_dim,
        seed,
    )
    names = ["label", *(f"f{i}" for i in range(len(spec.cardinalities)))]
    schema = pa.schema(
        [pa.field("label", pa.int8())] + [pa.field(name, pa.int32()) for name in names[1:]]
    )
    clean = np.empty(spec.n_rows, dtype=np.float32)
    flipped = np.empty(spec.n_rows, dtype=bool)
    probability = np.empty(spec.n_rows, dtype=np.float32)
    n_clicks = 0
    writer: Any
    if format == "parquet":
        writer = pq.ParquetWriter(os.fspath(path), schema, compression="zstd")
    else:
        writer = pa_csv.CSVWriter(os.fspath(path), schema)
    with writer:
        for start, (ids, noisy, clean_chunk, flipped_chunk, p) in _generate(spec):
            stop = start + ids.shape[0]
            columns = [pa.array(noisy.astype(np.int8))] + [
                pa.array(ids[:, f]) for f in range(ids.shape[1])
            ]
            writer.write_batch(pa.record_batch(columns, schema=schema))
            clean[start:stop] = clean_chunk
            flipped[start:stop] = flipped_chunk
            probability[start:stop] = p
            n_clicks += int(noisy.sum(dtype=np.int64))
    if truth_path is not None:
        pq.write_table(
            pa.table({"clean_label": clean, "flipped": flipped, "click_probability": probability}),
            os.fspath(truth_path),
        )
    return SyntheticTruth(clean, flipped, probability, spec.n_rows, n_clicks)


def _apply_min_count(
    features: np.ndarray, cardinalities: Sequence[int], min_count: int
) -> tuple[int, ...]:
    """Map ids seen fewer than min_count times to 0 and renumber the rest in place,
    most frequent first (ties in text order, as the encoder breaks them).

    features: (n, F) int32, ids 1..card. Returns the new field_dims.
    """
    block_rows = 16 * CHUNK_ROWS
    counts = [np.zeros(card + 1, dtype=np.int64) for card in cardinalities]
    for start in range(0, features.shape[0], block_rows):
        block = np.ascontiguousarray(features[start : start + block_rows].T)  # (F, b)
        for f, field_counts in enumerate(counts):
            field_counts += np.bincount(block[f], minlength=field_counts.shape[0])
    tables = []
    for field_counts in counts:
        kept = np.flatnonzero(field_counts >= min_count)
        kept = kept[kept > 0]
        order = np.lexsort((kept.astype(str), -field_counts[kept]))
        table = np.zeros(field_counts.shape[0], dtype=np.int32)
        table[kept[order]] = np.arange(1, kept.shape[0] + 1, dtype=np.int32)
        tables.append(table)
    for start in range(0, features.shape[0], block_rows):
        block = np.array(features[start : start + block_rows])  # (b, F)
        for f, table in enumerate(tables):
            block[:, f] = table[block[:, f]]
        features[start : start + block_rows] = block
    if isinstance(features, np.memmap):
        features.flush()
    return tuple(int(np.count_nonzero(table)) + 1 for table in tables)


def _generate(spec: _Spec) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
    """Yield (first row, (ids (b, F) int32, noisy, clean, flipped, p)) chunk by chunk."""
    root = np.random.SeedSequence(spec.seed)
    teacher_seed, pilot_seed, data_seed = root.spawn(3)
    teacher = _Teacher(spec, np.random.default_rng(teacher_seed))
    pilot_rows = min(_PILOT_ROWS, max(spec.n_rows, 20_000))
    teacher.calibrate(
        _draw_values(spec, pilot_rows, np.random.default_rng(pilot_seed)),
        spec.signal,
        spec.click_rate,
    )
    n_chunks = -(-spec.n_rows // CHUNK_ROWS)
    for index, chunk_seed in enumerate(data_seed.spawn(n_chunks)):
        rng = np.random.default_rng(chunk_seed)
        start = index * CHUNK_ROWS
        rows = min(CHUNK_ROWS, spec.n_rows - start)
        values = _draw_values(spec, rows, rng)  # (F, b) 0-based ranks
        p = teacher.probability(values)
        clean = (rng.random(rows) < p).astype(np.float32)
        flip_chance = np.where(clean > 0, spec.flip_positive, spec.flip_negative)
        flipped = rng.random(rows) < flip_chance
        noisy = np.where(flipped, 1.0 - clean, clean).astype(np.float32)
        ids = values.T + 1  # (b, F)
        yield start, (ids, noisy, clean, flipped, p.astype(np.float32))


def _draw_values(spec: _Spec, rows: int, rng: np.random.Generator) -> np.ndarray:
    """(F, rows) int32 value ranks, rank r of a field drawn with weight ~ (r + 1)^-s."""
    values = np.empty((len(spec.cardinalities), rows), dtype=np.int32)
    for f, (card, s) in enumerate(zip(spec.cardinalities, spec.exponents, strict=True)):
        u = rng.random(rows)
        top = card + 1.0
        if abs(s - 1.0) < 1e-6:
            x = top**u
        else:
            x = (1.0 + u * (top ** (1.0 - s) - 1.0)) ** (1.0 / (1.0 - s))
        np.clip(np.floor(x) - 1, 0, card - 1, out=x)
        values[f] = x
    return values


def _make_spec(
    n_rows: int,
    n_fields: int,
    cardinalities: Sequence[int] | None,
    click_rate: float,
    flip_rate: float | tuple[float, float],
    signal: float,
    n_interactions: int,
    interaction_dim: int,
    seed: int,
) -> _Spec:
    _check_int("n_rows", n_rows, 1, _MAX_ROWS)
    if cardinalities is None:
        cards = default_cardinalities(n_fields)
    else:
        if isinstance(cardinalities, (str, bytes)) or len(cardinalities) == 0:
            raise ValueError("cardinalities: expected a non-empty list of integers")
        for card in cardinalities:
            if (
                isinstance(card, bool)
                or not isinstance(card, (int, np.integer))
                or not 1 <= card <= 2**30
            ):
                raise ValueError(f"cardinalities: expected integers in [1, 2^30], got {card!r}")
        cards = tuple(int(c) for c in cardinalities)
    _check_float("click_rate", click_rate, 0.0, 1.0, closed=False)
    if isinstance(flip_rate, (tuple, list)):
        if len(flip_rate) != 2:
            raise ValueError("flip_rate: expected a rate or a pair (from 0 to 1, from 1 to 0)")
        flip_negative, flip_positive = flip_rate
    else:
        flip_negative = flip_positive = flip_rate
    for value in (flip_negative, flip_positive):
        _check_float("flip_rate", value, 0.0, 0.5, closed=True)
        if value >= 0.5:
            raise ValueError(f"flip_rate: must be below 0.5, got {value!r}")
    _check_float("signal", signal, 0.0, 20.0, closed=True)
    _check_int("n_interactions", n_interactions, 0, 10_000)
    _check_int("interaction_dim", interaction_dim, 1, 256)
    _check_int("seed", seed, 0, 2**63 - 1)
    exponent_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    exponents = tuple(float(e) for e in exponent_rng.uniform(0.9, 1.3, len(cards)))
    return _Spec(
        int(n_rows),
        cards,
        exponents,
        float(click_rate),
        float(flip_negative),
        float(flip_positive),
        float(signal),
        int(n_interactions),
        int(interaction_dim),
        int(seed),
    )


def _spec_dict(spec: _Spec) -> dict[str, Any]:
    return {
        "n_rows": spec.n_rows,
        "cardinalities": list(spec.cardinalities),
        "click_rate": spec.click_rate,
        "flip_rate": [spec.flip_negative, spec.flip_positive],
        "signal": spec.signal,
        "n_interactions": spec.n_interactions,
        "interaction_dim": spec.interaction_dim,
        "seed": spec.seed,
    }


def _fingerprint(spec: _Spec, min_count: int) -> str:
    """The data are a pure function of the spec, so the spec's digest identifies them."""
    text = json.dumps(
        {"generator": "nacs-synthetic-1", "min_count": min_count, **_spec_dict(spec)},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not low <= value <= high
    ):
        raise ValueError(f"{name}: expected an integer in [{low}, {high}], got {value!r}")


def _check_float(name: str, value: Any, low: float, high: float, *, closed: bool) -> None:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (low <= v <= high) if closed else (low < v < high)
    if not ok:
        bounds = f"[{low}, {high}]" if closed else f"({low}, {high})"
        raise ValueError(f"{name}: expected a number in {bounds}, got {value!r}")
