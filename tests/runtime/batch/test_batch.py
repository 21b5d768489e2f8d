"""glsnet batch on a local Ray instance (2 CPUs, started once for the session on this machine, stopped after).

Checked: masks byte-identical to `glsnet run`'s (real DeepGlobe crops and synthetic scenes), a corrupt
scene recorded while the others complete, a worker killed mid-scene (SIGKILL) leaving no partial file
and the batch completing, a re-run doing no work, and a clear one-line error for a cluster that is not there.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from runtime.atomic_file import TEMP_MARK
from runtime.batch.dispatcher import BatchOptions, run_batch
from runtime.batch.report import REPORT_NAME
from runtime.bundle.manifest import MANIFEST_NAME, sha256_file
from runtime.cli import app

ray = pytest.importorskip("ray", reason="glsnet batch needs Ray: pip install 'glsnet-deploy[cluster]'")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SCENES = 8


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance for the whole session: 2 CPUs, loopback, a small object store, no dashboard."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1000**2, _node_ip_address="127.0.0.1", log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def synthetic_scene(height: int, width: int, seed: int) -> np.ndarray:
    """Seeded smooth regions plus texture, so the small model does not predict one class everywhere."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 48), max(2, width // 48), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.int16)
    return np.clip(smooth + rng.integers(-20, 21, (height, width, 1)), 0, 255).astype(np.uint8)


def write_synthetic(folder: Path, count: int = SCENES, size: tuple[int, int] = (260, 300)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"scene{i}.png"
        Image.fromarray(synthetic_scene(*size, seed=i)).save(path)
        paths.append(path)
    return paths


def write_deepglobe_crops(folder: Path, data: Path, count: int = SCENES) -> list[Path]:
    """Crops of different sizes and places from the real images (written here, never into the repo)."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(data.glob("*_sat.jpg"))
    paths = []
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as image:
            left, top = 150 * i, 90 * i
            crop = image.crop((left, top, left + 280 + 8 * i, top + 250 + 6 * i))
            path = folder / f"{sources[i % len(sources)].stem}_crop{i}.png"
            crop.save(path)
        paths.append(path)
    return paths


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def report_lines(out: Path) -> list[dict]:
    """The scene lines of the last run's section (each run appends its own, opened by a "run" line)."""
    lines = [json.loads(line) for line in (out / REPORT_NAME).read_text().splitlines()]
    last = max(i for i, line in enumerate(lines) if "run" in line)
    return lines[last + 1 :]


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".") and TEMP_MARK in p.name]


@pytest.fixture(params=["synthetic", pytest.param("deepglobe", marks=pytest.mark.integration)])
def scenes(request, tmp_path) -> list[Path]:
    if request.param == "synthetic":
        return write_synthetic(tmp_path / "scenes")
    return write_deepglobe_crops(tmp_path / "scenes", request.getfixturevalue("deepglobe_dir"))


def test_batch_masks_match_glsnet_run_and_a_rerun_does_no_work(local_ray, small_bundle, scenes, tmp_path):
    reference, out = tmp_path / "run", tmp_path / "batch"
    ran = invoke("run", *scenes, "--bundle", small_bundle, "-o", reference)
    assert ran.exit_code == 0, ran.output
    batched = invoke("batch", scenes[0].parent, "--bundle", small_bundle, "-o", out, "--workers", 2)
    assert batched.exit_code == 0, batched.output

    for scene in scenes:
        for kind in ("mask", "color"):
            name = f"{scene.stem}_{kind}.png"
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    lines = report_lines(out)
    assert sorted(line["input"] for line in lines) == sorted(str(s.resolve()) for s in scenes)
    assert {line["status"] for line in lines} == {"ok"}
    assert {line["worker"] for line in lines} <= {"worker-1", "worker-2"}
    assert all(line["seconds"] > 0 and line["peak_rss_bytes"] > 10_000_000 and line["error"] is None for line in lines)
    stats = json.loads((out / f"{scenes[0].stem}_stats.json").read_text())
    assert stats["provenance"]["bundle_manifest_sha256"] == sha256_file(small_bundle / MANIFEST_NAME)
    assert stats["provenance"]["options"]["segmenter"]["precision"] == "fp32"
    assert not temporaries(out)

    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*_mask.png")}
    again = invoke("batch", scenes[0].parent, "--bundle", small_bundle, "-o", out, "--workers", 2)
    assert again.exit_code == 0, again.output
    assert "nothing to do" in again.output and f"all {SCENES} scenes are already done" in again.output
    assert {line["status"] for line in report_lines(out)} == {"skipped"}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_mask.png")} == written

    changed = invoke("batch", scenes[0].parent, "--bundle", small_bundle, "-o", out, "--workers", 2, "--no-color", "--max-memory", "1GB")
    assert changed.exit_code == 0, changed.output  # other options: every scene is segmented again
    assert {line["status"] for line in report_lines(out)} == {"ok"}


