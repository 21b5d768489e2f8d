"""Training: the loss goes down on a fixed real batch, resume continues exactly, checkpoints are checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from glsnet.checkpoint import load_model, save_checkpoint
from glsnet.config import SMALL
from glsnet.data.datasets import DATASETS
from glsnet.data.deepglobe import deepglobe_scenes
from glsnet.data.layouts import Layout
from glsnet.data.samples import make_sample
from glsnet.losses import GLSNetLoss
from glsnet.model import build_glsnet
from glsnet.training import TrainOptions, preset_config, scene_for_step, split_scenes, train
from runtime.errors import CheckpointError, InputError

# Small enough for a few CPU steps in a test: R18 on both branches, 128 px patches.
TINY = SMALL.replace(local_backbone="resnet18")


def tiny_options(out: Path, **changes) -> TrainOptions:
    values = dict(
        out=out, config=TINY, steps=4, batch_size=2, crop_size=160, synthetic_count=3, synthetic_size=(192, 192),
        val_fraction=0.0, val_every=100, progress=False,
    )
    values.update(changes)
    return TrainOptions(**values)


def diverse_sample(folder: Path, crop: int):
    """A fixed crop of a real scene whose patches hold at least three classes."""
    scenes = deepglobe_scenes(folder)
    for index in range(len(scenes.names)):
        image, labels = scenes.read(index)
        for seed in range(20):
            sample = make_sample(image, labels, SMALL, crop, 6, np.random.default_rng(seed))
            counts = np.bincount(sample.patch_labels.numpy().ravel(), minlength=7)
            if (counts / counts.sum() > 0.05).sum() >= 3:
                return sample
    pytest.skip(f"{folder}: no crop with three classes found")


@pytest.mark.integration
@pytest.mark.slow
def test_a_few_steps_on_a_fixed_real_batch_lower_the_loss(deepglobe_dir: Path):
    sample = diverse_sample(deepglobe_dir, crop=256)
    torch.manual_seed(0)
    model = build_glsnet(SMALL).train()
    optimizer = torch.optim.Adam(model.parameter_groups(1e-4, 2e-5))  # the paper's learning rates
    criterion = GLSNetLoss()
    losses = []
    for _ in range(12):
        loss = criterion(model(sample.image, sample.patches, sample.boxes), sample.patch_labels, sample.crop_labels)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
        losses.append(float(loss.total.detach()))
    print(f"overfit check: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps")
    assert losses[-1] < 0.8 * losses[0]


def test_training_writes_a_checkpoint_with_its_step_and_config(tmp_path: Path):
    result = train(tiny_options(tmp_path / "m.safetensors", steps=2))
    assert (result.start_step, result.final_step) == (0, 2) and len(result.losses) == 2
    assert all(np.isfinite(list(step.values())).all() for step in result.losses)
    model, info = load_model(tmp_path / "m.safetensors", expected=TINY)
    assert info["step"] == 2
    assert info["extra"]["train"]["seed"] == 0
    assert (tmp_path / "m.optim.safetensors").is_file()


def test_resume_continues_from_the_saved_step_exactly_as_an_uninterrupted_run(tmp_path: Path):
    straight = train(tiny_options(tmp_path / "straight.safetensors", steps=4))
    first = train(tiny_options(tmp_path / "part.safetensors", steps=2))
    resumed = train(tiny_options(tmp_path / "resumed.safetensors", steps=4, resume=tmp_path / "part.safetensors"))
    assert (resumed.start_step, resumed.final_step) == (2, 4)
    assert len(resumed.losses) == 2
    np.testing.assert_allclose(
        [s["total"] for s in first.losses + resumed.losses], [s["total"] for s in straight.losses], rtol=1e-5
    )
    a, info_a = load_model(tmp_path / "straight.safetensors")
    b, info_b = load_model(tmp_path / "resumed.safetensors")
    assert info_a["step"] == info_b["step"] == 4
    for (name, tensor_a), tensor_b in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(tensor_a, tensor_b, rtol=1e-4, atol=1e-6, msg=name)


def test_validation_scores_held_out_scenes(tmp_path: Path):
    result = train(tiny_options(tmp_path / "v.safetensors", steps=2, val_fraction=0.34, val_crop=128))
    assert len(result.val_names) == 1 and result.val_names[0] not in result.train_names
    step, scores = result.validation[-1]
    assert step == 2 and 0.0 <= scores.overall_accuracy <= 1.0
    assert 0 not in scores.classes_in_mean  # DeepGlobe's "unknown" stays out of the means
    _, info = load_model(tmp_path / "v.safetensors")
    assert info["extra"]["validation"]["overall_accuracy"] == pytest.approx(scores.overall_accuracy)


def test_epochs_visit_every_training_scene_once():
    train_indices = [0, 2, 3, 5]
    for epoch in range(3):
        visited = [scene_for_step(epoch * 4 + i, train_indices, seed=7) for i in range(4)]
        assert sorted(visited) == train_indices


def test_split_by_names_and_by_fraction(tmp_path: Path):
    names = ("a", "b", "c", "d", "e")
    train_idx, val_idx = split_scenes(names, tiny_options(tmp_path / "x", val_names=("b", "e")))
    assert (train_idx, val_idx) == ([0, 2, 3], [1, 4])
    train_idx, val_idx = split_scenes(names, tiny_options(tmp_path / "x", val_fraction=0.4))
    assert len(val_idx) == 2 and sorted(train_idx + val_idx) == list(range(5))
    assert split_scenes(("only",), tiny_options(tmp_path / "x", val_fraction=0.5)) == ([0], [])
    with pytest.raises(InputError, match="not in the data"):
        split_scenes(names, tiny_options(tmp_path / "x", val_names=("zzz",)))


def test_preset_config_variants_and_layouts():
    assert preset_config("small") == SMALL
    assert preset_config("small", "deep-deep").global_backbone == "resnet50"
    assert preset_config("default", None, Layout.VAIHINGEN).num_classes == 6
    with pytest.raises(InputError, match="unknown preset"):
        preset_config("huge")


def test_bad_options_are_input_errors(tmp_path: Path):
    with pytest.raises(InputError, match="steps=0"):
        tiny_options(tmp_path / "x", steps=0)
    with pytest.raises(InputError, match="not found"):
        train(tiny_options(tmp_path / "x", data=tmp_path / "missing"))


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path: Path, small_model):
    path = save_checkpoint(tmp_path / "small.safetensors", small_model, step=3)
    with pytest.raises(CheckpointError, match=r"small\.safetensors: a checkpoint of another configuration.*classes"):
        load_model(path, expected=DATASETS["vaihingen"].config(SMALL))
    with pytest.raises(CheckpointError, match="another configuration"):
        train(tiny_options(tmp_path / "y.safetensors", resume=path))


def test_a_file_that_is_not_a_checkpoint_is_refused_naming_it(tmp_path: Path):
    from safetensors.torch import save_file

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.safetensors: not a safetensors file"):
        load_model(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match=r"foreign\.safetensors: a safetensors file but not a GLSNet checkpoint"):
        load_model(foreign)
    with pytest.raises(CheckpointError, match=r"absent\.safetensors: checkpoint file not found"):
        load_model(tmp_path / "absent.safetensors")


def test_training_on_a_vaihingen_folder_uses_its_six_classes(tmp_path: Path):
    import tifffile

    from glsnet.data.palette import colorize
    from glsnet.data.synthetic import synthetic_scene
    from glsnet.data.vaihingen import VAIHINGEN_PALETTE

    for name in ("area1.tif", "area2.tif"):
        (tmp_path / "top").mkdir(exist_ok=True)
        (tmp_path / "gts").mkdir(exist_ok=True)
        image, labels = synthetic_scene(160, 160, seed=len(name))
        tifffile.imwrite(tmp_path / "top" / name, image)
        tifffile.imwrite(tmp_path / "gts" / name, colorize(labels % 6, VAIHINGEN_PALETTE))
    config = DATASETS["vaihingen"].config(TINY)
    result = train(tiny_options(tmp_path / "v.safetensors", data=tmp_path, layout=Layout.VAIHINGEN, config=config,
                                steps=1, val_fraction=0.5, val_crop=None))
    assert result.val_names == ("area1",) or result.val_names == ("area2",)
    step, scores = result.validation[-1]
    assert len(scores.iou) == 6
    # Vaihingen's means leave clutter (class 5) out, as the paper's Table 2 does
    assert scores.excluded == (5,)
    assert scores.classes_in_mean == tuple(i for i in range(5) if not np.isnan(scores.iou[i]))
    model, _ = load_model(tmp_path / "v.safetensors", expected=config)
    assert model.config.classes[4] == "car"
    with pytest.raises(InputError, match="vaihingen folder is labelled"):
        train(tiny_options(tmp_path / "w.safetensors", data=tmp_path, layout=Layout.VAIHINGEN, steps=1))
