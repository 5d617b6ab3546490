"""NaCS: noise-aware coreset selection for CTR models.

``select_coreset`` is the one entry point. Attributes load lazily so that
``nacs_engine.config`` can be read by processes that have no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "select_coreset": "nacs_engine.pipeline",
    "CoresetResult": "nacs_engine.pipeline",
    "SelectionConfig": "nacs_engine.config",
    "EncodedDataset": "nacs_engine.data.dataset",
    "DataError": "nacs_engine.errors",
    "SelectionCancelled": "nacs_engine.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nacs_engine' has no attribute {name!r}")
