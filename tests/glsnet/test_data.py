"""Datasets: palette decoding, DeepGlobe and Vaihingen folders (and their errors), synthetic scenes, samples."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glsnet.config import DEEPGLOBE_PALETTE, SMALL
from glsnet.data.datasets import DATASETS
from glsnet.data.deepglobe import deepglobe_scenes
from glsnet.data.layouts import Layout, open_scenes
from glsnet.data.palette import colorize, decode_mask
from glsnet.data.samples import make_sample
from glsnet.data.synthetic import SyntheticScenes, synthetic_scene, write_synthetic_folder
from glsnet.data.vaihingen import VAIHINGEN_PALETTE, vaihingen_scenes
from runtime.algorithm.patch_grid import make_grid
from runtime.errors import InputError

VAIHINGEN = DATASETS["vaihingen"].config()

# ---------------------------------------------------------------- palette


def test_deepglobe_colours_decode_to_their_class_indices():
    rgb = np.array([DEEPGLOBE_PALETTE], dtype=np.uint8)  # [1, 7, 3]
    np.testing.assert_array_equal(decode_mask(rgb, DEEPGLOBE_PALETTE), [list(range(7))])


def test_noisy_channel_values_are_thresholded_at_128():
    # (130, 120, 250) -> (255, 0, 255) rangeland; (127, 128, 128) -> (0, 255, 255) urban; (2, 253, 1) -> forest
    rgb = np.array([[[130, 120, 250], [127, 128, 128], [2, 253, 1], [129, 140, 200], [100, 0, 127]]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_mask(rgb, DEEPGLOBE_PALETTE), [[3, 1, 4, 6, 0]])


def test_a_colour_outside_the_palette_is_an_error_naming_file_colour_and_count():
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[0, :3] = (250, 10, 10)  # red is not a DeepGlobe colour
    with pytest.raises(InputError, match=r"x_mask\.png.*\(255, 0, 0\) x 3 px"):
        decode_mask(rgb, DEEPGLOBE_PALETTE, source="x_mask.png")


def test_colorize_inverts_decode_for_both_palettes():
    labels = np.arange(7, dtype=np.uint8).reshape(1, 7)
    np.testing.assert_array_equal(decode_mask(colorize(labels, DEEPGLOBE_PALETTE), DEEPGLOBE_PALETTE), labels)
    labels = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(decode_mask(colorize(labels, VAIHINGEN_PALETTE), VAIHINGEN_PALETTE), labels)


def test_vaihingen_palette_and_config():
    assert VAIHINGEN.num_classes == 6
    assert VAIHINGEN.classes[1] == "building" and VAIHINGEN.palette[1] == (0, 0, 255)
    assert VAIHINGEN.palette[4] == (255, 255, 0)  # car
    with pytest.raises(InputError, match=r"\(0, 0, 0\) x 1 px"):
        decode_mask(np.zeros((1, 1, 3), dtype=np.uint8), VAIHINGEN_PALETTE, source="gts/a.tif")


# ---------------------------------------------------------------- DeepGlobe folders


def write_pair(folder: Path, name: str, labels: np.ndarray, image_size: tuple[int, int] | None = None) -> None:
    height, width = image_size or labels.shape
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / f"{name}_sat.jpg", quality=95)
    Image.fromarray(colorize(labels, DEEPGLOBE_PALETTE)).save(folder / f"{name}_mask.png")


@pytest.fixture()
def small_deepglobe(tmp_path: Path) -> Path:
    labels = np.random.default_rng(1).integers(0, 7, (40, 60)).astype(np.uint8)
    write_pair(tmp_path, "b", labels)
    write_pair(tmp_path, "a", labels[::-1].copy())
    return tmp_path


def test_deepglobe_folder_reads_pairs_sorted_by_id(small_deepglobe: Path):
    scenes = deepglobe_scenes(small_deepglobe)
    assert scenes.names == ("a", "b")
    image, labels = scenes.read(1)
    assert image.shape == (40, 60, 3) and image.dtype == np.uint8
    expected = np.random.default_rng(1).integers(0, 7, (40, 60))
    np.testing.assert_array_equal(labels, expected)


def test_missing_folder_is_an_error_naming_it(tmp_path: Path):
    with pytest.raises(InputError, match=r"nowhere.*not found"):
        deepglobe_scenes(tmp_path / "nowhere")


def test_empty_folder_is_an_error(tmp_path: Path):
    with pytest.raises(InputError, match=r"no DeepGlobe images"):
        deepglobe_scenes(tmp_path)


def test_image_without_mask_is_an_error_naming_the_image(small_deepglobe: Path):
    (small_deepglobe / "a_mask.png").unlink()
    with pytest.raises(InputError, match=r"a_sat\.jpg: image without a mask; expected a_mask\.png"):
        deepglobe_scenes(small_deepglobe)


def test_mask_with_colours_outside_the_palette_is_an_error_naming_the_mask(small_deepglobe: Path):
    mask = np.array(Image.open(small_deepglobe / "b_mask.png"))
    mask[5:7, 5:10] = (255, 0, 0)
    Image.fromarray(mask).save(small_deepglobe / "b_mask.png")
    scenes = deepglobe_scenes(small_deepglobe)
    with pytest.raises(InputError, match=r"b_mask\.png.*\(255, 0, 0\) x 10 px"):
        scenes.read(1)


def test_image_and_mask_of_different_sizes_is_an_error_naming_the_image(tmp_path: Path):
    write_pair(tmp_path, "c", np.ones((40, 60), dtype=np.uint8), image_size=(40, 61))
    with pytest.raises(InputError, match=r"c_sat\.jpg: image is 61 x 40 px but its mask .*c_mask\.png is 60 x 40 px"):
        deepglobe_scenes(tmp_path)


def test_layout_refuses_a_model_of_other_classes(small_deepglobe: Path):
    with pytest.raises(InputError, match="deepglobe folder is labelled"):
        open_scenes(Layout.DEEPGLOBE, small_deepglobe, VAIHINGEN)
    assert open_scenes(Layout.DEEPGLOBE, small_deepglobe, SMALL).names == ("a", "b")


@pytest.mark.integration
def test_real_deepglobe_masks_decode_to_class_indices(deepglobe_dir: Path):
    scenes = deepglobe_scenes(deepglobe_dir)
    assert len(scenes.names) >= 2
    mask_path = scenes.pairs[0].mask
    rgb = np.array(Image.open(mask_path).convert("RGB"))
    image, labels = scenes.read(0)
    assert image.shape == (2448, 2448, 3) and labels.shape == (2448, 2448)
    assert labels.max() <= 6
    np.testing.assert_array_equal(colorize(labels, DEEPGLOBE_PALETTE), np.where(rgb >= 128, 255, 0))


# ---------------------------------------------------------------- Vaihingen folders


def write_tile(root: Path, name: str, labels: np.ndarray, image_size: tuple[int, int] | None = None) -> None:
    import tifffile

    (root / "top").mkdir(exist_ok=True)
    (root / "gts").mkdir(exist_ok=True)
    height, width = image_size or labels.shape
    tifffile.imwrite(root / "top" / name, np.full((height, width, 3), 90, dtype=np.uint8))
    tifffile.imwrite(root / "gts" / name, colorize(labels, VAIHINGEN_PALETTE))


def test_vaihingen_folder_matches_tiles_by_name(tmp_path: Path):
    labels = np.random.default_rng(2).integers(0, 6, (30, 20)).astype(np.uint8)
    write_tile(tmp_path, "top_mosaic_09cm_area3.tif", labels)
    write_tile(tmp_path, "top_mosaic_09cm_area1.tif", labels)
    scenes = open_scenes(Layout.VAIHINGEN, tmp_path, VAIHINGEN)
    assert scenes.names == ("top_mosaic_09cm_area1", "top_mosaic_09cm_area3")
    image, decoded = scenes.read(0)
    assert image.shape == (30, 20, 3)
    np.testing.assert_array_equal(decoded, labels)


def test_vaihingen_errors_name_the_file(tmp_path: Path):
    with pytest.raises(InputError, match=r"top.*not found"):
        vaihingen_scenes(tmp_path)
    labels = np.zeros((8, 8), dtype=np.uint8)
    write_tile(tmp_path, "t1.tif", labels)
    (tmp_path / "gts" / "t1.tif").unlink()
    with pytest.raises(InputError, match=r"t1\.tif: image without a label tile"):
        vaihingen_scenes(tmp_path)
    write_tile(tmp_path, "t1.tif", labels, image_size=(8, 9))
    with pytest.raises(InputError, match=r"t1\.tif: image is 9 x 8 px"):
        vaihingen_scenes(tmp_path)


# ---------------------------------------------------------------- synthetic scenes


def test_synthetic_scenes_are_deterministic_under_a_seed():
    image_a, labels_a = synthetic_scene(300, 500, seed=11)
    image_b, labels_b = synthetic_scene(300, 500, seed=11)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    image_c, _ = synthetic_scene(300, 500, seed=12)
    assert not np.array_equal(image_a, image_c)


def test_synthetic_scene_types_and_classes():
    image, labels = synthetic_scene(1024, 1024, seed=3)
    assert image.shape == (1024, 1024, 3) and image.dtype == np.uint8
    assert labels.shape == (1024, 1024) and labels.dtype == np.uint8
    present = set(np.unique(labels).tolist())
    assert present <= set(range(1, 7))
    assert len(present) >= 3
    image, labels = synthetic_scene(3, 5, seed=0)
    assert image.shape == (3, 5, 3) and labels.shape == (3, 5)


@pytest.mark.slow
def test_synthetic_scene_scales_to_9792_by_2448():
    start = time.perf_counter()
    image, labels = synthetic_scene(9792, 2448, seed=4)
    seconds = time.perf_counter() - start
    assert image.shape == (9792, 2448, 3) and labels.shape == (9792, 2448)
    print(f"9792 x 2448 synthetic scene: {seconds:.1f} s")
    assert len(np.unique(labels)) >= 4


def test_synthetic_folder_round_trips_through_the_deepglobe_reader(tmp_path: Path):
    write_synthetic_folder(tmp_path, count=2, height=64, width=96, seed=5)
    scenes = deepglobe_scenes(tmp_path)
    assert scenes.names == SyntheticScenes(2, 64, 96, 5).names
    image, labels = scenes.read(1)
    expected_image, expected_labels = SyntheticScenes(2, 64, 96, 5).read(1)
    np.testing.assert_array_equal(image, expected_image)  # PNG: lossless
    np.testing.assert_array_equal(labels, expected_labels)


def test_synthetic_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, glsnet.data.synthetic; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- training samples


def test_sample_crop_patches_boxes_and_labels_agree():
    image, labels = synthetic_scene(400, 300, seed=6)
    sample = make_sample(image, labels, SMALL, crop_size=256, patches_per_step=3, rng=np.random.default_rng(0))
    p = SMALL.patch_size
    grid = make_grid(256, 256, p, SMALL.min_overlap)
    assert sample.image.shape == (1, 3, 256, 256)
    assert sample.patches.shape == (3, 3, p, p) and sample.patch_labels.shape == (3, p, p)
    assert sample.boxes.shape == (3, 4)
    for patch, box, patch_labels in zip(sample.patches, sample.boxes, sample.patch_labels):
        x1, y1, x2, y2 = (int(v) for v in box)
        assert (x2 - x1, y2 - y1) == (p, p)
        assert (y1, x1) in grid.origins()
        np.testing.assert_array_equal(patch.numpy(), sample.image[0, :, y1:y2, x1:x2].numpy())
        np.testing.assert_array_equal(patch_labels.numpy(), sample.crop_labels[y1:y2, x1:x2].numpy())
    assert float(sample.image.mean().abs()) < 3.0  # normalised, not raw 0..255


def test_sample_of_a_scene_smaller_than_a_patch_is_padded_with_ignore():
    image, labels = synthetic_scene(100, 90, seed=7)
    sample = make_sample(image, labels, SMALL, crop_size=256, patches_per_step=6, rng=np.random.default_rng(0))
    assert sample.patches.shape[0] == 1  # one patch only
    assert sample.image.shape == (1, 3, 128, 128)
    assert (sample.crop_labels[100:, :] == SMALL.ignore_index).all()
    assert (sample.crop_labels[:, 90:] == SMALL.ignore_index).all()
    np.testing.assert_array_equal(sample.crop_labels[:100, :90].numpy(), labels)
    assert float(sample.image[0, :, 100:, :].abs().max()) == 0.0
