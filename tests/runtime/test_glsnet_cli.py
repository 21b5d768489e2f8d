"""The ``glsnet`` command line: run, info, and clear errors with the right exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from runtime.cli import app, parse_bands
from runtime.errors import InputError


def glsnet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True, text=True, env=dict(os.environ, COLUMNS="160"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 140, 3), dtype=np.uint8)).save(folder / "a.png")
    tifffile.imwrite(
        folder / "geo.tif",
        rng.integers(0, 256, (150, 130, 4), dtype=np.uint8),
        photometric="rgb",
        extrasamples=["unspecified"],
        tile=(64, 64),
        extratags=[(33550, "d", 3, (0.3, 0.3, 0.0), True), (33922, "d", 6, (0, 0, 0, 10.0, 20.0, 0), True)],
    )
    return folder


def test_run_writes_every_requested_output(small_bundle, images, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["run", str(images / "a.png"), str(images / "geo.tif"), "--bundle", str(small_bundle), "-o", str(out),
         "--format", "tif", "--overlay", "--stats", "--bands", "0,1,2", "--batch-size", "3", "--threads", "1", "--max-memory", "2GB"],
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{s}_{k}" for s in ("a", "geo") for k in ("color.tif", "mask.tif", "overlay.tif", "stats.json"))
    with tifffile.TiffFile(out / "geo_mask.tif") as tif:
        page = tif.pages.first
        assert page.shape == (150, 130)
        assert page.tags[33550].value == (0.3, 0.3, 0.0)  # georeferencing survives the run
        assert tuple(page.tags[33922].value) == (0, 0, 0, 10.0, 20.0, 0)
    stats = json.loads((out / "a_stats.json").read_text())
    assert stats["pixels"] == 90 * 140 == sum(c["pixels"] for c in stats["classes"])


def test_no_color_writes_only_the_mask(small_bundle, images, tmp_path):
    result = glsnet("run", str(images / "a.png"), "--bundle", str(small_bundle), "-o", str(tmp_path), "--no-color")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_mask.png"]
    assert "patches" in result.stderr  # the progress bar counts patches


def test_info_summarises_the_bundle(small_bundle):
    result = glsnet("info", str(small_bundle))
    assert result.returncode == 0, result.stderr
    for text in ("schema 1", "patch 128 px", "agriculture", "global.onnx", "patches[", "3,128,128]", "engines: none"):
        assert text in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--bands", "0,1"], "selects 2 band"),
        (["--bands", "a,b"], "comma-separated"),
        (["--precision", "int8"], "no int8 graphs"),
        (["--device", "cuda"], "onnxruntime-gpu"),
        (["--format", "bmp"], "not one of"),
        (["--max-memory", "lots"], "not understood"),
    ],
)
def test_bad_options_are_one_clear_line(small_bundle, images, tmp_path, args, message):
    result = glsnet("run", str(images / "a.png"), "--bundle", str(small_bundle), "-o", str(tmp_path / "o"), *args)
    assert result.returncode in (1, 2)
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_bad_inputs_exit_2_and_leave_nothing(small_bundle, tmp_path):
    corrupt = tmp_path / "bad.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "o"
    result = glsnet("run", str(corrupt), "--bundle", str(small_bundle), "-o", str(out))
    assert result.returncode == 2 and "bad.jpg" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() or list(out.iterdir()) == []
    result = glsnet("run", str(tmp_path / "missing.png"), "--bundle", str(small_bundle), "-o", str(out))
    assert result.returncode == 2 and "no such file" in result.stderr


def test_unwritable_output_is_a_clear_error(small_bundle, images, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = glsnet("run", str(images / "a.png"), "--bundle", str(small_bundle), "-o", str(blocker))
    assert result.returncode == 2 and "not a folder" in result.stderr
    result = glsnet("run", str(images / "a.png"), "--bundle", str(small_bundle), "-o", str(blocker / "sub"))
    assert result.returncode == 2 and "cannot write" in result.stderr


def test_bad_bundle_exits_1(tmp_path, images):
    result = glsnet("info", str(tmp_path))
    assert result.returncode == 1 and "not a GLSNet bundle" in result.stderr


def test_parse_bands():
    assert parse_bands("0,1,2") == (0, 1, 2) and parse_bands(None) is None
    with pytest.raises(InputError):
        parse_bands("-1,0,1")
