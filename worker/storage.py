"""Datasets and outputs through fsspec: local folders, s3:// (any S3-compatible store), gs://, https://.

A result is never seen half-written: local files are written to a temporary
name in the same folder and renamed into place; on object stores each object
appears whole when its upload ends. Callers write the manifest last.

A job writes through an ``OutputFolder`` (``open_output``): a local one is a descriptor of
the folder, opened inside the tenant's folder of the store without following a symbolic link
(``worker.local_files``), and every file is written and renamed relative to it.
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

from worker.errors import JobFailed
from worker.local_files import local_path, open_beneath
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


class OutputFolder:
    """The folder of one job's result: whole files written into it, read back, removed."""

    def __init__(self, uri: str) -> None:
        self.uri = normalise_uri(uri)

    def write(self, name: str, data: bytes) -> str:
        """Write ``name`` so that a reader sees either nothing or all of it; its URI."""
        raise NotImplementedError

    def upload(self, name: str, source: str) -> str:
        """Copy the local file ``source`` to ``name`` (whole, as ``write``); its URI."""
        raise NotImplementedError

    def read(self, name: str) -> bytes | None:
        """The content of ``name``, or None when there is none."""
        raise NotImplementedError

    def remove(self, name: str) -> None:
        """Remove ``name`` if it is there."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the folder."""

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StoreFolder(OutputFolder):
    """A folder of an object store (or, for ``nacs select``, any local path) through fsspec."""

    def __init__(self, uri: str, settings: SharedSettings) -> None:
        super().__init__(uri)
        self.settings = settings

    def write(self, name: str, data: bytes) -> str:
        uri = join_uri(self.uri, name)
        write_bytes(uri, data, self.settings)
        return uri

    def upload(self, name: str, source: str) -> str:
        uri = join_uri(self.uri, name)
        upload_file(source, uri, self.settings)
        return uri

    def read(self, name: str) -> bytes | None:
        try:
            return read_bytes(join_uri(self.uri, name), self.settings)
        except FileNotFoundError:
            return None

    def remove(self, name: str) -> None:
        fs, path = filesystem(join_uri(self.uri, name), self.settings)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass


class LocalFolder(OutputFolder):
    """A local folder held open: files are made, renamed and removed relative to its
    descriptor, never through a path that a symbolic link could redirect."""

    def __init__(self, uri: str, descriptor: int) -> None:
        super().__init__(uri)
        self.descriptor = descriptor

    def write(self, name: str, data: bytes) -> str:
        with self._replaced_atomically(name) as out:
            out.write(data)
        return join_uri(self.uri, name)

    def upload(self, name: str, source: str) -> str:
        with open(source, "rb") as data, self._replaced_atomically(name) as out:
            shutil.copyfileobj(data, out, 1 << 20)
        return join_uri(self.uri, name)

    def read(self, name: str) -> bytes | None:
        try:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            handle = os.open(name, flags, dir_fd=self.descriptor)
        except FileNotFoundError:
            return None
        with os.fdopen(handle, "rb") as source:
            return source.read()

    def remove(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.descriptor)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1

    @contextmanager
    def _replaced_atomically(self, name: str) -> Iterator[BinaryIO]:
        temporary = f".part-{uuid.uuid4().hex}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        handle = os.open(temporary, flags, 0o644, dir_fd=self.descriptor)
        try:
            with os.fdopen(handle, "wb") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            # The rename replaces whatever ``name`` is, a symbolic link included, never its target.
            os.replace(temporary, name, src_dir_fd=self.descriptor, dst_dir_fd=self.descriptor)
        except BaseException:
            self.remove(temporary)
            raise


def open_output(
    output_uri: str, settings: SharedSettings, tenant: str | None = None, *, create: bool = True
) -> OutputFolder:
    """The output folder ``output_uri``, made if missing (FileNotFoundError for a missing local
    one without ``create``). With ``tenant``, a local folder must
    lie inside the tenant's folder of ``NACS_STORAGE_URI`` and is opened from there without
    following a symbolic link (JobFailed ``output_uri_refused`` otherwise); without one (``nacs
    select``), any local path is opened as it is."""
    uri = normalise_uri(output_uri)
    if scheme_of(uri) != "file":
        return StoreFolder(uri, settings)
    path = local_path(uri)
    if tenant is None:
        if create:
            os.makedirs(path, exist_ok=True)
        return LocalFolder(uri, os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY))
    store = settings.storage_path()
    if store is None:
        raise JobFailed(
            "output_uri_refused",
            f"output_uri: {uri} is a local folder, but this worker's store is "
            f"{settings.storage_uri} (NACS_STORAGE_URI)",
        )
    root = os.path.realpath(store)
    own = os.path.join(root, tenant)
    if not path.startswith(own + os.sep):
        raise JobFailed(
            "output_uri_refused",
            f"output_uri: {uri} is not inside this tenant's folder {own} of the store "
            "(NACS_STORAGE_URI of the worker)",
        )
    folder = open_beneath(root, path, field="output_uri", uri=uri, folder=True, create=create)
    return LocalFolder(uri, folder)
