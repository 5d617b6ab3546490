"""Reading, encoding and generating CTR data."""

from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.data.encoding import Encoder, Vocabulary, bucketize, encode_splits, load_dataset
from nacs_engine.data.reading import TableSource, open_source
from nacs_engine.data.schema import TableSchema, resolve_schema

__all__ = [
    "EncodedDataset",
    "Encoder",
    "encode_splits",
    "TableSchema",
    "TableSource",
    "Vocabulary",
    "bucketize",
    "load_dataset",
    "open_source",
    "resolve_schema",
]
