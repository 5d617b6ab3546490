"""Who is calling (API keys) and what they may touch (dataset and output URIs)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib.util
import os
import socket
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

from service.errors import Unauthorized, Unprocessable
from service.settings import LOCAL_TENANT, ApiSettings
from worker.storage import join_uri, normalise_uri, private_address, scheme_of

DATASET_SCHEMES = frozenset({"file", "s3", "gs", "https"})
OUTPUT_SCHEMES = frozenset({"file", "s3", "gs"})


class KeyRing:
    """Tenants and their keys, held as SHA-256 digests: a request costs one hash and one lookup.

    Only digests are compared, so the lookup's timing can tell a caller about the
    digest of the key it sent, never about a stored key.
    """

    def __init__(self, keys: dict[str, str]) -> None:
        self._tenants = {_digest(key.encode()): tenant for key, tenant in keys.items()}

    def tenant(self, authorization: str | None) -> str:
        if not self._tenants:
            return LOCAL_TENANT
        if not authorization:
            raise Unauthorized("missing API key: send the header Authorization: Bearer <key>")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("malformed Authorization header: expected Bearer <key>")
        found = self._tenants.get(_digest(token.encode()))
        if found is None:
            raise Unauthorized("invalid API key")
        return found


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


_FILESYSTEM_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "https": "aiohttp"}


async def check_dataset_uri(uri: str, tenant: str, settings: ApiSettings) -> str:
    """The normalised dataset URI, or a 422 naming dataset_uri and why. An https:// host is
    resolved in a worker thread, so a slow DNS answer never stalls the event loop."""
    with _malformed("dataset_uri", uri):
        checked = _check_uri("dataset_uri", uri, tenant, settings, DATASET_SCHEMES)
    if scheme_of(checked) == "https" and not settings.allow_private_urls:
        host = urlsplit(checked).hostname or ""
        await asyncio.to_thread(_check_public_host, "dataset_uri", host)
    return checked


def _check_scheme_installed(field: str, scheme: str) -> None:
    package = _FILESYSTEM_PACKAGES.get(scheme)
    if package and importlib.util.find_spec(package) is None:
        raise Unprocessable(
            f"{field}: {scheme}:// is not available on this service "
            f"(the {package} package is not installed)"
        )


def _check_uri(
    field: str, uri: str, tenant: str, settings: ApiSettings, schemes: frozenset[str]
) -> str:
    raw_scheme = uri.split(":", 1)[0].lower() if ":" in uri and "://" not in uri else None
    if raw_scheme and not os.path.isabs(uri):
        raise Unprocessable(
            f"{field}: unsupported URI scheme {raw_scheme!r}; use {_listing(schemes)}"
        )
    if "://" not in uri and not os.path.isabs(uri):
        raise Unprocessable(f"{field}: a local path must be absolute (or use a file:// URI)")
    scheme = scheme_of(uri)
    if scheme not in schemes:
        raise Unprocessable(f"{field}: unsupported URI scheme {scheme!r}; use {_listing(schemes)}")
    _check_scheme_installed(field, scheme)
    normalised = normalise_uri(uri)
    parts = urlsplit(normalised)
    allowed = settings.allowed_prefixes(tenant)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise Unprocessable(f"{field}: file URIs must name a local path (file:///path)")
        resolved = "file://" + os.path.realpath(unquote(parts.path))
        if not _allowed(resolved, allowed, local=True):
            raise Unprocessable(
                f"{field}: {uri} is outside the allowed locations (NACS_ALLOWED_URIS); "
                "paths are resolved, so '..' and symbolic links cannot leave them"
            )
        return resolved
    if not parts.netloc:
        raise Unprocessable(f"{field}: {uri} names no bucket or host")
    if ".." in unquote(parts.path).split("/"):
        raise Unprocessable(f"{field}: '..' is not allowed in object keys")
    if not _allowed(normalised, allowed, local=False):
        raise Unprocessable(f"{field}: {uri} is outside the allowed locations (NACS_ALLOWED_URIS)")
    return normalised


def check_output_uri(uri: str | None, tenant: str, job_id: str, settings: ApiSettings) -> str:
    """The output URI of a job: the given one if it lies inside the tenant's prefix, else the
    default, ``{prefix}/jobs/{job_id}``. The folder ``{prefix}/jobs`` itself holds the default
    folders, so no job may write there. (That no two jobs share a folder is checked when the
    job is recorded: ``worker.enqueue.create_job``.) Local paths are resolved, the storage
    folder's too: the worker writes only below the resolved one. (What decoding or resolving
    makes of a URI, control characters or length, is checked as the request is stored.)"""
    with _malformed("output_uri", uri or ""):
        return _check_output_uri(uri, tenant, job_id, settings)


def _check_output_uri(
    uri: str | None, tenant: str, job_id: str, settings: ApiSettings
) -> str:
    prefix = join_uri(settings.storage_uri, tenant)
    if scheme_of(prefix) == "file":
        prefix = "file://" + os.path.realpath(unquote(urlsplit(prefix).path))
    if uri is None:
        return join_uri(prefix, "jobs", job_id)
    scheme = scheme_of(uri)
    if scheme not in OUTPUT_SCHEMES:
        raise Unprocessable(
            f"output_uri: unsupported URI scheme {scheme!r}; use {_listing(OUTPUT_SCHEMES)}"
        )
    _check_scheme_installed("output_uri", scheme)
    if "://" not in uri and not os.path.isabs(uri):
        raise Unprocessable("output_uri: a local path must be absolute (or use a file:// URI)")
    normalised = normalise_uri(uri)
    if scheme == "file":
        path = os.path.realpath(unquote(urlsplit(normalised).path))
        too_long = [name for name in path.split("/") if len(name.encode()) > _NAME_MAX]
        if too_long:
            raise Unprocessable(
                f"output_uri: the folder name {too_long[0][:40]}... is longer than "
                f"{_NAME_MAX} bytes, which local filesystems refuse"
            )
        normalised = "file://" + path
    elif ".." in unquote(urlsplit(normalised).path).split("/"):
        raise Unprocessable("output_uri: '..' is not allowed in object keys")
    if not normalised.startswith(prefix.rstrip("/") + "/"):
        raise Unprocessable(f"output_uri: must be inside this tenant's output prefix {prefix}/")
    if normalised == join_uri(prefix, "jobs"):
        raise Unprocessable(
            f"output_uri: {prefix}/jobs holds the folders of jobs without an output_uri; "
            "name a folder inside it or elsewhere in the prefix"
        )
    return normalised


# The longest file or folder name most local filesystems take, in bytes.
_NAME_MAX = 255


@contextlib.contextmanager
def _malformed(field: str, uri: str) -> Iterator[None]:
    """A URI the parsers refuse (an unclosed IPv6 bracket, say) as a 422 naming ``field``."""
    try:
        yield
    except ValueError as error:
        raise Unprocessable(f"{field}: {uri[:200]!r} is not a valid URI ({error})") from None


def check_output_apart(output_uri: str, dataset_uri: str) -> None:
    """Refuse an output folder that is or lies in the dataset's folder: a folder's subfolders
    are read with it, so the result's files would join the data."""
    dataset = dataset_uri.rstrip("/")
    if output_uri.rstrip("/") == dataset or output_uri.startswith(dataset + "/"):
        raise Unprocessable(
            f"output_uri: {output_uri} is or lies in the dataset's folder {dataset_uri}: its "
            "subfolders are read as part of the data; choose a folder outside it"
        )


