"""The bundle on every node without a shared path: read once by the driver, fetched once per node by the workers.

The driver reads only ``manifest.json`` (strictly parsed, precision and bands checked, its sha256
taken): no Segmenter, so a CPU-only head can launch ``--provider cuda`` workers. Each node keeps
a copy under ``<scratch>/bundles/<manifest sha256>/``: the first worker there takes a file lock,
downloads the bundle into a temporary folder, verifies every checksum of the chosen precision
against the manifest, and renames the folder into place; the others wait on the lock and reuse it.
A local bundle path is used where it is (its checksums are verified by the Segmenter as before).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

from runtime.algorithm.scheduler import normalization_for
from runtime.batch.storage import Location, read_bytes
from runtime.bundle.loader import GRAPH_ROLES, graph_files, open_bundle
from runtime.bundle.manifest import MANIFEST_NAME, Manifest, manifest_from_dict
from runtime.errors import BundleError
from runtime.options import SegmenterOptions

COMPLETE_MARK = ".complete"  # written last into a cached bundle folder


@dataclass(frozen=True)
class BundleRef:
    """What workers need to find the bundle: where it is and which manifest the driver read."""

    location: Location
    manifest_sha256: str


def check_bundle(bundle: Location, options: SegmenterOptions) -> tuple[BundleRef, Manifest]:
    """Read and check the manifest on the driver: valid, has the precision's graphs, accepts the bands."""
    where = bundle.join(MANIFEST_NAME)
    try:
        data = read_bytes(where)
    except FileNotFoundError:
        raise BundleError(f"{bundle}: no {MANIFEST_NAME}; this is not a GLSNet bundle (write one with glsnet-export onnx)") from None
    except (OSError, IsADirectoryError) as exc:
        raise BundleError(f"{where}: cannot be read ({type(exc).__name__}: {exc})") from exc
    try:
        manifest = manifest_from_dict(json.loads(data.decode("utf-8")), where=str(where))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}: not valid JSON ({exc})") from exc
    for role in GRAPH_ROLES:
        manifest.graph(role, options.precision)
    normalization_for(manifest, options.bands)
    return BundleRef(bundle, hashlib.sha256(data).hexdigest()), manifest


def graph_file_sizes(ref: BundleRef, manifest: Manifest, precision: str) -> dict[str, int]:
    """Bytes of each graph file ``precision`` runs on, by bundle-relative path (asked of the store, nothing downloaded).

    The driver's memory plan counts the weights from these (runtime.engines.declared_plan).
    """
    sizes = {}
    for file, _ in graph_files(manifest, precision, str(ref.location)).all():
        where = ref.location.join(file)
        fs, path = where.filesystem()
        try:
            sizes[file] = int(fs.size(path))
        except FileNotFoundError:
            raise BundleError(f"{where}: named in the manifest but missing; the bundle is incomplete") from None
    return sizes


def local_bundle(ref: BundleRef, scratch: str, precision: str) -> str:
    """A local folder holding the bundle the driver checked: the bundle itself, or this node's cached copy."""
    if ref.location.is_local:
        return ref.location.local_path
    cache_root = os.path.join(scratch, "bundles")
    os.makedirs(cache_root, exist_ok=True)
    cached = os.path.join(cache_root, ref.manifest_sha256)
    with _node_lock(os.path.join(cache_root, f"{ref.manifest_sha256}.lock")):
        if os.path.isfile(os.path.join(cached, COMPLETE_MARK)):
            return cached
        shutil.rmtree(cached, ignore_errors=True)  # an incomplete copy (a worker killed while renaming)
        staging = tempfile.mkdtemp(dir=cache_root, prefix=f".{ref.manifest_sha256[:16]}.")
        try:
            fs, path = ref.location.filesystem()
            fs.get(path.rstrip("/") + "/", staging + "/", recursive=True)
            _verify(ref, staging, precision)
            with open(os.path.join(staging, COMPLETE_MARK), "w", encoding="utf-8") as mark:
                mark.write(ref.location.uri + "\n")
            os.rename(staging, cached)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return cached


def _verify(ref: BundleRef, folder: str, precision: str) -> None:
    with open(os.path.join(folder, MANIFEST_NAME), "rb") as handle:
        sha = hashlib.sha256(handle.read()).hexdigest()
    if sha != ref.manifest_sha256:
        raise BundleError(
            f"{ref.location}: its {MANIFEST_NAME} changed after the driver read it (sha256 {sha[:16]}…, expected "
            f"{ref.manifest_sha256[:16]}…); do not rewrite a bundle while a batch uses it"
        )
    open_bundle(folder).graph_set(precision)  # every graph's sha256 against the manifest


@contextlib.contextmanager
def _node_lock(path: str):
    """An exclusive lock among the processes of this node (the lock dies with its holder)."""
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
