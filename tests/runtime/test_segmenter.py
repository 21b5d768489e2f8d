"""The runtime against the PyTorch reference, banded global features, thread safety and bad input."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from runtime.algorithm.global_features import global_features, plan_bands
from runtime.algorithm.scheduler import PaddedReader, normalization_for
from runtime.errors import BundleError, InputError
from runtime.segmenter import Segmenter


def scene(height: int, width: int, seed: int, bands: int = 3) -> np.ndarray:
    """Smooth seeded regions plus texture, so the random-init model predicts several classes."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 40), max(2, width // 40), bands), dtype=np.uint8)
    if bands == 3:
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.int16)
    else:
        smooth = np.stack([np.asarray(Image.fromarray(coarse[:, :, b]).resize((width, height), Image.BILINEAR)) for b in range(bands)], -1).astype(np.int16)
    return np.clip(smooth + rng.integers(-25, 26, (height, width, 1), dtype=np.int16), 0, 255).astype(np.uint8)


def reference_mask(model, image: np.ndarray) -> np.ndarray:
    from glsnet.inference import predict_mask
    from runtime.image_io.preprocess import normalize

    return predict_mask(model, normalize(image, model.config.normalization))


@pytest.fixture(scope="module")
def segmenter(small_bundle) -> Segmenter:
    return Segmenter(small_bundle)


@pytest.mark.parametrize("height,width", [(100, 90), (128, 128), (200, 333)])
def test_small_images_match_the_reference(segmenter, small_model, height, width):
    image = scene(height, width, height)
    mask = segmenter.segment(image)
    assert mask.shape == (height, width) and mask.dtype == np.uint8
    assert (mask == reference_mask(small_model, image)).mean() >= 0.999


@pytest.mark.slow
def test_awkward_large_image_matches_the_reference(segmenter, small_model):
    image = scene(1000, 3001, 5)
    mask = segmenter.segment(image)
    expected = reference_mask(small_model, image)
    assert (mask == expected).mean() >= 0.999
    assert len(np.unique(expected)) >= 2  # a scene the model does not paint in one class


@pytest.mark.integration
@pytest.mark.slow
def test_real_deepglobe_image_matches_the_reference(segmenter, small_model, deepglobe_dir):
    from runtime.image_io.readers import open_image

    path = sorted(deepglobe_dir.glob("*_sat.jpg"))[0]
    source = open_image(path)
    image = source.read_rows(0, source.height)
    assert image.shape == (2448, 2448, 3)
    image = image[:1224, :1836]  # a real crop keeps the test short on two cores
    mask = segmenter.segment(image)
    assert (mask == reference_mask(small_model, image)).mean() >= 0.999


def test_banded_global_features_equal_whole_image_ones_with_a_wide_halo(segmenter):
    scheduler = segmenter.scheduler
    scheduler.global_backend.activate()  # with stage graphs in the bundle the single global graph loads on demand
    image = scene(700, 300, 11)
    grid = scheduler.grid_for(700, 300)
    reader = PaddedReader(_array(image), normalization_for(segmenter.manifest, None), grid)
    whole = global_features(scheduler.global_backend, reader.rows, grid.padded_height)
    assert whole.shape[2:] == (22, 10)
    # halo >= half of ResNet18's 435-px receptive field: every kept feature sees the same pixels
    for halo in (256, 704):
        banded = global_features(scheduler.global_backend, reader.rows, grid.padded_height, band_rows=160, halo=halo)
        np.testing.assert_allclose(banded, whole, atol=1e-4, err_msg=f"halo {halo}")
    no_halo = global_features(scheduler.global_backend, reader.rows, grid.padded_height, band_rows=160, halo=0)
    assert no_halo.shape == whole.shape and np.abs(no_halo - whole).max() > 1e-2  # the halo matters
    assert [(b.top, b.bottom) for b in plan_bands(700, 160, 64)] == [(0, 160), (160, 320), (320, 480), (480, 640), (640, 700)]


def test_banded_global_branch_gives_the_same_mask(small_bundle, segmenter):
    image = scene(900, 260, 12)
    banded = Segmenter(small_bundle, options=_options(global_band_rows=256))
    assert banded.plan(900, 260).global_band_rows == 256
    np.testing.assert_array_equal(banded.segment(image), segmenter.segment(image))


