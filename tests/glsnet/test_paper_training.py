"""The paper's training mode: the global branch on the whole image (or a budgeted window), the paper's settings."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from glsnet.config import SMALL
from glsnet.global_window import activation_bytes_per_pixel, global_window, saved_bytes
from glsnet.model import build_glsnet
from glsnet.training import PAPER_TRAINING, PRESET_MODES, TrainMode, TrainOptions, preset_config, train
from runtime.errors import InputError

TINY = SMALL.replace(local_backbone="resnet18")


def options(out: Path, **changes) -> TrainOptions:
    values = dict(out=out, config=TINY, steps=2, batch_size=2, synthetic_count=2, synthetic_size=(192, 256),
                  val_fraction=0.0, val_every=100, progress=False)
    values.update(changes)
    return TrainOptions(**values)


def global_inputs(monkeypatch) -> list[tuple[int, ...]]:
    """Record the shape of every training image, the global branch's input (``model(sample.image, ...)``)."""
    import glsnet.data.loader  # makes the samples since the prefetching loader (issue 21)

    shapes: list[tuple[int, ...]] = []
    original = glsnet.data.loader.make_sample

    def recording(*args, **kwargs):
        sample = original(*args, **kwargs)
        shapes.append(tuple(sample.image.shape))
        return sample

    monkeypatch.setattr(glsnet.data.loader, "make_sample", recording)
    return shapes


def test_full_mode_trains_the_global_branch_on_the_whole_image(tmp_path: Path, monkeypatch):
    shapes = global_inputs(monkeypatch)
    result = train(options(tmp_path / "f.safetensors", mode=TrainMode.FULL))
    assert result.final_step == 2
    assert shapes == [(1, 3, 192, 256)] * 2  # the whole synthetic scene, not a crop


def test_full_mode_says_when_a_scene_is_too_small_for_the_papers_batch(tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="glsnet"):
        train(options(tmp_path / "m.safetensors", mode=TrainMode.FULL, synthetic_size=(128, 128), batch_size=6))
    assert any("a 128 x 128 px window holds 1 patch(es) of 128 px: local batches of 1, not 6" in r.getMessage()
               for r in caplog.records)


def test_crop_mode_trains_the_global_branch_on_a_crop(tmp_path: Path, monkeypatch):
    shapes = global_inputs(monkeypatch)
    train(options(tmp_path / "c.safetensors", mode=TrainMode.CROP, crop_size=160))
    assert shapes == [(1, 3, 160, 160)] * 2


def test_a_memory_budget_shrinks_the_window_and_says_so(tmp_path: Path, monkeypatch, caplog):
    shapes = global_inputs(monkeypatch)
    model = build_glsnet(TINY)
    per_pixel = activation_bytes_per_pixel(model)
    budget = 0.5 * 192 * 256 * per_pixel / 2**20  # half of what the whole scene needs
    with caplog.at_level(logging.INFO, logger="glsnet"):
        train(options(tmp_path / "b.safetensors", mode=TrainMode.FULL, global_memory_mib=budget))
    h, w = shapes[0][2:]
    assert (h, w) != (192, 256) and h * w * per_pixel / 2**20 <= budget and h >= TINY.patch_size
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{w} x {h} px windows of the 256 x 192 px image" in m and "budget" in m for m in warned)
    assert any("mode full (the paper's)" in r.getMessage() for r in caplog.records)


def test_a_budget_below_one_patch_gives_one_patch_and_says_it_is_over(tmp_path: Path, caplog):
    window = global_window(2448, 2448, 1000.0, budget_mib=1.0, patch_size=508)
    assert (window.height, window.width) == (508, 508) and window.window_mib > 1.0
    assert "still over the budget: a window holds at least one patch" in window.describe(2448, 2448, 1.0)
    assert "still over" not in global_window(2448, 2448, 1000.0, 2000.0, 508).describe(2448, 2448, 2000.0)
    with caplog.at_level(logging.WARNING, logger="glsnet"):
        train(options(tmp_path / "m.safetensors", mode=TrainMode.CROP, crop_size=128, global_memory_mib=100, steps=1))
    assert any("--global-memory-mib applies to mode full" in r.getMessage() for r in caplog.records)


