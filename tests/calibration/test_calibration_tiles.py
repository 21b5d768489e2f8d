"""Calibration tiles: seeded and deterministic, balanced, held back, stored in the bundle; readers; bad input."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from calibration.data_readers import FeedReader, TileFeeds, fp32_sessions, reader
from calibration.tiles import (
    CALIBRATION,
    HOLDOUT,
    TileOptions,
    bundle_tiles,
    calibrate_bundle,
    load_tiles,
    mask_to_classes,
    sample_tiles,
    save_tiles,
    tiles_digest,
)
from runtime.accuracy.metrics import ConfusionMatrix
from runtime.bundle.manifest import read_manifest
from runtime.errors import BundleError, InputError

SMALL_TILES = TileOptions(count=24, holdout=8, scene_size=256, scenes_per_image=2, candidates_per_scene=24, seed=3)


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory) -> list[Path]:
    from glsnet.data.synthetic import write_synthetic_folder

    return write_synthetic_folder(tmp_path_factory.mktemp("scenes"), count=3, height=320, width=384, seed=5)


@pytest.fixture(scope="module")
def manifest(small_bundle):
    return read_manifest(small_bundle)


def copy_bundle(source: Path, target: Path) -> Path:
    """A private copy of a bundle (hard links: the tests only add files and replace the manifest)."""
    shutil.copytree(source, target, copy_function=os.link)
    return target


def test_sampling_is_deterministic_under_a_seed(scene_files, manifest, tmp_path):
    first = sample_tiles(scene_files, manifest, SMALL_TILES)
    again = sample_tiles(scene_files, manifest, SMALL_TILES)
    other = sample_tiles(scene_files, manifest, TileOptions(**{**SMALL_TILES.__dict__, "seed": 4}))
    assert tiles_digest(first) == tiles_digest(again)
    assert np.array_equal(first.patches, again.patches)
    assert tiles_digest(first) != tiles_digest(other)
    assert save_tiles(first, tmp_path / "a.npz") == save_tiles(again, tmp_path / "b.npz")  # byte-identical files
    loaded = load_tiles(tmp_path / "a.npz")
    assert tiles_digest(loaded) == tiles_digest(first)
    assert loaded.info["seed"] == 3 and loaded.info["counts"] == first.counts()


def test_class_balanced_with_masks_and_held_back_by_scene(scene_files, manifest):
    tiles = sample_tiles(scene_files, manifest, SMALL_TILES)
    assert tiles.has_labels and tiles.info["method"].startswith("class-balanced")
    assert tiles.patches.shape == (32, 3) and tiles.patch_stratum.shape == (32,)
    # every patch lies inside its scene
    for s, y, x in tiles.patches:
        h, w = tiles.scenes[s].shape[:2]
        assert 0 <= y <= h - tiles.patch_size and 0 <= x <= w - tiles.patch_size
    calibration = set(tiles.patches[tiles.indices(CALIBRATION), 0])
    holdout = set(tiles.patches[tiles.indices(HOLDOUT), 0])
    assert holdout and not holdout & calibration
    assert all(tiles.scene_split[s] == HOLDOUT for s in holdout)
    # the stratum is the dominant label of the patch
    for index in tiles.indices(CALIBRATION)[:5]:
        label = tiles.patch_label(int(index))
        assert int(np.bincount(label[label != 255].ravel(), minlength=7).argmax()) == tiles.patch_stratum[index]


def test_balancing_evens_out_a_skewed_class_mix(manifest):
    """83% of the area is class 2, 17% class 5: a balanced draw takes as many patches of each."""
    pixels = [np.full((300, 300, 3), v, np.uint8) for v in (60, 120, 180)]
    labels = [np.full((300, 300), 2, np.uint8) for _ in range(3)]
    labels[2][:, :150] = 5
    options = TileOptions(count=12, holdout=0, holdout_fraction=0.0, scene_size=300, candidates_per_scene=64, seed=2)
    tiles = sample_tiles(pixels, manifest, options, labels=labels)
    assert tiles.info["method"].startswith("class-balanced")
    assert np.bincount(tiles.patch_stratum, minlength=7)[[2, 5]].tolist() == [6, 6]


def test_texture_balanced_without_labels(manifest):
    rng = np.random.default_rng(0)
    dark = (rng.random((300, 300, 3)) * 40).astype(np.uint8)
    bright_flat = np.full((300, 300, 3), 200, np.uint8)
    busy = (rng.random((300, 300, 3)) * 255).astype(np.uint8)
    tiles = sample_tiles([dark, bright_flat, busy], manifest, TileOptions(count=18, holdout=0, holdout_fraction=0.0, scene_size=300, seed=1))
    assert not tiles.has_labels and tiles.info["method"].startswith("texture-balanced")
    assert tiles.sources[0]["file"] == "array[0]" and len(tiles.sources[0]["sha256"]) == 64
    strata = tiles.patch_stratum[tiles.indices(CALIBRATION)]
    assert strata.min() >= 0 and strata.max() <= 8 and np.bincount(strata).tolist().count(6) == 3  # 3 strata, 6 each
    scene_of = tiles.patches[tiles.indices(CALIBRATION), 0]
    assert len(np.unique(scene_of)) >= 2  # not all from one image


def test_rgb_masks_map_to_palette_classes(manifest):
    palette = manifest.palette
    mask = np.array([[palette[1], palette[5]], [(250, 5, 250), (10, 10, 10)]], dtype=np.uint8)  # noisy rangeland, unknown
    assert mask_to_classes(mask, palette, "m").tolist() == [[1, 5], [3, 0]]
    assert mask_to_classes(np.array([[2, 9]], np.uint8), palette, "m").tolist() == [[2, 255]]


def test_too_few_patches_warns(scene_files, manifest, caplog):
    with caplog.at_level(logging.WARNING, logger="calibration.tiles"):
        sample_tiles(scene_files[:1], manifest, TileOptions(count=400, holdout=4, scene_size=256, candidates_per_scene=8))
    assert any("calibration patches" in r.message and "recommended" in r.message for r in caplog.records)


def test_bad_inputs(scene_files, manifest, small_bundle, tmp_path):
    with pytest.raises(InputError, match="at least one image"):
        sample_tiles([], manifest)
    broken = tmp_path / "broken_sat.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="broken_sat.png"):
        sample_tiles([broken], manifest)
    with pytest.raises(InputError):
        TileOptions(count=0)
    bundle = copy_bundle(small_bundle, tmp_path / "bundle")
    with pytest.raises(InputError, match="not found"):
        calibrate_bundle(bundle, [tmp_path / "missing.png"], SMALL_TILES)
    (bundle / read_manifest(bundle).graph("local").file).unlink()
    with pytest.raises(BundleError, match="missing"):
        calibrate_bundle(bundle, scene_files, SMALL_TILES)
    with pytest.raises(BundleError, match="manifest.json"):
        calibrate_bundle(tmp_path, scene_files, SMALL_TILES)


def test_readers_feed_each_graph_what_the_runtime_would(scene_files, small_bundle, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader

    bundle = copy_bundle(small_bundle, tmp_path / "bundle")
    calibrate_bundle(bundle, scene_files, SMALL_TILES)
    manifest = read_manifest(bundle)
    entry = manifest.calibration["tiles"]
    assert entry["file"] == "calibration/tiles.npz" and len(entry["sha256"]) == 64
    assert [s["sha256"] for s in entry["sources"]] and all(s["mask_sha256"] for s in entry["sources"])
    tiles = bundle_tiles(bundle, manifest)
    feeds = TileFeeds(tiles, manifest, CALIBRATION, fp32_sessions(bundle, manifest), batch_size=5)
    p, d = manifest.patch.size, manifest.graph("local").output("local_features").shape[1]
    for role in ("global", "local", "fusion"):
        data_reader = reader(feeds, role)
        assert isinstance(data_reader, CalibrationDataReader)
        batches = list(iter(data_reader.get_next, None))
        assert len(batches) == feeds.count(role) > 0
        assert data_reader.get_next() is None
        data_reader.rewind()
        assert data_reader.get_next().keys() == batches[0].keys()
        first = batches[0]
        if role == "global":
            assert first["image"].shape[:2] == (1, 3) and first["image"].dtype == np.float32
        elif role == "local":
            assert first["patches"].shape[1:] == (3, p, p) and first["patches"].shape[0] <= 5
        else:
            b = first["boxes"].shape[0]
            assert first["local_features"].shape[:2] == (b, d)
            assert first["global_features"].shape[0] == 1
            assert np.all(first["boxes"][:, 2] - first["boxes"][:, 0] == p)
    assert sum(len(i) for _, i in feeds.batches) == SMALL_TILES.count
    assert all(len(set(tiles.patches[i, 0])) == 1 for _, i in feeds.batches)  # a batch never mixes scenes
    limited = FeedReader(lambda: feeds.feeds("local"), limit=1)
    assert limited.get_next() is not None and limited.get_next() is None
    assert ConfusionMatrix(7).update(tiles.labels[0], tiles.labels[0]).scores().overall_accuracy == 1.0


def test_calibrate_command(scene_files, small_bundle, tmp_path):
    from export.cli import app

    bundle = copy_bundle(small_bundle, tmp_path / "bundle")
    runner = CliRunner()
    result = runner.invoke(app, ["calibrate", str(bundle), *map(str, scene_files), "--count", "12", "--holdout", "4", "--scene-size", "256"])
    assert result.exit_code == 0, result.output
    assert "12 calibration and 4 held-back patches" in result.output
    assert read_manifest(bundle).calibration["tiles"]["counts"]["calibration_patches"] == 12
    no_images = runner.invoke(app, ["calibrate", str(bundle)])
    assert isinstance(no_images.exception, InputError) and "--data DIR --layout" in str(no_images.exception)


def test_calibrate_from_a_dataset_layout(small_bundle, tmp_path):
    from export.cli import app
    from glsnet.data.synthetic import write_synthetic_folder
    from tests.glsnet.test_datasets_mmseg import write_mmseg_folder

    bundle = copy_bundle(small_bundle, tmp_path / "bundle")
    folder = tmp_path / "deepglobe"
    write_synthetic_folder(folder, 3, 256, 256, seed=1)
    runner = CliRunner()
    args = ["calibrate", str(bundle), "--data", str(folder), "--layout", "deepglobe", "--count", "12", "--holdout", "4",
            "--scene-size", "256", "--max-scenes", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    info = read_manifest(bundle).calibration["tiles"]
    assert info["counts"]["calibration_patches"] == 12 and len(info["sources"]) == 2
    assert all(Path(s["file"]).parent == folder and Path(s["file"]).name.endswith("_sat.png") for s in info["sources"])
    tiles = bundle_tiles(bundle, read_manifest(bundle))
    assert tiles.has_labels  # the layout's labels came along
    vaihingen = write_mmseg_folder(tmp_path / "vaihingen", 6)
    mismatch = runner.invoke(app, ["calibrate", str(bundle), "--data", str(vaihingen), "--layout", "mmseg-vaihingen"])
    assert isinstance(mismatch.exception, InputError) and "mmseg-vaihingen folder is labelled" in str(mismatch.exception)
