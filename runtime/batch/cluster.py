"""Joining a Ray cluster, or starting a local Ray instance for one batch, with errors in one line.

``ray.init(address=...)`` to a head that is not there retries for minutes; the head's port is
probed first (a few seconds), so a wrong ``--address`` fails at once and says what to do. A Ray
instance that the caller already started (a notebook, the tests) is used as it is and left running.
"""

from __future__ import annotations

import contextlib
import socket
from types import ModuleType
from typing import Iterator

from runtime.errors import ClusterError
from runtime.optional_import import require

CONNECT_TIMEOUT_S = 5.0
LOCAL_OBJECT_STORE_BYTES = 200 * 1000**2  # a batch passes paths and small results, never pixels
DEFAULT_CLIENT_PORT = 10001
LOOPBACK = ("127.0.0.1", "localhost", "::1")
START_HINT = "start one with `ray start --head` (see docs/cluster.md), or drop --address to run on a local Ray instance"


@contextlib.contextmanager
def ray_session(address: str | None, local_cpus: int | None = None) -> Iterator[ModuleType]:
    """Ray, connected: to ``address`` ("auto" or HOST:PORT or ray://HOST:PORT), else to a local instance started here.

    On the way out the driver disconnects; a local instance started here is stopped.
    """
    ray = require("ray", "glsnet batch (Ray workers)")
    if ray.is_initialized():
        yield ray
        return
    if address is None:
        init = dict(
            num_cpus=local_cpus,
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            _node_ip_address="127.0.0.1",
        )
    else:
        host = _probe(address)
        init = dict(address=address)
        if host in LOOPBACK:  # a head on this machine's loopback: this driver joins as 127.0.0.1 too, not by its LAN address
            init["_node_ip_address"] = "127.0.0.1"
    try:
        ray.init(log_to_driver=False, logging_level="WARNING", **init)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        if address is None:
            raise ClusterError(f"could not start a local Ray instance: {_first_line(exc)}") from exc
        raise ClusterError(
            f"--address {address}: something answers there but Ray could not join it ({_first_line(exc)}); check that it is "
            f"a Ray head of the same Ray version and, where the cluster uses token authentication, that this node has its "
            f"token ($RAY_AUTH_TOKEN or ~/.ray/auth_token)"
        ) from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def _probe(address: str) -> str:
    """Fail within CONNECT_TIMEOUT_S when nothing listens at the head's address; return the head's host."""
    if address == "auto":
        target = _auto_address()
        if target is None:
            raise ClusterError(
                f"--address auto: no running Ray cluster was found from this node (none in $RAY_ADDRESS, "
                f"none started here with `ray start`); {START_HINT}"
            )
    elif address.startswith("ray://"):
        target = address[len("ray://") :].split("/", 1)[0]
        target = target if ":" in target.rsplit("]", 1)[-1] else f"{target}:{DEFAULT_CLIENT_PORT}"
    else:
        target = address
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise ClusterError(f"--address {address}: no Ray cluster answers at {host}:{port} ({reason}); {START_HINT}") from exc
    return host


def _auto_address() -> str | None:
    """The HOST:PORT that Ray's "auto" means on this node ($RAY_ADDRESS, or the last `ray start`), or None."""
    from ray._private.services import (
        canonicalize_bootstrap_address,  # the resolver ray.init uses for "auto"
    )

    try:
        return canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError):
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
