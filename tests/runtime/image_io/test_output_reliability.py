"""All outputs of an image or none, one-line errors on a full disk, no leftovers on SIGTERM (issue 13, items 2 and 3)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime import atomic_file
from runtime.atomic_file import create_temporary, remove_stale_temporaries, replace_all
from runtime.errors import InputError
from runtime.image_io.writers import OutputOptions
from runtime.segmenter import Segmenter
from tests.runtime.test_segmenter import scene

ROOT = Path(__file__).resolve().parents[3]
ALL = OutputOptions(color=True, overlay=True, stats=True)


@pytest.fixture(scope="module")
def segmenter(small_bundle) -> Segmenter:
    return Segmenter(small_bundle)


@pytest.fixture()
def image(tmp_path) -> Path:
    path = tmp_path / "in" / "tile.png"
    path.parent.mkdir()
    Image.fromarray(scene(96, 112, 5)).save(path)
    return path


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_a_folder_in_the_way_of_one_output_leaves_none(segmenter, image, tmp_path):
    out = tmp_path / "out"
    (out / "tile_color.png").mkdir(parents=True)
    with pytest.raises(InputError, match="tile_color.png: cannot write an output here .*folder is in the way.*no output of this image"):
        segmenter.segment_file(image, out, ALL)
    assert listing(out) == {"tile_color.png"}  # before: tile_stats.json and tile_overlay.png were already in place


def test_a_failed_rename_rolls_back_the_outputs_already_moved(segmenter, image, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tile_mask.png").write_bytes(b"the mask of an earlier run")
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(Path(dst).name)
        if Path(dst).name == "tile_overlay.png":
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic_file.os, "replace", replace)
    with pytest.raises(InputError, match="tile_overlay.png: cannot write an output here \\(Input/output error\\)"):
        segmenter.segment_file(image, out, ALL)
    assert calls[:3] == ["tile_mask.png", "tile_color.png", "tile_overlay.png"]
    assert listing(out) == {"tile_mask.png"}
    assert (out / "tile_mask.png").read_bytes() == b"the mask of an earlier run"  # restored, not lost


def test_replace_all_moves_everything_when_nothing_fails(tmp_path):
    pairs = []
    for name in ("a.txt", "b.txt"):
        tmp = create_temporary(tmp_path / name)
        tmp.write_text(name)
        pairs.append((tmp, tmp_path / name))
    (tmp_path / "b.txt").write_text("old")
    replace_all(pairs)
    assert listing(tmp_path) == {"a.txt", "b.txt"}
    assert (tmp_path / "b.txt").read_text() == "b.txt"


def test_a_full_disk_while_writing_png_is_a_one_line_error(segmenter, image, tmp_path, monkeypatch):
    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="tile_mask.png: writing the PNG failed \\(No space left on device\\)"):
        segmenter.segment_file(image, out, ALL)
    assert listing(out) == set()


def test_a_full_disk_while_writing_tiff_names_the_output_not_the_temporary(segmenter, image, tmp_path, monkeypatch):
    import tifffile

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile.TiffWriter, "write", full)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"out/tile_mask.tif: writing the TIFF failed \(No space left on device\)$"):
        segmenter.segment_file(image, out, OutputOptions(format="tif"))
    assert listing(out) == set()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_names_carry_host_and_pid(tmp_path):
    tmp = create_temporary(tmp_path / "x_mask.png")
    assert tmp.name.startswith(f".x_mask.png.{atomic_file._HOST}.{os.getpid()}.")
    assert tmp.name.endswith(".glsnet-tmp.png")


def test_a_later_run_removes_temporaries_of_dead_processes_only(segmenter, image, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    host = atomic_file._HOST
    dead = out / f".tile_mask.png.{host}.{_dead_pid()}.k3x9_a1b.glsnet-tmp.png"
    alive = out / f".tile_mask.png.{host}.{os.getpid()}.zzzz1234.glsnet-tmp.png"
    elsewhere = out / f".tile_mask.png.another-host.{_dead_pid()}.q1w2e3r4.glsnet-tmp.png"
    unrelated = out / ".tile_mask.png.notes"
    for path in (dead, alive, elsewhere, unrelated):
        path.write_bytes(b"partial")
    segmenter.segment_file(image, out, OutputOptions(color=False))
    assert listing(out) == {alive.name, elsewhere.name, unrelated.name, "tile_mask.png"}
    assert remove_stale_temporaries(out) == []


def _run_cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "runtime.cli", *args], env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_mid_run_cleans_up_and_exits_128_plus_signal(small_bundle, tmp_path, signum, code):
    big = tmp_path / "big.png"
    Image.fromarray(scene(1400, 1400, 9)).save(big)
    out = tmp_path / "out"
    out.mkdir()
    process = _run_cli(["run", str(big), "-b", str(small_bundle), "-o", str(out), "--format", "tif", "--overlay", "--stats"])
    deadline = time.monotonic() + 240
    while not any(".glsnet-tmp" in name for name in listing(out)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no temporary output appeared"
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert f"stopped by {signal.Signals(signum).name}" in stderr
    assert "Traceback" not in stderr
    assert listing(out) == set()
