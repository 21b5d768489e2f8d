"""glsnet batch without Ray: input expansion, resume decisions, stale temporaries, and the missing-Ray message."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runtime.atomic_file import atomic_path, remove_temporaries_of
from runtime.batch.inputs import expand_inputs
from runtime.batch.resume import batch_provenance, is_done
from runtime.batch.storage import Location
from runtime.errors import InputError, MissingDependencyError
from runtime.image_io.writers import OutputOptions
from runtime.segmenter import SegmenterOptions


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folders_globs_and_lists_expand_to_each_image_once(tmp_path, monkeypatch):
    a = touch(tmp_path / "scenes" / "a.png")
    b = touch(tmp_path / "scenes" / "b.tif")
    touch(tmp_path / "scenes" / "notes.md")
    c = touch(tmp_path / "more" / "deep" / "c.jpg")
    out_mask = touch(tmp_path / "scenes" / "out" / "a_mask.png")
    listed = tmp_path / "list.txt"
    listed.write_text("# archive\n\nscenes/a.png\n" + str(c) + "\n")
    table = tmp_path / "list.csv"
    table.write_text("id,path\n1,scenes/b.tif\n2,more/deep/c.jpg\n")

    monkeypatch.chdir(tmp_path)
    found = expand_inputs(["scenes", "more/**/*.jpg", str(listed), str(table)], exclude=tmp_path / "scenes" / "out")

    assert found == [Location(str(a)), Location(str(b)), Location(str(c))]  # absolute, symlinks not followed
    assert Location(str(out_mask)) not in found


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.png", "no such file or folder"),
        (lambda d: touch(d / "notes.md"), "not an image"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "holds no"),
        (lambda d: d / "*.tif", "matches no"),
    ],
)
def test_bad_inputs_are_named(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        expand_inputs([str(make(tmp_path))])


def test_a_list_line_that_names_no_image_says_where(tmp_path):
    listed = tmp_path / "list.txt"
    listed.write_text("gone.png\n")
    with pytest.raises(InputError, match=r"list.txt:1: gone.png: no such image file"):
        expand_inputs([str(listed)])


def test_two_scenes_with_one_stem_are_refused(tmp_path):
    first, second = touch(tmp_path / "x" / "tile.png"), touch(tmp_path / "y" / "tile.tif")
    with pytest.raises(InputError, match="would write the same outputs"):
        expand_inputs([str(first), str(second)])


def _stats(path: Path, provenance: dict) -> None:
    path.write_text(json.dumps({"image": "x", "provenance": provenance}))


def test_a_scene_is_done_only_with_all_outputs_and_the_same_bundle_and_options(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    outputs = OutputOptions(stats=True)
    provenance = batch_provenance(bundle, SegmenterOptions(threads=1), outputs)
    paths = outputs.paths_for(Path("scene.png"), tmp_path / "out")
    (tmp_path / "out").mkdir()
    touch(paths.mask)
    _stats(paths.stats, provenance)
    assert not is_done(paths, provenance)  # the colour mask is missing
    touch(paths.color)
    assert is_done(paths, provenance)
    assert is_done(paths, batch_provenance(bundle, SegmenterOptions(threads=8), outputs))  # threads change no output
    assert not is_done(paths, batch_provenance(bundle, SegmenterOptions(precision="int8"), outputs))
    assert not is_done(paths, batch_provenance(bundle, SegmenterOptions(), OutputOptions(stats=True, overlay=True)))
    (bundle / "manifest.json").write_text('{"another": "bundle"}')
    assert not is_done(paths, batch_provenance(bundle, SegmenterOptions(), outputs))
    paths.stats.write_text("{not json")
    assert not is_done(paths, provenance)


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    target = tmp_path / "scene_mask.png"
    context = atomic_path(target)
    temporary = context.__enter__()  # a writer killed here never runs its cleanup
    temporary.write_bytes(b"half")
    other = touch(tmp_path / "other_mask.png")
    assert remove_temporaries_of(target) == [temporary]
    assert not temporary.exists() and other.exists() and not target.exists()


def test_batch_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    from runtime.batch.cluster import ray_session

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as where it is not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'glsnet-deploy\[cluster\]'"):
        with ray_session(None):
            pass


def test_glsnet_run_works_without_ray(small_bundle, tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    monkeypatch.setitem(sys.modules, "ray", None)
    from runtime.cli import app

    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 170, 3), dtype=np.uint8)).save(image)
    result = CliRunner().invoke(app, ["run", str(image), "--bundle", str(small_bundle), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "scene_mask.png").is_file()
    assert CliRunner().invoke(app, ["batch", "--help"]).exit_code == 0


def test_a_worker_constructor_error_is_shown_as_its_own_message():
    from runtime.batch.dispatcher import _creation_error

    wrapped = (
        "The actor died because of an error raised in its creation task, ray::SceneWorker.__init__() (pid=1, ip=10.0.0.2)\n"
        '  File "runtime/batch/worker.py", line 50, in __init__\n'
        "runtime.errors.BundleError: /data/bundle: no manifest.json; this is not a GLSNet bundle\n"
    )
    assert _creation_error(RuntimeError(wrapped)) == "/data/bundle: no manifest.json; this is not a GLSNet bundle"
    assert _creation_error(RuntimeError("x\nOSError: disk gone")) == "OSError: disk gone"


def test_a_gpu_provider_without_gpus_per_worker_fails_before_anything_starts(tmp_path):
    from runtime.batch.dispatcher import BatchOptions

    with pytest.raises(InputError, match=r"--provider cuda runs on a GPU but --gpus-per-worker is 0"):
        BatchOptions(inputs=("x",), bundle="b", output="o", segmenter=SegmenterOptions(provider="cuda"))
    assert BatchOptions(inputs=("x",), bundle="b", output="o", segmenter=SegmenterOptions(provider="cuda"), gpus_per_worker=1).gpus_per_worker == 1


def test_workers_run_as_many_ort_threads_as_their_cpus_without_spinning():
    from runtime.batch.dispatcher import BatchOptions

    worker = BatchOptions(inputs=("x",), bundle="b", output="o", cpus_per_worker=4).worker_segmenter()
    assert (worker.threads, worker.thread_spinning) == (4, False)
    given = BatchOptions(inputs=("x",), bundle="b", output="o", cpus_per_worker=4, segmenter=SegmenterOptions(threads=3)).worker_segmenter()
    assert (given.threads, given.thread_spinning) == (3, False)
    assert not SegmenterOptions().thread_spinning  # glsnet run too: its graphs' pools take turns with reading and stitching


def test_each_worker_reserves_the_memory_plan_of_the_largest_scene_by_default(small_bundle):
    from runtime.batch.bundle_fetch import check_bundle
    from runtime.batch.dispatcher import RAY_WORKER_BYTES, BatchOptions, planned_worker_memory
    from runtime.segmenter import Segmenter

    def options(**kw) -> BatchOptions:
        return BatchOptions(inputs=("x",), bundle=small_bundle, output="o", **kw)

    ref, manifest = check_bundle(Location(str(small_bundle)), SegmenterOptions())
    shapes = [(300, 200), (4000, 900), (1000, 3000), (0, 0)]  # most pixels: 4000 x 900; widest: 1000 x 3000; (0, 0): no header
    planned, why = planned_worker_memory(options(), ref, manifest, shapes)
    with Segmenter(small_bundle, threads=1) as segmenter:
        plans = {shape: segmenter.plan(*shape).estimate_bytes for shape in shapes[:3]}
    assert plans[(1000, 3000)] > plans[(4000, 900)]  # the widest scene sets the reservation here, not the one of most pixels
    assert planned == max(plans.values()) + RAY_WORKER_BYTES and "needs the most (1000 x 3000: batch" in why
    assert options().ray_resources(planned)["memory"] == planned
    assert options(memory_per_worker=123_000_000).ray_resources(planned)["memory"] == 123_000_000  # the flag overrides
    assert options(gpus_per_worker=1, segmenter=SegmenterOptions(provider="cuda")).ray_resources(None).get("memory") is None

    assert planned_worker_memory(options(segmenter=SegmenterOptions(provider="cuda"), gpus_per_worker=1), ref, manifest, shapes) is None
    assert planned_worker_memory(options(), ref, manifest, [(0, 0)]) is None
    tight = options(segmenter=SegmenterOptions(max_memory=50_000_000))  # no plan fits: the budget itself is reserved
    assert planned_worker_memory(tight, ref, manifest, shapes) is None and tight.ray_resources(None)["memory"] == 50_000_000


def test_scene_deadlines_scale_with_pixels_unless_given():
    from runtime.batch.dispatcher import TIMEOUT_FLOOR_S, TIMEOUT_S_PER_MEGAPIXEL, BatchOptions

    default = BatchOptions(inputs=("x",), bundle="b", output="o")
    assert default.scene_deadline(100 * 100) == TIMEOUT_FLOOR_S
    assert default.scene_deadline(20_000 * 20_000) == pytest.approx(400 * TIMEOUT_S_PER_MEGAPIXEL)
    assert BatchOptions(inputs=("x",), bundle="b", output="o", scene_timeout_s=7).scene_deadline(20_000 * 20_000) == 7
    assert BatchOptions(inputs=("x",), bundle="b", output="o", scene_timeout_s=0).scene_deadline(1) is None


def test_rays_cause_of_death_is_kept_in_one_line():
    from runtime.batch.dispatcher import _cause_of_death

    said = (
        "The actor died unexpectedly before finishing this task.\n\tclass_name: SceneWorker\n\tactor_id: ab12\n\tpid: 77\n"
        "\tip: 10.0.0.3\nThe actor is dead because its worker process has died. Worker exit type: NODE_OUT_OF_MEMORY"
    )
    assert _cause_of_death(RuntimeError(said)) == "The actor is dead because its worker process has died. Worker exit type: NODE_OUT_OF_MEMORY"


def test_an_output_uri_of_another_scheme_is_refused_in_one_line_before_ray(tmp_path):
    import subprocess

    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "batch", str(tmp_path), "--bundle", str(tmp_path), "-o", "ftp://host/out"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 2  # bad input, as for every other command
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ftp://host/out: unsupported storage scheme ftp://"), done.stderr
    assert list(tmp_path.iterdir()) == []
