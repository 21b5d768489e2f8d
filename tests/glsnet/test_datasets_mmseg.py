"""mmsegmentation converter folders (ISPRS Vaihingen, Potsdam, LoveDA), band selection, and the papers' class subsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glsnet.config import SMALL, with_bands
from glsnet.data.datasets import DATASETS, LOVEDA_CLASSES, mean_exclusions, parse_class_names
from glsnet.data.layouts import Layout, open_scenes
from runtime.accuracy.metrics import ConfusionMatrix, default_mean_exclusions
from runtime.errors import InputError


def write_mmseg_folder(root: Path, num_classes: int, bands: int = 3, size: int = 64, per_split: int = 2, seed: int = 0) -> Path:
    """img_dir/{train,val}/*.png (or 4-band .tif) + ann_dir/{train,val}/*.png, labels 0 (no label) .. num_classes."""
    import tifffile

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        (root / "img_dir" / split).mkdir(parents=True)
        (root / "ann_dir" / split).mkdir(parents=True)
        for i in range(per_split):
            name = f"area{i}_0_0_{size}_{size}"
            pixels = rng.integers(0, 256, size=(size, size, bands), dtype=np.uint8)
            if bands == 3:
                Image.fromarray(pixels).save(root / "img_dir" / split / f"{name}.png")
            else:
                tifffile.imwrite(root / "img_dir" / split / f"{name}.tif", pixels)
            values = rng.integers(0, num_classes + 1, size=(size, size), dtype=np.uint8)
            Image.fromarray(values).save(root / "ann_dir" / split / f"{name}.png")
    return root


@pytest.mark.parametrize("layout", [Layout.MMSEG_VAIHINGEN, Layout.MMSEG_POTSDAM, Layout.MMSEG_LOVEDA])
def test_mmseg_folders_read_class_index_labels_with_zero_as_no_label(tmp_path: Path, layout: Layout):
    dataset = layout.dataset
    root = write_mmseg_folder(tmp_path / layout.value, len(dataset.classes))
    scenes = open_scenes(layout, root, dataset.config(SMALL))
    assert scenes.names == ("train/area0_0_0_64_64", "train/area1_0_0_64_64", "val/area0_0_0_64_64", "val/area1_0_0_64_64")
    assert scenes.validation_names == ("val/area0_0_0_64_64", "val/area1_0_0_64_64")
    image, labels = scenes.read(2)
    raw = np.array(Image.open(root / "ann_dir" / "val" / "area0_0_0_64_64.png"))
    assert image.shape == (64, 64, 3) and labels.shape == (64, 64)
    np.testing.assert_array_equal(labels[raw == 0], 255)  # no label -> ignore
    np.testing.assert_array_equal(labels[raw > 0], raw[raw > 0] - 1)  # v -> class v - 1
    only_val = open_scenes(layout, root, dataset.config(SMALL), splits=("val",))
    assert only_val.names == scenes.validation_names


def test_dataset_class_lists_and_palettes():
    assert DATASETS["vaihingen"].classes == DATASETS["potsdam"].classes
    assert DATASETS["vaihingen"].classes[5] == "clutter" and DATASETS["vaihingen"].palette[1] == (0, 0, 255)
    assert DATASETS["loveda"].classes == LOVEDA_CLASSES and len(DATASETS["loveda"].palette) == 7
    assert DATASETS["loveda"].palette[4] == (159, 129, 183)  # barren, as mmsegmentation colours it


def test_mmseg_errors_name_the_file(tmp_path: Path):
    layout = Layout.MMSEG_VAIHINGEN
    config = layout.dataset.config(SMALL)
    root = write_mmseg_folder(tmp_path / "v", 6)
    bad = root / "ann_dir" / "train" / "area0_0_0_64_64.png"
    Image.fromarray(np.full((64, 64), 9, dtype=np.uint8)).save(bad)
    scenes = open_scenes(layout, root, config)
    with pytest.raises(InputError, match=r"area0_0_0_64_64\.png: label value\(s\) \[9\] exceed the 6 classes"):
        scenes.read(0)
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(bad)
    with pytest.raises(InputError, match="single-channel class-index PNG"):
        scenes.read(0)
    (root / "ann_dir" / "val" / "area1_0_0_64_64.png").unlink()
    with pytest.raises(InputError, match=r"area1_0_0_64_64\.png: image without a label"):
        open_scenes(layout, root, config)
    with pytest.raises(InputError, match="mmseg-loveda folder is labelled"):
        open_scenes(Layout.MMSEG_LOVEDA, root, config)


def test_four_band_tiles_go_through_band_selection(tmp_path: Path):
    from runtime.image_io.preprocess import normalize

    layout = Layout.MMSEG_POTSDAM
    root = write_mmseg_folder(tmp_path / "p", 6, bands=4)
    irrg = with_bands(layout.dataset.config(SMALL), (3, 0, 1))  # IRRG from RGBIR
    image, _ = open_scenes(layout, root, irrg).read(0)
    assert image.shape[2] == 4
    x = normalize(image, irrg.normalization)
    assert x.shape == (3, 64, 64)
    expected_first = (image[:, :, 3] / 255.0 - irrg.mean[0]) / irrg.std[0]
    np.testing.assert_allclose(x[0], expected_first, rtol=1e-5, atol=1e-5)
    four = with_bands(SMALL, (0, 1, 2, 3))
    assert four.in_channels == 4 and len(four.mean) == len(four.std) == 4
    with pytest.raises(InputError, match="band"):
        normalize(image, with_bands(SMALL, (0, 1, 5)).normalization)


def test_a_band_the_tiles_lack_is_an_error_naming_the_file(tmp_path: Path):
    from glsnet.training import TrainOptions, preset_config, train

    layout = Layout.MMSEG_POTSDAM
    root = write_mmseg_folder(tmp_path / "p", 6, size=128, per_split=1)  # RGB tiles
    irrg = with_bands(preset_config("small", None, layout).replace(local_backbone="resnet18"), (3, 0, 1))
    options = TrainOptions(out=tmp_path / "m.safetensors", data=root, layout=layout, config=irrg, steps=1, batch_size=1,
                           crop_size=128, progress=False)
    with pytest.raises(InputError, match=r"img_dir/train/area0_0_0_128_128\.png: .*3 band"):
        train(options)
    assert not options.out.exists()


def test_training_on_an_mmseg_folder_validates_on_its_val_split(tmp_path: Path):
    from glsnet.training import TrainOptions, preset_config, train

    layout = Layout.MMSEG_LOVEDA
    root = write_mmseg_folder(tmp_path / "l", 7, size=128, per_split=1)
    config = preset_config("small", None, layout).replace(local_backbone="resnet18")
    result = train(TrainOptions(out=tmp_path / "m.safetensors", data=root, layout=layout, config=config, steps=1,
                                batch_size=1, crop_size=128, val_crop=None, progress=False))
    assert result.train_names == ("train/area0_0_0_128_128",) and result.val_names == ("val/area0_0_0_128_128",)
    _, scores = result.validation[-1]
    assert len(scores.iou) == 7 and scores.excluded == ()  # LoveDA averages all seven classes


def test_the_papers_class_subsets_are_the_defaults_and_can_be_changed():
    vaihingen = DATASETS["vaihingen"].classes
    assert mean_exclusions(vaihingen) == (5,)  # clutter, GLSNet Table 2
    assert mean_exclusions(DATASETS["deepglobe"].classes) == (0,)  # unknown
    assert mean_exclusions(LOVEDA_CLASSES) == ()
    assert mean_exclusions(vaihingen, ("car", "clutter")) == (4, 5)
    assert mean_exclusions(vaihingen, parse_class_names("none")) == ()
    with pytest.raises(InputError, match="not among the model's classes"):
        mean_exclusions(vaihingen, ("unknown",))
    # the runtime's rule by class name (used where only a manifest's names are known) agrees with every dataset
    for dataset in DATASETS.values():
        assert default_mean_exclusions(dataset.classes) == mean_exclusions(dataset.classes)


def test_means_are_over_the_chosen_subset_and_say_so():
    target = np.array([0, 1, 2, 3, 4, 5, 5, 5])
    prediction = np.array([0, 1, 2, 3, 4, 0, 0, 0])  # clutter always wrong
    matrix = ConfusionMatrix(6).update(prediction, target)
    five = matrix.scores(exclude=(5,))
    six = matrix.scores()
    assert five.miou == pytest.approx(np.mean([0.25, 1, 1, 1, 1]))  # impervious: 1 TP, 3 FP
    assert six.miou == pytest.approx(np.mean([0.25, 1, 1, 1, 1, 0]))
    note = five.mean_note(DATASETS["vaihingen"].classes)
    assert note == "means over 5 classes: impervious, building, low_vegetation, tree, car; left out: clutter (excluded)"
    assert five.as_dict()["excluded_from_means"] == [5]
    no_car = ConfusionMatrix(6).update(np.array([0, 1, 2, 3, 5]), np.array([0, 1, 2, 3, 5])).scores(exclude=(5,))
    assert no_car.mean_note(DATASETS["vaihingen"].classes).endswith("left out: clutter (excluded), car (no pixels)")


def test_print_scores_shows_the_classes_of_the_means(capsys, monkeypatch):
    from glsnet.evaluation import print_scores

    monkeypatch.setenv("COLUMNS", "200")
    target = np.array([0, 1, 2, 3, 4, 5])
    scores = ConfusionMatrix(6).update(target, target).scores(exclude=(5,))
    print_scores(scores, DATASETS["vaihingen"].classes, title="t")
    out = " ".join(capsys.readouterr().out.split())
    assert "clutter (excluded from means)" in out and "means over 5 classes: impervious, building" in out