def test_activation_estimate_scales_with_the_pixels_it_measures():
    model = build_glsnet(TINY)
    per_pixel = activation_bytes_per_pixel(model)
    # the slope predicts a third size; the saved weights, the same at every size, are not counted per pixel
    weights = saved_bytes(model, 128) - 128 * 128 * per_pixel
    assert saved_bytes(model, 384) == pytest.approx(weights + 384 * 384 * per_pixel, rel=0.01)
    parameters = sum(p.numel() * p.element_size() for p in model.global_branch.parameters())
    assert weights == pytest.approx(parameters, rel=0.01)  # what does not grow with the image is the weights
    whole = global_window(2448, 2448, per_pixel, None, 508)
    assert whole.whole and (whole.height, whole.width) == (2448, 2448)
    fit = global_window(2448, 2448, per_pixel, whole.needed_mib / 4, 508)
    assert not fit.whole and fit.height % 32 == 0 and fit.window_mib <= whole.needed_mib / 4
    assert fit.height == pytest.approx(1224, abs=32)  # a quarter of the memory: half the side


def test_paper_preset_follows_the_paper_where_it_is_explicit(tmp_path: Path):
    assert PRESET_MODES["paper"] is TrainMode.FULL and PRESET_MODES["small"] is TrainMode.CROP
    config = preset_config("paper")
    assert (config.global_backbone, config.local_backbone, config.patch_size) == ("resnet18", "resnet50", 508)
    imagenet = {"global_weights": tmp_path / "resnet18-f37072fd.pth", "local_weights": tmp_path / "resnet50-0676ba61.pth"}
    paper = TrainOptions(out=tmp_path / "p", config=config, mode=TrainMode.FULL, **imagenet)
    assert {k: getattr(paper, k) for k in PAPER_TRAINING} == PAPER_TRAINING
    assert paper.paper_differences() == []
    random = TrainOptions(out=tmp_path / "p", config=config, mode=TrainMode.FULL)  # issue 21: random weights are a difference
    assert random.paper_differences() == ["global and local backbone from random weights (paper: ImageNet-pretrained)"]
    smoke = options(tmp_path / "s", mode=TrainMode.CROP, focal_gamma=2.0)
    differences = "; ".join(smoke.paper_differences())
    assert "mode crop (paper: full)" in differences and "focal_gamma 2.0 (paper: 6.0)" in differences
    assert "batch_size 2 (paper: 6)" in differences and "patch_size 128 (paper: 508)" in differences
    assert "not the paper's" in smoke.mode_note() and "whole image" in smoke.mode_note()


def test_a_wrong_mean_exclude_name_fails_before_any_step(tmp_path: Path, monkeypatch):
    import glsnet.training

    monkeypatch.setattr(glsnet.training, "open_training_scenes", lambda options: pytest.fail("scenes were read"))
    with pytest.raises(InputError, match=r"--mean-exclude: \['Unknown'\] not among the model's classes"):
        train(options(tmp_path / "m.safetensors", mean_exclude=("Unknown",)))


def test_resume_keeps_the_checkpoints_mode(tmp_path: Path, monkeypatch, capsys):
    from tests.glsnet.test_train_cli import run_cli

    common = ("--synthetic", "--synthetic-count", "2", "--synthetic-size", "160x160", "--batch-size", "2",
              "--val-fraction", "0", "--out", tmp_path / "m.safetensors", "--no-progress")
    code, _, err = run_cli(monkeypatch, capsys, "train", *common, "--preset", "small", "--mode", "full", "--steps", "1")
    assert code == 0, err
    code, out, err = run_cli(monkeypatch, capsys, "train", *common, "--steps", "2", "--resume", tmp_path / "m.safetensors")
    text = " ".join((out + err).split())
    assert code == 0, err
    assert "mode full (the paper's)" in text and "trained steps 1..2" in text


def test_bad_budget_is_an_input_error(tmp_path: Path):
    with pytest.raises(InputError, match="global_memory_mib"):
        options(tmp_path / "x", global_memory_mib=0)


def test_train_cli_help_and_log_say_the_mode(tmp_path: Path, monkeypatch, capsys):
    from tests.glsnet.test_train_cli import run_cli

    code, out, _ = run_cli(monkeypatch, capsys, "train", "--help")
    assert code == 0 and "--mode" in out and "differs from the paper" in out and "paper" in out
    code, out, err = run_cli(
        monkeypatch, capsys, "train", "--synthetic", "--synthetic-count", "2", "--synthetic-size", "160x160",
        "--preset", "small", "--steps", "1", "--batch-size", "2", "--crop-size", "128", "--val-fraction", "0",
        "--out", tmp_path / "m.safetensors", "--no-progress",
    )
    text = " ".join((out + err).split())
    assert code == 0, err
    assert "mode crop (fast, not the paper's)" in text and "differs from the paper's training" in text
    assert "batch_size 2 (paper: 6)" in text
