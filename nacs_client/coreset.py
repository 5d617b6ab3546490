"""A selected coreset, ready for a training loop.

``coreset.parquet`` has one row per selected row of the dataset: ``row`` (int64,
0-based position in the dataset as read), ``label`` (the original label),
``soft_label`` (the corrected label), ``weight`` and ``uncertainty`` (float32).
pandas and torch are optional and imported only by the methods that need them.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nacs_client.types import Manifest

if TYPE_CHECKING:
    import pandas
    import torch.utils.data

__all__ = ["Coreset", "COLUMNS", "open_uri", "copy_to_local"]

COLUMNS: tuple[str, ...] = ("row", "label", "soft_label", "weight", "uncertainty")
S3_ENDPOINT_ENV = "NACS_S3_ENDPOINT_URL"


class Coreset:
    """The rows selected by a job, their labels, corrected soft labels, weights and uncertainty.

    Arrays (all of length ``k``, in coreset order, which is ascending ``rows``):
    ``rows`` int64 positions in the dataset, ``labels`` the original labels,
    ``soft_labels``, ``weights`` and ``uncertainty`` float32.
    """

    def __init__(
        self,
        rows: np.ndarray,
        labels: np.ndarray,
        soft_labels: np.ndarray,
        weights: np.ndarray,
        uncertainty: np.ndarray,
        *,
        manifest: Manifest | None = None,
        uri: str | None = None,
    ) -> None:
        # Own, writable copies (arrays read from Arrow are read-only views).
        self.rows = np.array(rows, dtype=np.int64)  # (k,)
        self.labels = np.array(labels)  # (k,)
        self.soft_labels = np.array(soft_labels, dtype=np.float32)  # (k,)
        self.weights = np.array(weights, dtype=np.float32)  # (k,)
        self.uncertainty = np.array(uncertainty, dtype=np.float32)  # (k,)
        self.manifest = manifest
        self.uri = uri
        k = self.rows.shape[0]
        for name in ("rows", "labels", "soft_labels", "weights", "uncertainty"):
            array = getattr(self, name)
            if array.ndim != 1 or array.shape[0] != k:
                raise ValueError(f"{name}: expected shape ({k},), got {array.shape}")
        if k and self.rows.min() < 0:
            raise ValueError("rows: positions must be 0 or more")

    # --- reading -----------------------------------------------------------------------

    @classmethod
    def from_arrow(
        cls, table: pa.Table, *, manifest: Manifest | None = None, uri: str | None = None
    ) -> Coreset:
        """A coreset from a table with the columns of ``coreset.parquet``."""
        missing = [name for name in COLUMNS if name not in table.column_names]
        if missing:
            where = f" in {uri}" if uri else ""
            raise ValueError(
                f"coreset{where}: missing column(s) {', '.join(missing)}; "
                f"expected {', '.join(COLUMNS)}"
            )
        arrays = {name: table.column(name).to_numpy() for name in COLUMNS}
        return cls(
            arrays["row"],
            arrays["label"],
            arrays["soft_label"],
            arrays["weight"],
            arrays["uncertainty"],
            manifest=manifest,
            uri=uri,
        )

    @classmethod
    def read(
        cls,
        uri: str,
        *,
        manifest: Manifest | Mapping[str, Any] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> Coreset:
        """Read ``coreset.parquet`` from a local path, ``file://``, ``s3://`` or ``https://``
        URI."""
        if manifest is not None and not isinstance(manifest, Manifest):
            manifest = Manifest.model_validate(manifest)
        with open_uri(uri, storage_options) as handle:
            table = pq.read_table(handle)
        return cls.from_arrow(table, manifest=manifest, uri=uri)

    # --- views -------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __repr__(self) -> str:
        source = f", uri={self.uri!r}" if self.uri else ""
        return f"Coreset(size={len(self)}{source})"

    def to_arrow(self) -> pa.Table:
        """The coreset as a pyarrow Table with the columns of ``coreset.parquet``."""
        return pa.table(
            {
                "row": self.rows,
                "label": self.labels,
                "soft_label": self.soft_labels,
                "weight": self.weights,
                "uncertainty": self.uncertainty,
            }
        )

    def to_pandas(self) -> pandas.DataFrame:
        """The coreset as a pandas DataFrame (needs pandas: ``pip install 'nacs[pandas]'``)."""
        try:
            import pandas  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "Coreset.to_pandas needs pandas: pip install 'nacs[pandas]'"
            ) from error
        return self.to_arrow().to_pandas()

    # --- picking rows out of the original dataset ----------------------------------------

    def take(self, table: Any) -> Any:
        """The selected rows of the original dataset, in coreset order.

        ``table`` is the whole dataset, read in the same order as the service
        read it: a pandas DataFrame or Series (rows by position, the index is
        kept), a pyarrow Table, RecordBatch, Array or ChunkedArray, or a numpy
        array (rows along axis 0). The result has the same type, ``len(self)`` rows.
        """
        if _is_pandas(table):
            self._check_length(len(table), "table")
            return table.iloc[self.rows]
        if isinstance(table, (pa.Table, pa.RecordBatch, pa.Array, pa.ChunkedArray)):
            self._check_length(len(table), "table")
            return table.take(pa.array(self.rows, type=pa.int64()))
        if isinstance(table, np.ndarray):
            if table.ndim == 0:
                raise ValueError("table: expected an array with rows along axis 0, got a scalar")
            self._check_length(table.shape[0], "table")
            return table[self.rows]
        raise TypeError(
            "table: expected a pandas DataFrame or Series, a pyarrow Table, RecordBatch or "
            f"Array, or a numpy array; got {type(table).__name__}"
        )

    def torch_subset(self, dataset: Any) -> torch.utils.data.Subset[Any]:
        """A ``torch.utils.data.Subset`` of ``dataset`` (indexed like the original rows)."""
        from torch.utils.data import Subset

        if hasattr(dataset, "__len__"):
            self._check_length(len(dataset), "dataset")
        return Subset(dataset, self.rows.tolist())

    def weighted_sampler(
        self,
        num_samples: int | None = None,
        replacement: bool = True,
        *,
        generator: Any = None,
    ) -> torch.utils.data.WeightedRandomSampler:
        """A ``WeightedRandomSampler`` over coreset positions ``0..len(self)-1``, drawn by
        ``weights``.

        Use it with a dataset in coreset order, such as ``torch_subset(dataset)``
        or a ``TensorDataset`` built from ``take(table)``. ``num_samples``
        defaults to ``len(self)``.
        """
        import torch
        from torch.utils.data import WeightedRandomSampler

        if num_samples is None:
            num_samples = len(self)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples: expected a whole number >= 1, got {num_samples!r}")
        if len(self) == 0:
            raise ValueError("weighted_sampler: the coreset is empty")
        if not replacement and num_samples > len(self):
            raise ValueError(
                f"num_samples: {num_samples} draws without replacement from {len(self)} rows"
            )
        weights = torch.as_tensor(self.weights, dtype=torch.float64)  # (k,)
        return WeightedRandomSampler(
            weights,  # type: ignore[arg-type]  # typed as Sequence[float]; a tensor is what it stores
            num_samples=num_samples,
            replacement=replacement,
            generator=generator,
        )

    def _check_length(self, length: int, name: str) -> None:
        expected = self.manifest.data_rows if self.manifest is not None else None
        if expected is not None and length != expected:
            raise ValueError(
                f"{name}: has {length} rows, but the dataset this coreset was selected from "
                f"had {expected}; pass the whole dataset, read in the same order"
            )
        if len(self) and int(self.rows.max()) >= length:
            raise ValueError(
                f"{name}: has {length} rows, but the coreset selects row {int(self.rows.max())}; "
                "pass the whole dataset, read in the same order"
            )


def _is_pandas(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "pandas" and hasattr(value, "iloc")


# --- storage --------------------------------------------------------------------------------


def _options_for(uri: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    options = dict(storage_options or {})
    protocol = fsspec.utils.get_protocol(uri)
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get(S3_ENDPOINT_ENV)
        client_kwargs = options.get("client_kwargs") or {}
        if endpoint and "endpoint_url" not in options and "endpoint_url" not in client_kwargs:
            options["endpoint_url"] = endpoint
    return options


def open_uri(uri: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """A binary file opened for reading ``uri`` (use it in a ``with`` block).

    Local paths, ``file://``, ``s3://`` and the other fsspec protocols go
    through fsspec (a clear ImportError when a backend such as s3fs is
    missing); for ``s3://`` the endpoint defaults to ``$NACS_S3_ENDPOINT_URL``.
    ``http://`` and ``https://`` are fetched with httpx, so they need no extra
    package; ``storage_options`` may then hold ``headers`` and ``timeout``.
    """
    protocol = fsspec.utils.get_protocol(uri)
    if protocol in ("http", "https"):
        return _fetch_http(uri, storage_options or {})
    try:
        return fsspec.open(uri, "rb", **_options_for(uri, storage_options))
    except ImportError as error:
        extra = " (pip install 'nacs[s3]')" if protocol in ("s3", "s3a") else ""
        raise ImportError(
            f"reading {protocol}:// URIs needs an optional package{extra}: {error}"
        ) from error


def _fetch_http(uri: str, options: Mapping[str, Any]) -> io.BytesIO:
    import httpx

    unknown = sorted(set(options) - {"headers", "timeout"})
    if unknown:
        raise ValueError(f"storage_options: {', '.join(unknown)} not supported for {uri}")
    try:
        response = httpx.get(
            uri,
            headers=options.get("headers"),
            timeout=options.get("timeout", 60.0),
            follow_redirects=True,
        )
    except httpx.HTTPError as error:
        raise OSError(f"could not read {uri}: {error}") from error
    if response.status_code == 404:
        raise FileNotFoundError(f"{uri}: HTTP 404")
    if not response.is_success:
        raise OSError(f"could not read {uri}: HTTP {response.status_code}")
    return io.BytesIO(response.content)


def copy_to_local(
    uri: str, path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> Path:
    """Copy ``uri`` to the local ``path``; the file appears whole or not at all."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(descriptor, "wb") as sink, open_uri(uri, storage_options) as source:
            shutil.copyfileobj(source, sink)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
