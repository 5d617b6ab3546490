"""Reading, encoding and generating CTR data."""

from nacs_engine.data.dataset import EncodedDataset
from nacs_engine.data.encoding import Encoder, Vocabulary, bucketize, encode_splits, load_dataset
from nacs_engine.data.reading import TableSource, open_source
from nacs_engine.data.schema import TableSchema, resolve_schema
from nacs_engine.data.synthetic import SyntheticData, make_synthetic_ctr, write_synthetic

__all__ = [
    "EncodedDataset",
    "Encoder",
    "encode_splits",
    "SyntheticData",
    "TableSchema",
    "TableSource",
    "Vocabulary",
    "bucketize",
    "load_dataset",
    "make_synthetic_ctr",
    "open_source",
    "resolve_schema",
    "write_synthetic",
]
