"""A lease file in the output folder, so two drivers never run the same output at once.

``OUT/.glsnet-batch.lease`` names the driver (host, pid) and when it last renewed the lease. A
second driver refuses to start while the lease is fresh (renewed within LEASE_TTL_S) unless its
holder is provably dead: on the same host with no such process (a driver killed with SIGKILL is
taken over at once by a re-run on its host; elsewhere after LEASE_TTL_S). Object stores have no
atomic create, so two drivers starting within the same second can both win: the lease guards
against the common mistake (a second run while one is going), not a deliberate race.

A daemon thread renews the lease from acquire() to release(), so a long setup (scene headers,
Ray's start) never lets it go stale. A renewal that finds another driver's lease (it took over a
lease this driver let lapse) raises ClusterError in the driver's next renew() instead of
overwriting it: two drivers never both go on writing the same output.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from runtime.batch.storage import Location, read_bytes, remove, write_bytes
from runtime.errors import ClusterError

LEASE_NAME = ".glsnet-batch.lease"
LEASE_TTL_S = 60.0
RENEW_EVERY_S = 15.0


class Lease:
    """Held from acquire() to release(); renew() keeps it fresh while the batch runs."""

    def __init__(self, out: Location) -> None:
        self.location = out.join(LEASE_NAME)
        self.holder = {"host": socket.gethostname(), "pid": os.getpid()}
        self._renewed = 0.0
        self._lock = threading.Lock()
        self._lost: ClusterError | None = None  # set by the renewal thread; raised by the next renew()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def acquire(self) -> "Lease":
        current = self._read()
        if current is not None and not self._may_take(current):
            age = time.time() - float(current.get("renewed", 0))
            raise ClusterError(
                f"{self.location.parent}: another glsnet batch ({current.get('host')}, pid {current.get('pid')}) is writing "
                f"here (lease renewed {age:.0f} s ago); wait for it to end, or remove {self.location} if that driver is gone"
            )
        self._write()
        self._stop.clear()
        self._keeper = threading.Thread(target=self._keep, name="glsnet-batch-lease", daemon=True)
        self._keeper.start()
        return self

    def renew(self, force: bool = False) -> None:
        """Renew when due (always with ``force``); ClusterError if another driver holds the lease now."""
        with self._lock:
            if self._lost is not None:
                raise self._lost
            if not force and time.monotonic() - self._renewed < RENEW_EVERY_S:
                return
            current = self._read()
            if current and {k: current.get(k) for k in self.holder} != self.holder:
                age = time.time() - float(current.get("renewed", 0) or 0)
                self._lost = ClusterError(
                    f"{self.location}: another glsnet batch ({current.get('host')}, pid {current.get('pid')}) took over this "
                    f"output's lease (renewed {age:.0f} s ago) after this driver's lapsed; this driver stops so that only one writes here"
                )
                raise self._lost
            self._write()

    def _keep(self) -> None:
        """The renewal thread: renews when due until release() or until the lease is lost."""
        while not self._stop.wait(RENEW_EVERY_S / 5):
            try:
                self.renew()
            except ClusterError:
                return  # kept in self._lost for the driver's next renew()
            except Exception:  # noqa: BLE001, S112  a store that failed for now (its client's own errors too): the next tick tries again
                continue

    def _write(self) -> None:
        write_bytes(self.location, json.dumps({**self.holder, "renewed": time.time()}).encode())
        self._renewed = time.monotonic()

    def release(self) -> None:
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join()
            self._keeper = None
        current = self._read()
        if current is not None and {k: current.get(k) for k in self.holder} == self.holder:
            remove(self.location)

    def _read(self) -> dict | None:
        try:
            return json.loads(read_bytes(self.location))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: treat as stale

    def _may_take(self, current: dict) -> bool:
        if time.time() - float(current.get("renewed", 0) or 0) > LEASE_TTL_S:
            return True
        if current.get("host") == self.holder["host"]:
            pid = int(current.get("pid", 0) or 0)
            return pid == self.holder["pid"] or not _alive(pid)
        return False

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