def test_a_corrupt_scene_is_reported_and_the_others_complete(local_ray, small_bundle, tmp_path):
    scenes = write_synthetic(tmp_path / "scenes", count=SCENES - 1)
    good = scenes[0].read_bytes()
    broken = tmp_path / "scenes" / "broken.png"
    broken.write_bytes(good[: len(good) // 2])  # a truncated PNG: its header reads, its pixels do not
    out = tmp_path / "out"
    listed = tmp_path / "scenes.txt"
    listed.write_text("# the archive\n" + "\n".join(f"scenes/{p.name}" for p in [*scenes, broken]) + "\n")

    result = invoke("batch", listed, "--bundle", small_bundle, "-o", out, "--workers", 2)

    assert result.exit_code == 1, result.output
    lines = {Path(line["input"]).name: line for line in report_lines(out)}
    assert len(lines) == SCENES
    assert lines["broken.png"]["status"] == "failed"
    assert "broken.png" in lines["broken.png"]["error"] and "corrupt or truncated" in lines["broken.png"]["error"]
    assert all(lines[p.name]["status"] == "ok" for p in scenes)
    assert not list(out.glob("broken_*"))
    assert "broken.png" in result.output  # the summary lists each failure


def _segmenting_worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::SceneWorker.segment"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker process through /proc")
def test_a_worker_killed_mid_scene_leaves_no_partial_file_and_the_batch_completes(local_ray, small_bundle, tmp_path):
    scenes = write_synthetic(tmp_path / "scenes", size=(520, 520))
    out = tmp_path / "out"
    killed: list[int] = []
    stop = threading.Event()

    def kill_one_worker_mid_scene() -> None:
        """SIGKILL a worker while it is inside segment() and its scene's temporary files exist."""
        while not stop.is_set() and not killed:
            pids = _segmenting_worker_pids()
            if pids and out.is_dir() and temporaries(out):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_worker_mid_scene, daemon=True)
    killer.start()
    try:
        summary = run_batch(BatchOptions(inputs=(str(tmp_path / "scenes"),), bundle=small_bundle, output=out, workers=2), show_progress=False)
    finally:
        stop.set()
        killer.join()

    assert len(killed) == 1
    assert summary.worker_deaths >= 1, [r.deaths for r in summary.results]
    assert summary.counts["ok"] == SCENES and not summary.failed
    retried = [r for r in summary.results if r.attempts == 2]
    assert len(retried) == 1 and retried[0].pid != killed[0]
    assert not temporaries(out)
    for scene in scenes:
        with Image.open(out / f"{scene.stem}_mask.png") as mask:
            assert mask.size == (520, 520)

    from runtime.segmenter import Segmenter

    again = tmp_path / "again"
    with Segmenter(small_bundle, threads=1) as segmenter:
        segmenter.segment_file(retried[0].input, again)
    name = f"{Path(retried[0].input).stem}_mask.png"
    assert (out / name).read_bytes() == (again / name).read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_address_of_a_cluster_that_is_not_there_fails_in_one_line(small_bundle, tmp_path):
    write_synthetic(tmp_path / "scenes", count=1)
    address = f"127.0.0.1:{_free_port()}"
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "batch", str(tmp_path / "scenes"), "-b", str(small_bundle), "-o", str(tmp_path / "out"), "--address", address],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    seconds = time.monotonic() - start
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith(f"error: --address {address}: no Ray cluster answers at"), done.stderr
    assert "ray start --head" in lines[0]
    assert seconds < 60


def test_batch_bench_prints_scenes_per_minute_and_peak_rss_per_worker(local_ray, small_bundle, tmp_path):
    from runtime.bench.batch_bench import BatchBenchOptions, run_batch_bench

    report = run_batch_bench(BatchBenchOptions(out=tmp_path / "bench", bundle=small_bundle, scenes=3, size=200, workers=(1, 2)))

    assert [run["workers"] for run in report["runs"]] == [1, 2]
    for run in report["runs"]:
        assert run["scenes"] == 3 and run["scenes_per_minute"] > 0 and run["processing_seconds"] > 0
        assert set(run["peak_rss_bytes"]) <= {"worker-1", "worker-2"} and all(v > 10_000_000 for v in run["peak_rss_bytes"].values())
    assert len(report["runs"][0]["peak_rss_bytes"]) == 1
    assert (tmp_path / "bench" / "batch-bench.json").is_file()


def test_batch_bench_on_worker_nodes_uses_one_node_then_two(small_bundle, tmp_path):
    """In a fresh process, as `glsnet bench --batch --batch-nodes` runs: Ray must stay on 127.0.0.1 from its first
    import (set after it, the head listened on the LAN address and the bench waited for it forever)."""
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    code = (
        "import json, sys; from pathlib import Path\n"
        "from runtime.bench.batch_bench import BatchBenchOptions, run_batch_bench\n"
        "report = run_batch_bench(BatchBenchOptions(out=Path(sys.argv[1]), bundle=Path(sys.argv[2]), scenes=2, size=160, nodes=True))\n"
        "print(json.dumps(report['runs']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "bench"), str(small_bundle)],
        capture_output=True, text=True, timeout=400, env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    assert [run["worker_nodes"] for run in runs] == [1, 2]
    assert [run["nodes_used"] for run in runs][0] == 1 and 1 <= runs[1]["nodes_used"] <= 2  # a quick worker may take both scenes
    assert all(run["scenes"] == 2 and run["scenes_per_minute"] > 0 for run in runs)
