"""The encoded dataset every part of the engine consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class EncodedDataset:
    """A CTR dataset after encoding.

    features: (n, F) int32 array (possibly a ``np.memmap``) of per-field ids;
        id 0 of every field is its out-of-vocabulary id, ids run 0..field_dims[f]-1.
    labels: (n,) float32 array of 0.0 / 1.0.
    field_names: the F feature columns, in order.
    field_dims: (F,) vocabulary size of each field, OOV id included.
    fingerprint: hex digest that changes when the data or the encoding changes.
    """

    features: np.ndarray
    labels: np.ndarray
    field_names: tuple[str, ...]
    field_dims: tuple[int, ...]
    fingerprint: str = ""
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.features.ndim != 2:
            raise ValueError(
                f"features: expected a 2-D (n, F) array, got shape {self.features.shape}"
            )
        if self.labels.shape != (self.features.shape[0],):
            raise ValueError(
                f"labels: expected shape ({self.features.shape[0]},), got {self.labels.shape}"
            )
        if (
            len(self.field_names) != self.features.shape[1]
            or len(self.field_dims) != self.features.shape[1]
        ):
            raise ValueError("field_names, field_dims: expected one entry per feature column")

    @property
    def n_rows(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_fields(self) -> int:
        return int(self.features.shape[1])

    @property
    def n_clicks(self) -> int:
        return int(np.asarray(self.labels, dtype=np.float64).sum())

    def subset(self, rows: np.ndarray) -> EncodedDataset:
        """The rows at the given positions (a copy, in memory)."""
        rows = np.asarray(rows, dtype=np.int64)
        return EncodedDataset(
            features=np.ascontiguousarray(self.features[rows]),
            labels=np.ascontiguousarray(self.labels[rows]),
            field_names=self.field_names,
            field_dims=self.field_dims,
            fingerprint=self.fingerprint,
            metadata=dict(self.metadata),
        )
