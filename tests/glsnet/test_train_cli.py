"""``glsnet-train``: train on the real folder and evaluate the checkpoint; synth; clear errors and exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from glsnet.cli import main


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run ``glsnet-train ARGS`` in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["glsnet-train", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.integration
@pytest.mark.slow
def test_train_on_the_real_folder_then_evaluate_the_checkpoint(deepglobe_dir: Path, tmp_path: Path, monkeypatch, capsys):
    checkpoint = tmp_path / "small.safetensors"
    code, out, err = run_cli(
        monkeypatch, capsys, "train", "--data", deepglobe_dir, "--preset", "small", "--steps", "3", "--crop-size", "256",
        "--batch-size", "4", "--val-crop", "256", "--out", checkpoint, "--no-progress",
    )
    assert code == 0, err
    assert "trained steps 0..3" in out and "validation at step 3" in out
    assert checkpoint.is_file() and checkpoint.with_name("small.optim.safetensors").is_file()

    scores_json = tmp_path / "scores.json"
    code, out, err = run_cli(
        monkeypatch, capsys, "evaluate", checkpoint, deepglobe_dir, "--downscale", "8", "--limit", "2", "--json", scores_json,
    )
    assert code == 0, err
    assert "mIoU" in out and "overall accuracy" in out and "(step 3)" in out
    scores = json.loads(scores_json.read_text())
    assert len(scores["scenes"]) == 2 and scores["checkpoint_step"] == 3
    assert scores["pixels"] == 2 * 306 * 306
    assert 0.0 <= scores["scores"]["overall_accuracy"] <= 1.0
    assert scores["scores"]["classes_in_mean"] == [c for c in scores["scores"]["classes_in_mean"] if c != 0]


def test_synth_writes_a_deterministic_deepglobe_folder_and_a_single_scene(tmp_path: Path, monkeypatch, capsys):
    for folder in ("a", "b"):
        code, out, err = run_cli(monkeypatch, capsys, "synth", "-o", tmp_path / folder, "--count", "2", "--size", "64x96", "--seed", "3")
        assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["synthetic-s3-000_mask.png", "synthetic-s3-000_sat.png", "synthetic-s3-001_mask.png", "synthetic-s3-001_sat.png"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    code, out, err = run_cli(monkeypatch, capsys, "synth", "-o", tmp_path / "one.png", "--size", "64x96", "--seed", "3")
    assert code == 0, err
    assert (tmp_path / "one_mask.png").is_file()
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "a" / "synthetic-s3-000_sat.png").read_bytes()


def test_train_on_a_synthetic_folder_resume_and_evaluate(tmp_path: Path, monkeypatch, capsys):
    data = tmp_path / "data"
    assert run_cli(monkeypatch, capsys, "synth", "-o", data, "--count", "2", "--size", "160x160")[0] == 0
    checkpoint = tmp_path / "m.safetensors"
    common = ("--data", data, "--preset", "small", "--variant", "shallow-shallow", "--crop-size", "128", "--batch-size", "1",
              "--val-fraction", "0", "--out", checkpoint, "--no-progress")
    code, out, err = run_cli(monkeypatch, capsys, "train", *common, "--steps", "1")
    assert code == 0, err
    code, out, err = run_cli(monkeypatch, capsys, "train", *common[:-3], "--out", checkpoint, "--no-progress",
                             "--steps", "2", "--resume", checkpoint)
    assert code == 0, err
    assert "trained steps 1..2" in out
    code, out, err = run_cli(monkeypatch, capsys, "evaluate", checkpoint, data, "--crop", "100")
    assert code == 0, err
    assert "(step 2)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "--data", "{tmp}/missing", "--steps", "1"), r"missing: DeepGlobe folder not found"),
        (("train", "--steps", "1"), r"exactly one data source"),
        (("train", "--synthetic", "--data", "{tmp}", "--steps", "1"), r"exactly one data source"),
        (("evaluate", "{tmp}/nothing.safetensors", "{tmp}"), r"nothing\.safetensors: checkpoint file not found"),
        (("synth", "-o", "{tmp}/x", "--size", "big"), r"--size 'big'"),
    ],
)
def test_bad_input_prints_one_line_naming_the_file_and_exits_nonzero(tmp_path: Path, monkeypatch, capsys, args, message):
    import re

    code, out, err = run_cli(monkeypatch, capsys, *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert code in (1, 2)
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err


def test_the_console_script_exits_2_on_bad_input(tmp_path: Path):
    script = shutil.which("glsnet-train") or str(Path(sys.executable).with_name("glsnet-train"))
    done = subprocess.run([script, "synth", "-o", str(tmp_path / "x"), "--size", "0x5"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "error: --size '0x5'" in done.stderr


@pytest.mark.parametrize("command", ["train", "evaluate", "synth"])
def test_every_command_has_help(monkeypatch, capsys, command):
    code, out, _ = run_cli(monkeypatch, capsys, command, "--help")
    assert code == 0 and "Usage" in out


def test_synth_sizes_parse():
    from glsnet.cli import parse_size

    assert parse_size("2448x9792") == (2448, 9792)
    assert parse_size("512") == (512, 512)
    assert np.all(np.array(parse_size("1X2")) == [1, 2])
