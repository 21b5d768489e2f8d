"""The recipe options, each on tiny synthetic data: it changes what it should and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from glsnet.data.loader import StepSamples
from glsnet.data.samples import make_sample
from glsnet.data.synthetic import SyntheticScenes
from glsnet.device.precision import Amp
from glsnet.losses import AuxMode, GLSNetLoss
from glsnet.model import build_glsnet
from glsnet.recipe.augmentation import flip_rot90
from glsnet.recipe.schedule import Schedule, lr_factor
from glsnet.recipe.stages import Stage, Stages, enter_stage, stage_of, trained_modules
from glsnet.training import (
    ALL_PATCHES,
    PAPER_RECIPE,
    _forward_backward,
    _optimizer,
    train,
)
from tests.glsnet.test_training import TINY, tiny_options

CPU = torch.device("cpu")


def sample_of_four_patches(count: int = ALL_PATCHES):
    """A 160 px crop: a 2 x 2 grid of 128 px patches, every pixel labelled."""
    image, labels = SyntheticScenes(1, 192, 192, seed=0).read(0)
    return make_sample(image, labels, TINY, 160, count, np.random.default_rng(0))


def test_epochs_set_the_number_of_steps(tmp_path: Path):
    result = train(tiny_options(tmp_path / "m.safetensors", steps=None, epochs=2, synthetic_count=2, crop_size=128, batch_size=1))
    assert result.final_step == 4 and len(result.losses) == 4


def test_poly_schedule_lowers_the_rate_from_the_second_step_only(tmp_path: Path):
    assert lr_factor(Schedule.POLY, 0, 0, 4) == 1.0
    assert lr_factor(Schedule.POLY, 3, 0, 4) == pytest.approx(0.25**0.9)
    assert lr_factor(Schedule.CONSTANT, 3, 0, 4) == 1.0
    common = dict(steps=3, synthetic_count=2, crop_size=128, batch_size=1)
    constant = train(tiny_options(tmp_path / "c.safetensors", **common)).losses
    poly = train(tiny_options(tmp_path / "p.safetensors", schedule=Schedule.POLY, **common)).losses
    assert poly[0] == constant[0] and poly[1] == constant[1]  # step 0 at the full rate, so step 1 sees the same weights
    assert poly[2]["total"] != constant[2]["total"]  # step 1 ran at (2/3)^0.9 of the rate


def test_weight_decay_reaches_adam(tmp_path: Path):
    model = build_glsnet(TINY)
    assert all(g["weight_decay"] == 5e-4 for g in _optimizer(model, tiny_options(tmp_path / "m", weight_decay=5e-4)).param_groups)
    assert all(g["weight_decay"] == 0 for g in _optimizer(model, tiny_options(tmp_path / "m")).param_groups)


def test_flip_rot90_moves_pixels_and_labels_together_exactly():
    image, labels = SyntheticScenes(1, 96, 64, seed=0).read(0)
    seen = set()
    for seed in range(12):
        out_image, out_labels = flip_rot90(image, labels, np.random.default_rng(seed))
        key = out_image.tobytes()
        seen.add(key)
        # every output is one of the 8 flips/rotations, applied identically to both
        candidates = [(np.rot90(f(image), k), np.rot90(f(labels), k)) for f in (lambda a: a, lambda a: a[:, ::-1]) for k in range(4)]
        assert any(np.array_equal(out_image, ci) and np.array_equal(out_labels, cl) for ci, cl in candidates)
    assert len(seen) >= 3  # several different transforms were drawn


def test_augmentation_changes_the_samples_seeded_by_step():
    scenes = SyntheticScenes(1, 192, 192, seed=0)
    plain = StepSamples(scenes, [0], TINY, lambda shape: 192, 4, seed=0, start=0, total=8)
    augmented = StepSamples(scenes, [0], TINY, lambda shape: 192, 4, seed=0, start=0, total=8, augment=flip_rot90)
    differing = sum(not torch.equal(plain[i].sample.crop_labels, augmented[i].sample.crop_labels) for i in range(8))
    assert differing >= 2
    assert torch.equal(augmented[3].sample.image, augmented[3].sample.image)  # same step, same sample


def test_all_patches_accumulate_to_the_one_batch_gradient():
    sample = sample_of_four_patches()
    assert sample.patches.shape[0] == 4  # every patch of the 2 x 2 grid
    grads = []
    for batch_size in (4, 2, 1):
        torch.manual_seed(0)
        model = build_glsnet(TINY).eval()  # eval: batch norm by running statistics, the same for any chunking
        criterion = GLSNetLoss(aux_weight=0.15)
        options = tiny_options(Path("unused"), batch_size=batch_size, all_patches=True)
        parts = _forward_backward(model, criterion, sample, options, Amp.OFF, CPU, None, Stage.JOINT)
        grads.append((parts, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    (one, g1), (two, g2), (four, g4) = grads
    assert two["total"] == pytest.approx(one["total"], rel=1e-5) and four["total"] == pytest.approx(one["total"], rel=1e-5)
    assert torch.allclose(g2, g1, rtol=1e-4, atol=1e-7) and torch.allclose(g4, g1, rtol=1e-4, atol=1e-7)


def test_staged_training_splits_the_steps_in_thirds():
    assert [stage_of(s, 6, Stages.GLNET)[0] for s in range(6)] == [Stage.GLOBAL] * 2 + [Stage.LOCAL] * 2 + [Stage.FUSION] * 2
    assert stage_of(4, 6, Stages.GLNET)[1:] == (4, 6)
    assert stage_of(5, 6, Stages.JOINT) == (Stage.JOINT, 0, 6)


@pytest.mark.parametrize("stage", [Stage.GLOBAL, Stage.LOCAL, Stage.FUSION])
def test_a_stage_updates_only_its_parts(stage: Stage, tmp_path: Path):
    sample = sample_of_four_patches(2)
    torch.manual_seed(0)
    model = build_glsnet(TINY).train()
    options = tiny_options(tmp_path / "m", batch_size=2)
    optimizer = _optimizer(model, options)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    enter_stage(model, stage)
    _forward_backward(model, GLSNetLoss(), sample, options, Amp.OFF, CPU, None, stage)
    optimizer.step()
    trained = {id(p) for m in trained_modules(model, stage) for p in m.parameters()}
    for name, parameter in model.named_parameters():
        changed = not torch.equal(before[name], parameter.detach())
        assert changed == (id(parameter) in trained), (stage, name)
    frozen_bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and not any(m is x for t in trained_modules(model, stage) for x in t.modules())]
    assert frozen_bn and all(not m.training for m in frozen_bn)


def test_glnet_aux_mode_weighs_aux_losses_1_and_the_regulariser_015():
    sample = sample_of_four_patches(2)
    torch.manual_seed(0)
    model = build_glsnet(TINY)
    output = model(sample.image, sample.patches, sample.boxes)
    implemented = GLSNetLoss(aux_weight=0.15)(output, sample.patch_labels, sample.crop_labels)
    glnet = GLSNetLoss(aux_weight=0.15, aux_mode=AuxMode.GLNET, model=model)(output, sample.patch_labels, sample.crop_labels)
    f, g = implemented.as_floats(), glnet.as_floats()
    assert "fmreg" not in f and g["fmreg"] > 0
    assert g["main"] == f["main"]
    assert f["total"] == pytest.approx(f["main"] + 0.15 * (f["global_aux"] + f["local_aux"]))
    assert g["total"] == pytest.approx(g["main"] + g["global_aux"] + g["local_aux"] + 0.15 * g["fmreg"])
    glnet.total.backward()
    assert model.global_branch.neck[0].weight.grad.abs().sum() > 0  # the regulariser pulls on both branches


def test_paper_preset_sets_glnets_recipe(tmp_path: Path, monkeypatch, capsys):
    import glsnet.training
    from tests.glsnet.test_train_cli import run_cli

    seen = []
    monkeypatch.setattr(glsnet.training, "train", lambda options: seen.append(options) or pytest.skip("captured"))
    with pytest.raises(pytest.skip.Exception):
        run_cli(monkeypatch, capsys, "train", "--synthetic", "--preset", "paper", "--no-pretrained", "-o", tmp_path / "m")
    options = seen[0]
    assert {name: getattr(options, name) for name in PAPER_RECIPE} == PAPER_RECIPE
    assert options.stages is Stages.JOINT and options.aux_mode is AuxMode.IMPLEMENTED
    seen.clear()
    with pytest.raises(pytest.skip.Exception):
        run_cli(monkeypatch, capsys, "train", "--synthetic", "--preset", "paper", "--no-pretrained", "--no-augment",
                "--schedule", "constant", "--patches", "batch", "--aux-mode", "glnet", "-o", tmp_path / "m")
    assert (seen[0].augment, seen[0].schedule, seen[0].all_patches, seen[0].aux_mode) == (False, Schedule.CONSTANT, False, AuxMode.GLNET)


def test_weight_decay_changes_the_second_step_only(tmp_path: Path):
    common = dict(steps=2, synthetic_count=2, crop_size=128, batch_size=1)
    plain = train(tiny_options(tmp_path / "a.safetensors", **common)).losses
    decayed = train(tiny_options(tmp_path / "b.safetensors", weight_decay=0.1, **common)).losses
    assert decayed[0] == plain[0] and decayed[1]["total"] != plain[1]["total"]


def test_a_resumed_run_keeps_its_recipe(tmp_path: Path, monkeypatch, capsys):
    import glsnet.training
    from tests.glsnet.test_train_cli import run_cli

    common = ("--synthetic", "--synthetic-count", "2", "--synthetic-size", "160x160", "--batch-size", "2", "--preset", "small",
              "--val-fraction", "0", "--no-progress", "--device", "cpu")
    code, _, err = run_cli(monkeypatch, capsys, "train", *common, "--steps", "1", "--schedule", "poly", "--weight-decay", "0.001",
                           "--augment", "--aux-mode", "glnet", "-o", tmp_path / "m.safetensors")
    assert code == 0, err
    seen = []
    monkeypatch.setattr(glsnet.training, "train", lambda options: seen.append(options) or pytest.skip("captured"))
    with pytest.raises(pytest.skip.Exception):
        run_cli(monkeypatch, capsys, "train", "--synthetic", "--steps", "2", "--resume", tmp_path / "m.safetensors", "-o", tmp_path / "m.safetensors")
    options = seen[0]
    assert (options.schedule, options.weight_decay, options.augment, options.aux_mode) == (Schedule.POLY, 0.001, True, AuxMode.GLNET)


def test_split_command_has_help(monkeypatch, capsys):
    from tests.glsnet.test_train_cli import run_cli

    code, out, _ = run_cli(monkeypatch, capsys, "split", "--help")
    assert code == 0 and "default_rng" in out and "--scale" in out
