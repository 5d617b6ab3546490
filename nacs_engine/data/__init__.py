"""Reading, encoding and generating CTR data."""

from nacs_engine.data.dataset import EncodedDataset

__all__ = ["EncodedDataset"]