def _allowed(uri: str, prefixes: list[str] | None, *, local: bool) -> bool:
    if prefixes is None:
        return True
    for prefix in prefixes:
        if local:
            root = _local_root(prefix)
            if root is None:
                continue
            path = unquote(urlsplit(uri).path)
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return True
        elif "://" in prefix and (
            uri == prefix.rstrip("/")
            or uri.startswith(prefix if prefix.endswith("/") else prefix + "/")
        ):
            return True
    return False


@functools.lru_cache(maxsize=1024)
def _local_root(prefix: str) -> str | None:
    """The folder an allowed ``file://`` prefix names, resolved (None for other schemes).

    Resolved once per process, like the rest of the settings: the path of each request is
    resolved every time, so '..' and symbolic links in it are still followed before the check.
    """
    if scheme_of(prefix) != "file":
        return None
    return os.path.realpath(unquote(urlsplit(normalise_uri(prefix)).path))


def _check_public_host(field: str, host: str) -> None:
    try:
        ip = private_address(host)
    except (socket.gaierror, UnicodeError):
        raise Unprocessable(f"{field}: the host {host!r} does not resolve") from None
    if ip is not None:
        raise Unprocessable(
            f"{field}: the host {host!r} resolves to a loopback, private or link-local address "
            f"({ip}), which is refused (NACS_ALLOW_PRIVATE_URLS)"
        )


def _listing(schemes: frozenset[str]) -> str:
    return ", ".join(f"{s}://" for s in sorted(schemes))
