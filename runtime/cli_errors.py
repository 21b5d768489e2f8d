"""Run a typer app so that the toolkit's own errors print as one clear line, not a traceback.

SIGTERM (what ``timeout``, systemd and Kubernetes send) and SIGINT (Ctrl-C) are turned into an
exception in the main thread, so every cleanup path runs (temporary outputs removed, staging
folders deleted, worker threads stopped) before the process exits with 128 + the signal number.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

import typer

from runtime.errors import AccuracyGateError, GlsnetError, InputError, MissingDependencyError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """A stop signal arrived; a BaseException so that ``except Exception`` handlers do not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(exc: GlsnetError) -> int:
    """2 for bad input or a missing dependency, 1 for a failed check or a bad bundle/checkpoint."""
    if isinstance(exc, AccuracyGateError):
        return 1
    return 2 if isinstance(exc, (InputError, MissingDependencyError)) else 1


def _stop(signum: int, frame: object) -> None:
    for other in STOP_SIGNALS:  # a second signal must not interrupt the cleanup the first one started
        signal.signal(other, signal.SIG_IGN)
    raise Stopped(signum)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """While inside, SIGTERM and SIGINT raise Stopped in the main thread (no-op in other threads)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_app(app: typer.Typer) -> None:
    try:
        with stop_signals_raise():
            app()
    except GlsnetError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exit_code(exc))
    except Stopped as stop:
        name = signal.Signals(stop.signum).name
        typer.secho(f"stopped by {name}: unfinished outputs were removed", fg=typer.colors.YELLOW, err=True)
        sys.exit(stop.exit_code)
