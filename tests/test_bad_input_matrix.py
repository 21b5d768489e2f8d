"""The bad-input matrix (issue 13): images, bundles, options, outputs and signals, one table, one test.

For every condition: the exit code, exactly one line that names the problem (``error: ...``, or
``stopped by ...`` for a signal) and no traceback, and an output folder with no new file in it,
hidden temporaries included. The CLI runs in-process (``runtime.cli.main``) so the table stays
fast; the signal rows start it as a subprocess and stop it mid-run.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.runtime.test_segmenter import scene

ROOT = Path(__file__).resolve().parents[1]


class Env:
    """Paths one condition needs: the good bundle, images, an empty output folder, and variants made on demand."""

    def __init__(self, tmp: Path, bundle: Path, images: Path) -> None:
        self.tmp, self.bundle, self.images = tmp, bundle, images
        self.out = tmp / "out"
        self.out.mkdir()

    def image(self, name: str) -> str:
        return str(self.images / name)

    def bundle_with(self, change: Callable[[dict], None] | None = None, raw: str | None = None, corrupt: str | None = None) -> str:
        """A bundle whose graphs are links to the good ones and whose manifest went through ``change``."""
        directory = self.tmp / "bundle"
        directory.mkdir()
        for graph in self.bundle.glob("*.onnx"):
            if graph.name == corrupt:
                data = bytearray(graph.read_bytes())
                data[100] ^= 0xFF
                (directory / graph.name).write_bytes(bytes(data))
            else:
                (directory / graph.name).symlink_to(graph)
        text = (self.bundle / "manifest.json").read_text()
        if change is not None:
            data = json.loads(text)
            change(data)
            text = json.dumps(data)
        (directory / "manifest.json").write_text(raw if raw is not None else text)
        return str(directory)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("matrix-images")
    rgb = scene(64, 72, 3)
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rgb[:, :, 0]).save(folder / "grey.png")
    Image.fromarray(rgb.astype(np.uint16)[:, :, 0] * 257).save(folder / "grey16.png")
    tifffile.imwrite(folder / "rgb16.tif", rgb.astype(np.uint16) * 257, photometric="rgb")
    tifffile.imwrite(folder / "reflectance.tif", rgb.astype(np.float32) / 255, photometric="rgb")
    tifffile.imwrite(folder / "two.tif", rgb[:, :, :2], planarconfig="contig", photometric="minisblack")
    tifffile.imwrite(folder / "four.tif", np.concatenate([rgb, rgb[:, :, :1]], axis=2), photometric="rgb", extrasamples=["unspecified"])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image\n")
    (folder / "garbage.tif").write_bytes(b"II*\x00" + b"\x07" * 64)
    good = (folder / "rgb.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "a-folder.png").mkdir()
    os.symlink("loop-b.png", folder / "loop-a.png")
    os.symlink("loop-a.png", folder / "loop-b.png")
    Image.fromarray(scene(1400, 1400, 9)).save(folder / "big.png")
    return folder


@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[Env], list[str]]
    code: int
    message: str  # a regular expression the one error line must match
    setup: Callable[[Env, pytest.MonkeyPatch], None] | None = None
    stop: int | None = None  # a signal sent mid-run (subprocess)
    watch: Callable[[Env], Path] = field(default=lambda env: env.out)  # the folder that must gain no file


def run_args(image: str = "rgb.png", *extra: str, bundle: Callable[[Env], str] | None = None) -> Callable[[Env], list[str]]:
    def build(env: Env) -> list[str]:
        return ["run", env.image(image), "--bundle", bundle(env) if bundle else str(env.bundle), "-o", str(env.out), *extra]

    return build


def manifest_change(change: Callable[[dict], None]) -> Callable[[Env], str]:
    return lambda env: env.bundle_with(change)


def _set(path: str, value) -> Callable[[dict], None]:
    """A change that sets the manifest key at dotted ``path`` (list indices as numbers)."""

    def change(data: dict) -> None:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value

    return change


def _more_classes(data: dict) -> None:
    data["classes"].append("extra")
    data["palette"].append([9, 9, 9])
    data["graphs"]["fp32"]["fusion"]["outputs"][0]["shape"][1] += 1


def _larger_patch(data: dict) -> None:
    data["patch"]["size"] += 32
    data["graphs"]["fp32"]["local"]["inputs"][0]["shape"][2:] = [data["patch"]["size"]] * 2


def _full_disk(target: str):
    def setup(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        if target == "png":
            monkeypatch.setattr(Image.Image, "save", full)
        else:
            monkeypatch.setattr(tifffile.TiffWriter, "write", full)

    return setup


def _failing_rename(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime import atomic_file

    real = os.replace

    def replace(src, dst):
        if str(dst).endswith("_stats.json"):
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real(src, dst)

    monkeypatch.setattr(atomic_file.os, "replace", replace)


def _folder_in_the_way(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    (env.out / "rgb_overlay.png").mkdir()


def _output_is_a_file(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    (env.tmp / "taken").write_text("x")


NAN = float("nan")
CASES = [
    # ---- images
    Case("missing image", run_args("missing.png"), 2, r"missing.png: no such file"),
    Case("symlink loop", run_args("loop-a.png"), 2, r"loop-a.png: a symbolic link loop"),
    Case("folder as image", run_args("a-folder.png"), 2, r"a-folder.png: not a file"),
    Case("empty file", run_args("empty.png"), 2, r"empty.png: the file is empty"),
    Case("text named .png", run_args("text.png"), 2, r"text.png: not a readable PNG/JPEG"),
    Case("truncated png", run_args("truncated.png"), 2, r"truncated.png: .*(corrupt|truncated)"),
    Case("garbage tiff", run_args("garbage.tif"), 2, r"garbage.tif: not a readable TIFF"),
    Case("16-bit tiff", run_args("rgb16.tif"), 2, r"rgb16.tif: pixel type uint16 but .*trained on uint8 .*--input-range"),
    Case("float32 tiff", run_args("reflectance.tif"), 2, r"reflectance.tif: pixel type float32 .*--input-range"),
    Case("16-bit png", run_args("grey16.png", "--input-range", "0,65535"), 2, r"grey16.png: the image has 1 band\(s\) but the model reads 3 .*at least 3 bands$"),
    Case("one-band png", run_args("grey.png"), 2, r"grey.png: the image has 1 band\(s\) but the model reads 3 \(\[0, 1, 2\]\); it needs an image with at least 3 bands$"),
    Case("two-band tiff", run_args("two.tif"), 2, r"two.tif: the image has 2 band\(s\)"),
    Case("missing band", run_args("four.tif", "--bands", "0,1,7"), 2, r"four.tif: .*reads bands \[0, 1, 7\]; choose 3 bands that exist, e.g. --bands 0,1,2"),
    Case("over --max-pixels", run_args("rgb.png", "--max-pixels", "100"), 2, r"rgb.png: 72 x 64 = 4,608 pixels is above the limit of 100"),
    # ---- options
    Case("--max-pixels 0", run_args("rgb.png", "--max-pixels", "0"), 2, r"--max-pixels 0: the pixel limit must be at least 1"),
    Case("--max-pixels -5", run_args("rgb.png", "--max-pixels", "-5"), 2, r"--max-pixels -5: the pixel limit must be at least 1"),
    Case("--input-range words", run_args("rgb16.tif", "--input-range", "low,high"), 2, r"--input-range 'low,high': expected MIN,MAX"),
    Case("--input-range reversed", run_args("rgb16.tif", "--input-range", "4095,0"), 2, r"--input-range: range 4095,0 needs finite MIN < MAX"),
    Case("--input-range percentiles", run_args("rgb16.tif", "--input-range", "p98,p2"), 2, r"percentiles p98,p2 need 0 <= low < high <= 100"),
    Case("--input-range band count", run_args("rgb16.tif", "--input-range", "0,1/0,1"), 2, r"rgb16.tif: --input-range 0,1/0,1 gives 2 ranges but the image has 3 band"),
    Case("--bands letters", run_args("rgb.png", "--bands", "a,b"), 2, r"--bands 'a,b': expected comma-separated band indices"),
    Case("--bands negative", run_args("rgb.png", "--bands", "-1,0,1"), 2, r"--bands '-1,0,1': band indices start at 0"),
    Case("--bands too few", run_args("rgb.png", "--bands", "0,1"), 2, r"--bands selects 2 band\(s\)"),
    Case("--precision int8 absent", run_args("rgb.png", "--precision", "int8"), 1, r"no int8 graphs"),
    Case("--precision unknown", run_args("rgb.png", "--precision", "fp64"), 2, r"precision 'fp64' is not one of"),
    Case("--format unknown", run_args("rgb.png", "--format", "jpg"), 2, r"output format 'jpg' is not one of png, tif"),
    Case("--batch-size 0", run_args("rgb.png", "--batch-size", "0"), 2, r"batch size must be >= 1"),
    Case("--max-memory words", run_args("rgb.png", "--max-memory", "lots"), 2, r"not understood"),
    Case("--device unknown", run_args("rgb.png", "--device", "tpu"), 2, r"device 'tpu' is not one of"),
    Case("--threads 0", run_args("rgb.png", "--threads", "0"), 2, r"threads must be >= 1"),
    # ---- bundles
    Case("bundle missing", run_args(bundle=lambda env: str(env.tmp / "nowhere")), 1, r"nowhere: not a directory"),
    Case("bundle without manifest", run_args(bundle=lambda env: str(env.images)), 1, r"no manifest.json; this is not a GLSNet bundle"),
    Case("manifest not json", run_args(bundle=lambda env: env.bundle_with(raw="{not json")), 1, r"manifest.json: not valid JSON"),
    Case("schema version", run_args(bundle=manifest_change(_set("schema_version", 2))), 1, r"schema_version 2 is not supported"),
    Case("classes a string", run_args(bundle=manifest_change(_set("classes", "road"))), 1, r"classes is str"),
    Case("scale zero", run_args(bundle=manifest_change(_set("normalization.scale", 0))), 1, r"normalization: scale is 0; expected a finite number > 0"),
    Case("std NaN", run_args(bundle=manifest_change(_set("normalization.std.1", NAN))), 1, r"normalization: a std is nan"),
    Case("band index negative", run_args(bundle=manifest_change(_set("normalization.bands.0", -1))), 1, r"a band index is -1"),
    Case("overlap boolean", run_args(bundle=manifest_change(_set("patch.min_overlap", True))), 1, r"min_overlap is True; expected an integer"),
    Case("pixel type unknown", run_args(bundle=manifest_change(_set("input_pixels", {"dtype": "uint12"}))), 1, r"input_pixels: dtype 'uint12' is not a pixel type"),
    Case("graph missing", run_args(bundle=lambda env: _without(env, "fusion.onnx")), 1, r"fusion.onnx: named in the manifest but missing"),
    Case("graph checksum", run_args(bundle=lambda env: env.bundle_with(corrupt="local.onnx")), 1, r"local.onnx: sha256 .* does not match the manifest"),
    Case("classes vs logits", run_args(bundle=manifest_change(_more_classes)), 1, r"fusion.onnx: output 'logits' is declared with \d+ on axis 1"),
    Case("patch vs local graph", run_args(bundle=manifest_change(_larger_patch)), 1, r"local.onnx: input 'patches' is declared with 160 on axis 2"),
    # the local graph: beside stage graphs the single global graph is checked when something loads it, and a run does not
    Case("dtype vs graph", run_args(bundle=manifest_change(_set("graphs.fp32.local.inputs.0.dtype", "float16"))), 1, r"local.onnx: input 'patches' is declared float16 in the manifest but the graph's is float32"),
    Case("info: graph checksum", lambda env: ["info", env.bundle_with(corrupt="global.onnx")], 1, r"1 file\(s\) fail their checksum: .*global.onnx has sha256"),
    # ---- outputs
    Case("output is a file", lambda env: ["run", env.image("rgb.png"), "-b", str(env.bundle), "-o", str(env.tmp / "taken")], 2, r"taken: exists and is not a folder", setup=_output_is_a_file, watch=lambda env: env.tmp / "taken"),
    Case("folder in the way", run_args("rgb.png", "--overlay", "--stats"), 2, r"rgb_overlay.png: cannot write an output here \(a folder is in the way", setup=_folder_in_the_way),
    Case("disk full png", run_args("rgb.png", "--overlay"), 2, r"rgb_mask.png: writing the PNG failed \(No space left on device\)$", setup=_full_disk("png")),
    Case("disk full tiff", run_args("rgb.png", "--format", "tif"), 2, r"rgb_mask.tif: writing the TIFF failed \(No space left on device\)$", setup=_full_disk("tif")),
    Case("last rename fails", run_args("rgb.png", "--overlay", "--stats"), 2, r"rgb_stats.json: cannot write an output here \(Input/output error\); no output of this image was written", setup=_failing_rename),
    # ---- signals
    Case("SIGTERM mid-run", run_args("big.png", "--format", "tif", "--overlay"), 143, r"^stopped by SIGTERM", stop=signal.SIGTERM),
    Case("SIGINT mid-run", run_args("big.png", "--stats"), 130, r"^stopped by SIGINT", stop=signal.SIGINT),
]


def _without(env: Env, name: str) -> str:
    bundle = Path(env.bundle_with())
    (bundle / name).unlink()
    return str(bundle)


def listing(folder: Path) -> set[str]:
    if folder.is_dir():
        return {p.name for p in folder.iterdir()}
    return {folder.name} if folder.exists() else set()


def run_in_process(args: list[str], capsys, monkeypatch) -> tuple[int | str, str]:
    """Exit code and stderr of ``glsnet ARGS`` run in this process; ('traceback', text) for an escaped exception."""
    from runtime import cli

    monkeypatch.setattr(sys, "argv", ["glsnet", *args])
    monkeypatch.setenv("COLUMNS", "200")
    capsys.readouterr()
    try:
        cli.main()
        code: int | str = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # anything but a clean exit is the traceback a user would have seen
        return "traceback", traceback.format_exc()
    return code, capsys.readouterr().err


def run_and_stop(args: list[str], watch: Path, signum: int) -> tuple[int, str]:
    """Start ``glsnet ARGS``, send ``signum`` once its first temporary output exists, return (exit code, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    process = subprocess.Popen([sys.executable, "-m", "runtime.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not any(".glsnet-tmp" in name for name in listing(watch)):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            _, stderr = process.communicate()
            pytest.fail(f"the run ended or stalled before writing started: {stderr[-2000:]}")
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.stop else []) for c in CASES])
def test_bad_input(case: Case, small_bundle, images, tmp_path, capsys, monkeypatch):
    env = Env(tmp_path, small_bundle, images)
    if case.setup is not None:
        case.setup(env, monkeypatch)
    args = case.args(env)
    watch = case.watch(env)
    before = listing(watch)
    if case.stop is not None:
        code, stderr = run_and_stop(args, watch, case.stop)
    else:
        code, stderr = run_in_process(args, capsys, monkeypatch)
    assert code != "traceback", stderr
    assert "Traceback" not in stderr, stderr
    assert code == case.code, stderr
    lines = [line for line in stderr.splitlines() if line.startswith(("error:", "stopped by"))]
    assert len(lines) == 1, stderr
    import re

    assert re.search(case.message, lines[0].removeprefix("error: ")), lines[0]
    assert listing(watch) == before, f"new files: {listing(watch) - before}"


def test_the_matrix_covers_at_least_40_conditions():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
