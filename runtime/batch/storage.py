"""Where a batch's scenes, bundle and outputs live: plain paths or object-store URIs, through fsspec.

A ``Location`` is a string that travels to Ray workers unchanged: an absolute local path (made
absolute on the driver with ``os.path.abspath``, never ``resolve()``, so it does not follow driver-side
symlinks that workers may not have) or a ``scheme://bucket/key`` URI. Only the schemes below are
accepted; anything else is a one-line error, never a local folder named ``s3:``.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from runtime.errors import InputError
from runtime.optional_import import require

# scheme -> the fsspec backend module that serves it (None: the local filesystem)
SCHEMES: dict[str, str | None] = {
    "file": None,
    "s3": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
}
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$")


@dataclass(frozen=True)
class Location:
    """A file or folder: an absolute local path, or a URI of one of SCHEMES."""

    uri: str

    @property
    def scheme(self) -> str:
        match = _SCHEME.match(self.uri)
        return match["scheme"].lower() if match else "file"

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def local_path(self) -> str:
        """The path on this machine (local locations only)."""
        if not self.is_local:
            raise ValueError(f"{self.uri} is not a local path")
        return self.uri

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri.rstrip("/")) if not self.is_local else os.path.basename(self.uri.rstrip(os.sep))

    @property
    def parent(self) -> "Location":
        if self.is_local:
            return Location(os.path.dirname(self.uri.rstrip(os.sep)) or os.sep)
        head, _, _ = self.uri.rstrip("/").rpartition("/")
        return Location(head)

    def join(self, *parts: str) -> "Location":
        if self.is_local:
            return Location(os.path.join(self.uri, *parts))
        return Location("/".join([self.uri.rstrip("/"), *(p.strip("/") for p in parts)]))

    def filesystem(self) -> tuple[Any, str]:
        """(fsspec filesystem, path inside it); the backend's absence names the extra to install."""
        fsspec = require("fsspec", "glsnet batch (files and object storage)")
        backend = SCHEMES[self.scheme]
        if backend is not None:
            require(backend, f"{self.scheme}:// locations")
        if self.is_local:
            return fsspec.filesystem("file"), self.uri
        fs, path = fsspec.core.url_to_fs(self.uri)
        return fs, path

    def __str__(self) -> str:
        return self.uri


def parse_location(text: str | os.PathLike, cwd: str | None = None, what: str = "path") -> Location:
    """``text`` as a Location: URIs checked against SCHEMES, plain and ``file://`` paths made absolute against ``cwd``."""
    text = os.fspath(text)
    if not text:
        raise InputError(f"empty {what}")
    match = _SCHEME.match(text)
    if match is None:
        return Location(os.path.abspath(os.path.join(cwd or os.getcwd(), os.path.expanduser(text))))
    scheme = match["scheme"].lower()
    if scheme not in SCHEMES:
        raise InputError(
            f"{text}: unsupported storage scheme {scheme}://; use a plain path, file://, "
            + ", ".join(f"{s}://" for s in SCHEMES if s != "file")
        )
    if scheme == "file":
        return parse_location(match["rest"] or os.sep, cwd, what)
    if not match["rest"].strip("/"):
        raise InputError(f"{text}: the URI names no bucket or container")
    return Location(f"{scheme}://{match['rest'].rstrip('/')}")


def is_uri(text: str) -> bool:
    """True when ``text`` has a ``scheme://`` prefix (supported or not)."""
    return _SCHEME.match(text) is not None


def read_bytes(location: Location) -> bytes:
    fs, path = location.filesystem()
    with fs.open(path, "rb") as handle:
        return handle.read()


def write_bytes(location: Location, data: bytes) -> None:
    """Write a small file whole (a report, a lease): local ones under a temporary name, then renamed."""
    if location.is_local:
        from runtime.atomic_file import atomic_path

        with atomic_path(location.local_path) as tmp:
            tmp.write_bytes(data)
        return
    fs, path = location.filesystem()
    fs.pipe_file(path, data)


def exists(location: Location) -> bool:
    fs, path = location.filesystem()
    fs.invalidate_cache(path)
    return bool(fs.exists(path))


def remove(location: Location) -> None:
    fs, path = location.filesystem()
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def listing(folder: Location) -> set[str]:
    """Names of the files directly in ``folder`` (empty when it does not exist): one request for a whole batch's resume."""
    fs, path = folder.filesystem()
    fs.invalidate_cache(path)  # object-store listings are cached per process; others may have written since
    try:
        entries = fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    return {posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "file"}


def upload(local_file: str, target: Location) -> None:
    """One finished file from node-local scratch to its final place (an object appears whole or not at all)."""
    fs, path = target.filesystem()
    if target.is_local:
        from runtime.atomic_file import atomic_path

        with atomic_path(path) as tmp:
            with open(local_file, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        return
    fs.put_file(local_file, path)


def download(source: Location, local_file: str) -> None:
    fs, path = source.filesystem()
    fs.get_file(path, local_file)
