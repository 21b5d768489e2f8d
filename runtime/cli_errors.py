"""Run a typer app so that the toolkit's own errors print as one clear line, not a traceback."""

from __future__ import annotations

import sys

import typer

from runtime.errors import AccuracyGateError, GlsnetError, InputError, MissingDependencyError


def exit_code(exc: GlsnetError) -> int:
    """2 for bad input or a missing dependency, 1 for a failed check or a bad bundle/checkpoint."""
    if isinstance(exc, AccuracyGateError):
        return 1
    return 2 if isinstance(exc, (InputError, MissingDependencyError)) else 1


def run_app(app: typer.Typer) -> None:
    try:
        app()
    except GlsnetError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exit_code(exc))
