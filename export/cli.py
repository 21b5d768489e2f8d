"""``glsnet-export``: thin typer commands over the export, verification, calibration and build functions."""

from __future__ import annotations

import typer

from runtime.cli_errors import run_app

app = typer.Typer(
    help="Export a GLSNet checkpoint to a bundle of three ONNX graphs, verify it, calibrate it and build engines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
