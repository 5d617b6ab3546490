"""Local datasets and output folders, opened only inside the folders a tenant is allowed.

The API resolves a local path and checks it when the job is submitted; a symbolic link put
in its place afterwards must not lead the worker elsewhere. So the worker checks again when
it opens: it opens the allowed folder (``NACS_ALLOWED_URIS`` for datasets, the tenant's
folder of ``NACS_STORAGE_URI`` for outputs) and then each component of the path below it
with ``O_NOFOLLOW``, relative to the folder opened before, and reads or writes through the
descriptors it opened. A component that is a symbolic link now is refused, whatever it
points to.
"""

from __future__ import annotations

import os
import stat
from typing import Any
from urllib.parse import unquote, urlsplit

import fsspec

from worker.errors import JobFailed
from worker.settings import SharedSettings

_NO_FOLLOW = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


def local_path(uri: str) -> str:
    """The normalised local path of a ``file://`` URI (or of a plain path)."""
    path = unquote(urlsplit(uri).path) if "://" in uri else uri
    return os.path.normpath(path)


def allowed_roots(settings: SharedSettings, tenant: str) -> list[str] | None:
    """The local folders ``tenant`` may read (``NACS_ALLOWED_URIS``), resolved; None when any
    location is allowed."""
    prefixes = settings.allowed_prefixes(tenant)
    if prefixes is None:
        return None
    return [
        os.path.realpath(local_path(prefix))
        for prefix in prefixes
        if prefix.lower().startswith("file://")
    ]


def open_beneath(
    root: str, path: str, *, field: str, uri: str, folder: bool = False, create: bool = False
) -> int:
    """A descriptor of ``path`` (a regular file or a folder inside ``root``; with ``folder``, a
    folder), each component below ``root`` opened without following a symbolic link. With
    ``create``, missing folders are made on the way.

    Raises JobFailed ``{field}_refused`` (naming ``uri``) when ``path`` is not inside ``root``,
    or when a component is a symbolic link or neither a file nor a folder; FileNotFoundError
    when a component is missing.
    """
    relative = os.path.relpath(path, root)
    parts = [] if relative == "." else relative.split(os.sep)
    if parts[:1] == [".."] or os.path.isabs(relative):
        raise JobFailed(f"{field}_refused", f"{field}: {uri} is not inside {root}")
    if create:
        os.makedirs(root, exist_ok=True)
    current = os.open(root, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    try:
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if create:
                try:
                    os.mkdir(part, dir_fd=current)
                except FileExistsError:
                    pass
            # O_NONBLOCK: a FIFO put in the file's place cannot stall the open.
            flags = _NO_FOLLOW | (os.O_NONBLOCK if last and not folder else os.O_DIRECTORY)
            try:
                child = os.open(part, flags, dir_fd=current)
            except OSError as error:
                if _is_link(part, current):
                    where = os.path.join(root, *parts[: depth + 1])
                    raise JobFailed(
                        f"{field}_refused",
                        f"{field}: {uri}: {where} is a symbolic link, which a job does not "
                        "follow (it could lead outside the allowed folders)",
                    ) from error
                raise
            os.close(current)
            current = child
        mode = os.fstat(current).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise JobFailed(f"{field}_refused", f"{field}: {uri} is not a file or a folder")
        return current
    except BaseException:
        os.close(current)
        raise


def _is_link(name: str, folder: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False


class ConfinedFileSystem(fsspec.AbstractFileSystem):  # type: ignore[misc]
    """The local files inside ``roots``, read through ``open_beneath``: what the engine reads
    of a dataset is what the check allowed (``nacs_engine.data.open_source(filesystem=...)``).

    Lists and reads only; a folder's symbolic links are listed as such (``islink``), as
    fsspec's local filesystem lists them, and never opened.
    """

    protocol = "file"
    root_marker = "/"
    cachable = False

    def __init__(self, roots: list[str], uri: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.roots = roots
        self.uri = uri

    def _descriptor(self, path: str) -> int:
        path = os.path.normpath(path)
        for root in self.roots:
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return open_beneath(root, path, field="dataset_uri", uri=self.uri)
        raise JobFailed(
            "dataset_uri_refused",
            f"dataset_uri: {self.uri} is outside the folders this tenant may read "
            "(NACS_ALLOWED_URIS of the worker)",
        )

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        descriptor = self._descriptor(self._strip_protocol(path))
        try:
            return _entry(self._strip_protocol(path), os.fstat(descriptor), link=False)
        finally:
            os.close(descriptor)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        descriptor = self._descriptor(path)
        try:
            with os.scandir(descriptor) as entries:
                found = [
                    _entry(
                        os.path.join(path, entry.name),
                        entry.stat(follow_symlinks=False),
                        link=entry.is_symlink(),
                    )
                    for entry in entries
                ]
        finally:
            os.close(descriptor)
        return found if detail else [entry["name"] for entry in found]

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if mode != "rb":
            raise PermissionError(f"{path}: a dataset is only read")
        descriptor = self._descriptor(self._strip_protocol(path))
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise IsADirectoryError(path)
        return os.fdopen(descriptor, "rb")


def _entry(name: str, status: os.stat_result, *, link: bool) -> dict[str, Any]:
    if link:
        kind = "other"
    elif stat.S_ISDIR(status.st_mode):
        kind = "directory"
    elif stat.S_ISREG(status.st_mode):
        kind = "file"
    else:
        kind = "other"
    return {"name": name, "size": status.st_size, "type": kind, "islink": link}
