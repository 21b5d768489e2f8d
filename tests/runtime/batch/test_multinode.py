"""glsnet batch on a multi-node Ray cluster with object storage, all on this machine and loopback only.

A ray.cluster_utils.Cluster: a head with no CPUs and two worker nodes, each with its own scratch
folder ($GLSNET_SCRATCH in its raylet's environment); a moto S3 server on 127.0.0.1 holds scenes of
uneven sizes and the bundle. The driver is `python -m runtime.cli batch s3://... --bundle s3://...
-o s3://...` in a subprocess started from an empty folder. Phases: the main run (masks identical to
`glsnet run`, both nodes used, nothing in the working directory, scratch emptied), a node removed
mid-run, the driver SIGKILLed and re-run, and a hanging scene (fault-injected through
$GLSNET_BATCH_FAULT_HANG) timing out while a relative -o writes under the driver's directory.
Everything is started and stopped here; each wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from runtime.batch.report import read_report
from runtime.batch.worker import FAULT_HANG_ENV, SCRATCH_ENV
from runtime.segmenter import Segmenter
from tests.runtime.batch.conftest import upload_folder

ray = pytest.importorskip("ray", reason="glsnet batch needs Ray: pip install 'glsnet-deploy[cluster]'")
cluster_utils = pytest.importorskip("ray.cluster_utils")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[3]
SIZES = [(420, 380), (300, 340), (360, 260), (240, 220), (200, 180)]  # uneven scenes; the first is a tiled TIFF
HANG = "hang.png"
RUN_TIMEOUT_S = 150


def scene(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 40), max(2, width // 40), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.int16)
    return np.clip(smooth + rng.integers(-20, 21, (height, width, 1)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def world(s3_server, small_bundle, tmp_path_factory):
    """The S3 objects, the reference masks of `glsnet run`, and the cluster (stopped at the end)."""
    import fsspec

    base = tmp_path_factory.mktemp("multinode")
    scenes = base / "scenes"
    scenes.mkdir()
    for i, (h, w) in enumerate(SIZES):
        if i == 0:
            tifffile.imwrite(scenes / "scene0.tif", scene(h, w, i), tile=(64, 64), photometric="rgb")
        else:
            Image.fromarray(scene(h, w, i)).save(scenes / f"scene{i}.png")
    fs = fsspec.filesystem("s3")
    fs.mkdir("archive")
    upload_folder(fs, scenes, "archive/scenes")
    upload_folder(fs, small_bundle, "archive/bundle")
    hang = base / "hang"
    hang.mkdir()
    Image.fromarray(scene(120, 140, 9)).save(hang / HANG)
    Image.fromarray(scene(150, 130, 10)).save(hang / "quick.png")
    upload_folder(fs, hang, "archive/hang")

    reference = base / "reference"
    ran = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "run", *sorted(map(str, scenes.iterdir())), "-b", str(small_bundle), "-o", str(reference), "--stats"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=_env(base / "unused"),
    )
    assert ran.returncode == 0, ran.stderr

    # The raylets and the driver inherit this environment (and the AWS_* of s3_server). Ray maps 127.0.0.1
    # onto the machine's LAN address unless told this is not a real cluster: keep everything on loopback.
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    cluster = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False, "object_store_memory": 80 * 1024**2},
    )
    nodes = {}
    try:
        for name in ("a", "b"):
            nodes[name] = _add_node(cluster, base, name)
        cluster.wait_for_nodes()
        yield {"base": base, "fs": fs, "cluster": cluster, "nodes": nodes, "reference": reference, "scenes": scenes}
    finally:
        cluster.shutdown()


def _add_node(cluster, base: Path, name: str):
    scratch = base / f"scratch-{name}"
    scratch.mkdir(exist_ok=True)
    node = cluster.add_node(
        num_cpus=2, node_ip_address="127.0.0.1", object_store_memory=80 * 1024**2,
        env_vars={SCRATCH_ENV: str(scratch), FAULT_HANG_ENV: HANG},
    )
    node.glsnet_scratch = scratch
    return node


def _env(driver_scratch: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), SCRATCH_ENV: str(driver_scratch)}


def _batch(world, cwd: Path, *args: str, wait: bool = True):
    command = [sys.executable, "-m", "runtime.cli", "batch", *args, "--address", world["cluster"].address, "--workers", "2"]
    process = subprocess.Popen(command, cwd=cwd, env=_env(world["base"] / "driver-scratch"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return process
    out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    return process.returncode, out + err


def _last_section(text: str) -> list[dict]:
    lines = read_report(text)
    last = max(i for i, line in enumerate(lines) if "run" in line)
    return lines[last + 1 :]


def _report(world, prefix: str) -> list[dict]:
    world["fs"].invalidate_cache()
    return _last_section(world["fs"].cat_file(f"archive/{prefix}/batch-report.jsonl").decode())


def _work_files(node) -> list[Path]:
    work = node.glsnet_scratch / "work"
    return [p for p in work.rglob("*") if p.is_file()] if work.is_dir() else []


def _assert_masks_match(world, prefix: str) -> None:
    fs = world["fs"]
    fs.invalidate_cache()
    for path in sorted(world["reference"].glob("*_mask.png")):
        assert fs.cat_file(f"archive/{prefix}/{path.name}") == path.read_bytes(), path.name


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def test_s3_batch_on_two_nodes_matches_glsnet_run_and_leaves_nothing_behind(world, tmp_path):
    cwd = tmp_path / "empty"
    cwd.mkdir()
    code, output = _batch(world, cwd, "s3://archive/scenes", "--bundle", "s3://archive/bundle", "-o", "s3://archive/out")
    assert code == 0, output

    _assert_masks_match(world, "out")
    lines = _report(world, "out")
    assert sorted(Path(line["input"]).name for line in lines) == sorted(p.name for p in world["scenes"].iterdir())
    assert {line["status"] for line in lines} == {"ok"}
    assert {line["node_id"] for line in lines} == {world["nodes"]["a"].node_id, world["nodes"]["b"].node_id}
    # the largest scene went first: it is the first scene of the worker that ran it (results arrive in the
    # order they finish, so another worker's smaller scene may be reported before it)
    largest = next(line for line in lines if Path(line["input"]).name == "scene0.tif")
    assert [Path(line["input"]).name for line in lines if line["worker"] == largest["worker"]][0] == "scene0.tif"
    assert os.listdir(cwd) == []
    for node in world["nodes"].values():
        assert _work_files(node) == []
        assert set(os.listdir(node.glsnet_scratch)) <= {"work", "bundles"}
        cached = [p for p in (node.glsnet_scratch / "bundles").iterdir() if p.is_dir()]
        assert len(cached) == 1  # one copy per node, named after the manifest's sha256
    assert not any((world["base"] / "driver-scratch").rglob("*.jsonl"))
    assert not world["fs"].exists("archive/out/.glsnet-batch.lease")


def test_a_node_removed_mid_run_costs_a_second_attempt_not_a_failure(world, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    process = _batch(world, cwd, "s3://archive/scenes", "--bundle", "s3://archive/bundle", "-o", "s3://archive/out-lost", wait=False)
    doomed = world["nodes"]["b"]
    try:
        _wait_for(lambda: bool(_work_files(doomed)) or process.poll() is not None, RUN_TIMEOUT_S, "a scene in progress on node b")
        assert process.poll() is None, process.communicate()
        world["cluster"].remove_node(doomed, allow_graceful=False)
        out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
        world["nodes"]["b"] = _add_node(world["cluster"], world["base"], "b2")  # two worker nodes again for the next phases
    assert process.returncode == 0, out + err

    _assert_masks_match(world, "out-lost")
    lines = _report(world, "out-lost")
    assert {line["status"] for line in lines} == {"ok"}
    retried = [line for line in lines if line["attempts"] == 2]
    assert len(retried) == 1, lines
    assert retried[0]["node_id"] != doomed.node_id and "node" in " ".join(retried[0]["deaths"])


def test_a_killed_driver_is_rerun_and_skips_the_finished_scenes(world, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    fs = world["fs"]
    process = _batch(world, cwd, "s3://archive/scenes", "--bundle", "s3://archive/bundle", "-o", "s3://archive/out-killed", wait=False)

    def finished() -> int:
        fs.invalidate_cache()
        return len(fs.glob("archive/out-killed/*_stats.json"))

    try:
        _wait_for(lambda: finished() >= 2 or process.poll() is not None, RUN_TIMEOUT_S, "two finished scenes")
        assert process.poll() is None, process.communicate()
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
    done_before = finished()

    code, output = _batch(world, cwd, "s3://archive/scenes", "--bundle", "s3://archive/bundle", "-o", "s3://archive/out-killed")
    assert code == 0, output
    lines = _report(world, "out-killed")
    statuses = [line["status"] for line in lines]
    assert statuses.count("skipped") >= done_before and set(statuses) <= {"ok", "skipped"}
    assert len(lines) == len(SIZES)
    _assert_masks_match(world, "out-killed")
    sections = [line for line in read_report(fs.cat_file("archive/out-killed/batch-report.jsonl").decode()) if "run" in line]
    assert len(sections) == 2  # the killed run's section is kept; the re-run appended its own


def test_a_hanging_scene_times_out_while_the_others_complete_and_a_relative_output_follows_the_driver(world, small_bundle, tmp_path):
    cwd = tmp_path / "driver-dir"
    cwd.mkdir()
    code, output = _batch(world, cwd, "s3://archive/hang", "--bundle", "s3://archive/bundle", "-o", "rel/out", "--scene-timeout", "20")
    assert code == 1, output  # one scene failed

    out = cwd / "rel" / "out"
    lines = {Path(line["input"]).name: line for line in _last_section((out / "batch-report.jsonl").read_text())}
    assert lines[HANG]["status"] == "failed" and "timed out" in lines[HANG]["error"]
    assert lines["quick.png"]["status"] == "ok"
    assert (out / "quick_mask.png").is_file() and not list(out.glob("hang_*"))
    with Segmenter(small_bundle, threads=1) as segmenter:
        segmenter.segment_file(world["base"] / "hang" / "quick.png", tmp_path / "ref")
    assert (out / "quick_mask.png").read_bytes() == (tmp_path / "ref" / "quick_mask.png").read_bytes()
    for node in world["nodes"].values():
        _wait_for(lambda node=node: _work_files(node) == [], 30, "the killed worker's scratch swept by its restart")