def test_two_threads_get_the_same_masks_as_one(segmenter):
    images = [scene(260, 300, 21), scene(190, 410, 22)]
    expected = [segmenter.segment(image) for image in images]
    results: dict[int, list[np.ndarray]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(2):
                results[i].append(segmenter.segment(images[i]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in (0, 1):
        assert len(results[i]) == 2
        for mask in results[i]:
            np.testing.assert_array_equal(mask, expected[i])


def test_band_selection_reads_the_chosen_bands(small_bundle, segmenter):
    rgb = scene(150, 170, 31)
    four = np.concatenate([rgb[:, :, 2:3], rgb[:, :, 1:2], rgb[:, :, 0:1], np.zeros_like(rgb[:, :, :1])], axis=2)  # BGR + extra band
    chosen = Segmenter(small_bundle, bands=(2, 1, 0))
    np.testing.assert_array_equal(chosen.segment(four), segmenter.segment(rgb))


def test_wrong_band_count_is_a_clear_error(small_bundle, segmenter):
    # too few bands: no --bands hint, since no choice of bands can help (issue 13)
    for bands in (1, 2):
        with pytest.raises(InputError, match=f"{bands} band.*needs an image with at least 3 bands") as caught:
            segmenter.segment(np.zeros((50, 60, bands), np.uint8))
        assert "--bands" not in str(caught.value)
    # enough bands, but a selected one is missing: the hint names bands that exist
    with pytest.raises(InputError, match=r"reads bands \[0, 1, 5\].*--bands 0,1,2"):
        Segmenter(small_bundle, bands=(0, 1, 5)).segment(np.zeros((50, 60, 4), np.uint8))
    with pytest.raises(InputError, match="selects 2 band"):
        Segmenter(small_bundle, bands=(0, 1))


def test_zero_sized_and_non_array_images_are_refused(segmenter):
    with pytest.raises(InputError, match="empty"):
        segmenter.segment(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(InputError, match="numpy array"):
        segmenter.segment([[1, 2, 3]])  # type: ignore[arg-type]


def test_bundle_of_another_schema_version_is_refused(small_bundle, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(small_bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema_version 99 is not supported"):
        Segmenter(other)


def test_corrupted_graph_and_missing_precision_are_refused(small_bundle, tmp_path):
    with pytest.raises(BundleError, match="no int8 graphs"):
        Segmenter(small_bundle, precision="int8")
    broken = tmp_path / "broken"
    shutil.copytree(small_bundle, broken)
    with open(broken / "fusion.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="does not match the manifest"):
        Segmenter(broken)


def test_segment_file_errors_leave_no_output(segmenter, tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    with pytest.raises(InputError):
        segmenter.segment_file(bad, out)
    assert not out.exists() or list(out.iterdir()) == []
    two_band = tmp_path / "two.tif"
    import tifffile

    tifffile.imwrite(two_band, np.zeros((2, 40, 40), np.uint8), planarconfig="separate", photometric="minisblack")
    with pytest.raises(InputError, match="band"):
        segmenter.segment_file(two_band, out)
    assert not out.exists() or list(out.iterdir()) == []


def test_segment_file_writes_mask_and_colour(segmenter, tmp_path):
    path = tmp_path / "scene.png"
    image = scene(120, 140, 41)
    Image.fromarray(image).save(path)
    paths = segmenter.segment_file(path, tmp_path / "out")
    np.testing.assert_array_equal(np.asarray(Image.open(paths.mask)), segmenter.segment(image))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scene_color.png", "scene_mask.png"]


def test_memory_budget_changes_the_plan_and_not_the_mask(small_bundle, segmenter):
    image = scene(600, 500, 51)
    lean = Segmenter(small_bundle, max_memory="900MB")
    plan = lean.plan(600, 500)
    assert plan.budget_bytes == 900_000_000 and plan.estimate_bytes <= plan.budget_bytes
    np.testing.assert_array_equal(lean.segment(image), segmenter.segment(image))
    with pytest.raises(InputError, match="too small for this bundle"):
        Segmenter(small_bundle, max_memory="50MB").plan(600, 500)


def _array(image: np.ndarray):
    from runtime.image_io.readers import ArraySource

    return ArraySource(image)


def _options(**changes):
    from runtime.segmenter import SegmenterOptions

    return SegmenterOptions(**changes)


def test_segment_file_to_explicit_paths(segmenter, tmp_path):
    from runtime.image_io.writers import OutputOptions, OutputPaths

    path = tmp_path / "in.png"
    Image.fromarray(scene(70, 80, 61)).save(path)
    wanted = OutputPaths(mask=tmp_path / "x" / "labels.tif", stats=tmp_path / "y" / "counts.json")
    written = segmenter.segment_file(path, outputs=OutputOptions(format="tif", color=False, stats=True), paths=wanted)
    assert written == wanted and wanted.mask.is_file() and wanted.stats.is_file()
    assert json.loads(wanted.stats.read_text())["pixels"] == 70 * 80


def test_the_single_global_graph_beside_stage_graphs_loads_only_when_asked_and_is_checked_then(small_bundle, tmp_path):
    """Its session would cost a start 0.1-0.2 s and a second copy of the stages' weights; it never runs there."""
    scheduler = Segmenter(small_bundle).scheduler
    assert scheduler.global_stages and not scheduler.global_backend.is_active
    assert scheduler.global_backend.activate().is_active  # on demand (the bench's global branch alone)
    other = tmp_path / "retyped"
    shutil.copytree(small_bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["graphs"]["fp32"]["global"]["inputs"][0]["dtype"] = "float16"
    (other / "manifest.json").write_text(json.dumps(manifest))
    scheduler = Segmenter(other).scheduler  # opens: the stages run the global branch
    with pytest.raises(BundleError, match="global.onnx"):
        scheduler.global_backend.activate()
    assert not scheduler.global_backend.is_active
