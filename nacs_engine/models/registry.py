"""Backbone names ("deepfm", "dcnv2") mapped once to their constructors."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from nacs_engine.models.dcnv2 import DCNv2
from nacs_engine.models.deepfm import DeepFM
from nacs_engine.models.layers import check_field_dims

CTRModel = DeepFM | DCNv2
BACKBONES: dict[str, Callable[..., CTRModel]] = {"deepfm": DeepFM, "dcnv2": DCNv2}


def build_model(
    backbone: str,
    field_dims: Sequence[int],
    *,
    embed_dim: int = 10,
    dropout: float = 0.5,
    hidden_dims: Sequence[int] = (100, 100, 100),
) -> CTRModel:
    """A freshly initialised CTR model; it returns logits and exposes ``features`` and ``head``.

    Parameters are drawn from torch's global generator: call it inside
    ``runtime.seeded_scope`` for reproducible weights.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone: expected one of {', '.join(BACKBONES)}, got {backbone!r}")
    dims = check_field_dims(field_dims)
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
        raise ValueError(f"embed_dim: expected a positive integer, got {embed_dim!r}")
    if not isinstance(dropout, (int, float)) or not (0.0 <= dropout < 1.0) or math.isnan(dropout):
        raise ValueError(f"dropout: expected a number in [0, 1), got {dropout!r}")
    hidden = tuple(int(h) for h in hidden_dims)
    if not hidden or any(h < 1 for h in hidden):
        raise ValueError(f"hidden_dims: expected positive layer widths, got {hidden_dims!r}")
    return BACKBONES[backbone](
        dims, embed_dim=embed_dim, hidden_dims=hidden, dropout=float(dropout)
    )
