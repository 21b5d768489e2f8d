"""glsnet batch with object storage, without Ray: locations, inputs, resume, the bundle cache, a worker, lease and report.

A moto S3 server on 127.0.0.1 (tests/runtime/batch/conftest.py) stands in for S3; every object is
written by the test itself.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from runtime.batch.bundle_fetch import COMPLETE_MARK, check_bundle, graph_file_sizes, local_bundle
from runtime.batch.inputs import expand_inputs
from runtime.batch.lease import LEASE_NAME, Lease
from runtime.batch.report import ReportWriter, SceneResult, read_report
from runtime.batch.resume import batch_provenance, done_scenes, output_names
from runtime.batch.storage import Location, parse_location, read_bytes
from runtime.batch.worker import SCRATCH_ENV, Scene, SceneWorker
from runtime.errors import BundleError, ClusterError, InputError
from runtime.image_io.writers import OutputOptions
from runtime.segmenter import Segmenter, SegmenterOptions
from tests.runtime.batch.conftest import upload_folder


def test_plain_paths_are_made_absolute_without_following_symlinks(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert parse_location("link/out", cwd=str(tmp_path)).uri == str(tmp_path / "link" / "out")
    assert parse_location(f"file://{tmp_path}/link/../x").uri == str(tmp_path / "x")
    assert parse_location("s3://bucket/out/").uri == "s3://bucket/out"
    assert Location("s3://bucket/a/b.tif").parent.join("c.png").uri == "s3://bucket/a/c.png"


@pytest.mark.parametrize("text", ["ftp://host/out", "s4://bucket/out", "http://host/x"])
def test_an_unsupported_scheme_is_a_one_line_error_not_a_folder(tmp_path, text, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as caught:
        parse_location(text)
    message = str(caught.value)
    assert "\n" not in message and "unsupported storage scheme" in message and "s3://" in message
    assert not any(tmp_path.iterdir())


def test_a_missing_backend_names_the_extra(monkeypatch):
    import sys

    from runtime.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "gcsfs", None)
    with pytest.raises(MissingDependencyError, match=r"gcsfs.*glsnet-deploy\[gcs\]"):
        Location("gs://bucket/x").filesystem()


def test_s3_prefixes_globs_and_lists_expand_to_each_image_once(bucket):
    fs, name = bucket
    for key in ("scenes/a.png", "scenes/b.tif", "scenes/notes.md", "scenes/deep/c.jpg", "out/a_mask.png"):
        fs.pipe_file(f"{name}/{key}", b"x")
    fs.pipe_file(f"{name}/lists/l.txt", b"# archive\n../scenes/a.png\ns3://%s/scenes/deep/c.jpg\n" % name.encode())
    fs.pipe_file(f"{name}/lists/l.csv", b"id,path\n1,../scenes/b.tif\n")
    fs.invalidate_cache()
    root = f"s3://{name}"

    assert [s.uri for s in expand_inputs([f"{root}/scenes"])] == [f"{root}/scenes/a.png", f"{root}/scenes/b.tif"]
    assert [s.uri for s in expand_inputs([f"{root}/**/*.jpg"])] == [f"{root}/scenes/deep/c.jpg"]
    listed = expand_inputs([f"{root}/lists/l.txt", f"{root}/lists/l.csv"])
    assert [s.uri for s in listed] == [f"{root}/lists/../scenes/a.png", f"{root}/scenes/deep/c.jpg", f"{root}/lists/../scenes/b.tif"]
    assert [s.uri for s in expand_inputs([f"{root}/*/*.png"], exclude=Location(f"{root}/out"))] == [f"{root}/scenes/a.png"]
    with pytest.raises(InputError, match="no such object or prefix"):
        expand_inputs([f"{root}/nothing"])
    with pytest.raises(InputError, match="matches no"):
        expand_inputs([f"{root}/scenes/*.webp"])


def test_resume_reads_the_stats_marker_from_the_store(bucket, tmp_path):
    fs, name = bucket
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    outputs = OutputOptions(stats=True)
    provenance = batch_provenance(bundle, SegmenterOptions(), outputs)
    scene, out = Location(f"s3://{name}/in/scene.tif"), Location(f"s3://{name}/out")
    names = output_names(scene, outputs)
    assert names == ["scene_mask.png", "scene_color.png", "scene_stats.json"]
    fs.pipe_file(f"{name}/out/scene_mask.png", b"m")
    fs.pipe_file(f"{name}/out/scene_stats.json", json.dumps({"provenance": provenance}).encode())
    assert done_scenes([scene], out, outputs, provenance) == set()  # the colour mask is missing
    fs.pipe_file(f"{name}/out/scene_color.png", b"c")
    assert done_scenes([scene], out, outputs, provenance) == {scene}
    assert done_scenes([scene], out, outputs, batch_provenance(bundle, SegmenterOptions(precision="int8"), outputs)) == set()


def test_the_bundle_is_checked_from_its_manifest_and_fetched_once_per_node(bucket, small_bundle, tmp_path):
    fs, name = bucket
    upload_folder(fs, small_bundle, f"{name}/bundle")
    location = Location(f"s3://{name}/bundle")
    ref, manifest = check_bundle(location, SegmenterOptions())
    assert manifest.num_classes > 1 and len(ref.manifest_sha256) == 64
    with pytest.raises(BundleError, match="no int8 graphs"):
        check_bundle(location, SegmenterOptions(precision="int8"))
    with pytest.raises(BundleError, match="no manifest.json"):
        check_bundle(Location(f"s3://{name}/missing"), SegmenterOptions())
    sizes = graph_file_sizes(ref, manifest, "fp32")  # the driver's memory plan: sizes asked of the store, nothing fetched
    assert sizes == {file: (small_bundle / file).stat().st_size for file in sizes} and "local.onnx" in sizes
    assert not (tmp_path / "node").exists()

    scratch = tmp_path / "node"
    first = local_bundle(ref, str(scratch), "fp32")
    assert Path(first) == scratch / "bundles" / ref.manifest_sha256 and (Path(first) / COMPLETE_MARK).is_file()
    stamp = (Path(first) / "manifest.json").stat().st_mtime_ns
    assert local_bundle(ref, str(scratch), "fp32") == first  # cached: not fetched again
    assert (Path(first) / "manifest.json").stat().st_mtime_ns == stamp

    graph = next(p for p in small_bundle.rglob("*.onnx"))
    fs.pipe_file(f"{name}/bundle/{graph.relative_to(small_bundle).as_posix()}", graph.read_bytes()[:-10])  # a corrupt upload
    fs.invalidate_cache()
    with pytest.raises(BundleError, match="does not match the manifest"):
        local_bundle(ref, str(tmp_path / "other-node"), "fp32")
    assert os.listdir(tmp_path / "other-node" / "bundles") == [f"{ref.manifest_sha256}.lock"]  # no partial copy left


def test_a_worker_reads_s3_scenes_and_uploads_outputs_byte_identical_to_segment_file(bucket, small_bundle, tmp_path, monkeypatch):
    fs, name = bucket
    upload_folder(fs, small_bundle, f"{name}/bundle")
    rng = np.random.default_rng(3)
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    pixels = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(scenes / "flat.png")
    tifffile.imwrite(scenes / "tiled.tif", pixels, tile=(64, 64), photometric="rgb")
    upload_folder(fs, scenes, f"{name}/scenes")
    monkeypatch.setenv(SCRATCH_ENV, str(tmp_path / "scratch"))

    ref, _ = check_bundle(Location(f"s3://{name}/bundle"), SegmenterOptions())
    outputs = OutputOptions(stats=True)
    provenance = batch_provenance(ref.location.uri, SegmenterOptions(), outputs, ref.manifest_sha256)
    worker = SceneWorker("worker-1", ref, SegmenterOptions(threads=1), outputs, provenance)
    out = Location(f"s3://{name}/out")

    import runtime.batch.worker as worker_module

    downloaded: list[str] = []
    real_download = worker_module.download
    monkeypatch.setattr(worker_module, "download", lambda source, local: downloaded.append(source.uri) or real_download(source, local))
    results = [worker.segment(Scene(Location(f"s3://{name}/scenes/{n}"), out)) for n in ("flat.png", "tiled.tif")]
    assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
    assert downloaded == [f"s3://{name}/scenes/flat.png"]  # the TIFF was read by ranges, never downloaded
    assert results[1].outputs[-1].endswith("tiled_stats.json")  # uploaded last: the commit marker

    with Segmenter(small_bundle, threads=1) as segmenter:
        for image in ("flat.png", "tiled.tif"):
            segmenter.segment_file(scenes / image, tmp_path / "reference", outputs)
    fs.invalidate_cache()
    for stem in ("flat", "tiled"):
        for kind in ("mask", "color"):
            assert read_bytes(out.join(f"{stem}_{kind}.png")) == (tmp_path / "reference" / f"{stem}_{kind}.png").read_bytes()
    missing = worker.segment(Scene(Location(f"s3://{name}/scenes/gone.tif"), out))
    assert missing.status == "failed" and "gone.tif: no such object" in missing.error
    worker.shutdown()
    assert os.listdir(tmp_path / "scratch" / "work") == []  # the worker's scratch folder went with it


def test_a_second_driver_is_refused_while_the_lease_is_held(bucket, tmp_path):
    fs, name = bucket
    out = Location(f"s3://{name}/out")
    first = Lease(out).acquire()
    other = Lease(out)
    other.holder = {"host": "another-host", "pid": 1}
    with pytest.raises(ClusterError, match="another glsnet batch"):
        other.acquire()
    first.release()
    assert not fs.exists(f"{name}/out/{LEASE_NAME}")
    other.acquire()  # free again
    ghost = Lease(out)
    fs.pipe_file(f"{name}/out/{LEASE_NAME}", json.dumps({"host": ghost.holder["host"], "pid": 2**22 + 7, "renewed": 1e12}).encode())
    ghost.acquire()  # a driver of this host whose process is gone (SIGKILL) is taken over at once
    other.release()  # its lease is ghost's now: left in place
    assert json.loads(fs.cat_file(f"{name}/out/{LEASE_NAME}"))["pid"] == ghost.holder["pid"]
    ghost.release()


def test_a_lease_is_renewed_through_a_long_setup_and_a_taken_over_one_is_not_overwritten(tmp_path, monkeypatch):
    import runtime.batch.lease as lease_module

    monkeypatch.setattr(lease_module, "RENEW_EVERY_S", 0.05)
    out = Location(str(tmp_path / "out"))
    path = tmp_path / "out" / LEASE_NAME
    lease = Lease(out).acquire()
    try:
        first = json.loads(path.read_text())["renewed"]
        time.sleep(0.5)  # a setup step that calls nothing on the lease
        assert json.loads(path.read_text())["renewed"] > first  # the renewal thread kept it fresh
        path.write_text(json.dumps({"host": "another-host", "pid": 4242, "renewed": time.time()}))  # a driver took it over
        time.sleep(0.5)
        assert json.loads(path.read_text())["host"] == "another-host"  # not overwritten
        with pytest.raises(ClusterError, match=rf"{LEASE_NAME}: another glsnet batch \(another-host, pid 4242\) took over"):
            lease.renew(force=True)
    finally:
        lease.release()
    assert path.exists()  # another driver's lease is left in place


def test_each_run_appends_its_own_report_section_in_the_store(bucket, tmp_path):
    _, name = bucket
    location = Location(f"s3://{name}/out/batch-report.jsonl")
    for run in range(2):
        with ReportWriter(location, str(tmp_path / "driver")) as report:
            report.write(SceneResult(f"scene{run}", [], "ok"))
    lines = read_report(read_bytes(location).decode())
    assert [("run" in line, line.get("input")) for line in lines] == [(True, None), (False, "scene0"), (True, None), (False, "scene1")]
    assert lines[0]["run"] != lines[2]["run"]
    assert os.listdir(tmp_path / "driver") == []
