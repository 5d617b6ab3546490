"""Datasets and outputs through fsspec: local folders, s3:// (any S3-compatible store), gs://, https://.

A result is never seen half-written: local files are written to a temporary
name in the same folder and renamed into place; on object stores each object
appears whole when its upload ends. Callers write the manifest last.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import fsspec
from fsspec.core import url_to_fs

from worker.settings import SharedSettings, local_uri


def normalise_uri(uri: str) -> str:
    """``file://`` URI for a local path; other URIs unchanged (trailing slash removed)."""
    uri = uri.strip()
    if "://" not in uri:
        return local_uri(uri).rstrip("/") or "file:///"
    return uri.rstrip("/") if len(uri) > len(uri.split("://", 1)[0]) + 4 else uri


def scheme_of(uri: str) -> str:
    return urlsplit(uri).scheme.lower() if "://" in uri else "file"


def join_uri(base: str, *parts: str) -> str:
    base = base.rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts)])


def private_address(host: str) -> str | None:
    """The first loopback, private, link-local or otherwise non-public address ``host``
    resolves to, or None.

    Raises socket.gaierror when the host does not resolve.
    """
    for info in socket.getaddrinfo(host, None):
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        # ``is_private`` covers loopback and link-local addresses too.
        if ip.is_private or ip.is_reserved or ip.is_multicast or ip.is_unspecified:
            return str(ip)
    return None


def storage_options(uri: str, settings: SharedSettings) -> dict[str, Any]:
    """fsspec options for ``uri``: the S3 endpoint and timeouts; credentials come from AWS_*
    variables."""
    scheme = scheme_of(uri)
    if scheme in ("s3", "s3a"):
        options: dict[str, Any] = {
            "skip_instance_cache": True,
            "config_kwargs": {
                "connect_timeout": settings.storage_timeout_s,
                "read_timeout": settings.storage_timeout_s,
                "retries": {"max_attempts": 2, "mode": "standard"},
            },
        }
        if settings.s3_endpoint_url:
            options["client_kwargs"] = {"endpoint_url": settings.s3_endpoint_url}
        return options
    if scheme in ("http", "https"):
        import aiohttp

        timeout_s = settings.storage_timeout_s
        return {
            "skip_instance_cache": True,
            "client_kwargs": {
                "timeout": aiohttp.ClientTimeout(None, sock_connect=timeout_s, sock_read=timeout_s)
            },
        }
    return {}


def filesystem(uri: str, settings: SharedSettings) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of ``uri`` and the path inside it."""
    return url_to_fs(normalise_uri(uri), **storage_options(uri, settings))


@contextmanager
def _replaced_atomically(path: str) -> Iterator[BinaryIO]:
    """A file to write that takes ``path``'s place only once it is complete and on disk."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".part-{uuid.uuid4().hex}")
    try:
        with open(temporary, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_bytes(uri: str, data: bytes, settings: SharedSettings) -> None:
    """Write ``data`` at ``uri`` so that a reader sees either nothing or all of it."""
    fs, path = filesystem(uri, settings)
    if scheme_of(normalise_uri(uri)) == "file":
        with _replaced_atomically(path) as out:
            out.write(data)
        return
    with fs.open(path, "wb") as out:
        out.write(data)


def upload_file(local_path: str, uri: str, settings: SharedSettings) -> None:
    """Copy a local file to ``uri`` (whole-object semantics as in ``write_bytes``)."""
    fs, path = filesystem(uri, settings)
    if scheme_of(normalise_uri(uri)) == "file":
        with open(local_path, "rb") as source, _replaced_atomically(path) as out:
            shutil.copyfileobj(source, out, 1 << 20)
        return
    fs.put_file(local_path, path)


def read_bytes(uri: str, settings: SharedSettings) -> bytes:
    fs, path = filesystem(uri, settings)
    with fs.open(path, "rb") as source:
        return source.read()


def check_storage(settings: SharedSettings) -> None:
    """Raise when the configured store does not answer (used by /readyz and workers)."""
    uri = settings.storage_uri
    fs, path = filesystem(uri, settings)
    if scheme_of(uri) == "file":
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(f"storage folder {path} is not writable")
        return
    bucket = path.strip("/").split("/", 1)[0]
    fs.ls(bucket, refresh=True)
