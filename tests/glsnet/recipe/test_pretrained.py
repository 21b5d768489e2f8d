"""ImageNet weights: --preset paper refuses to start without them; given files are checked by sha256."""

from __future__ import annotations

from pathlib import Path

import pytest

import glsnet.recipe.pretrained as pretrained
from glsnet.recipe.pretrained import IMAGENET_FILES, check_weights_file
from glsnet.training import train
from runtime.errors import InputError
from tests.glsnet.test_train_cli import run_cli
from tests.glsnet.test_training import tiny_options

SYNTHETIC = ("--synthetic", "--synthetic-count", "2", "--synthetic-size", "160x160", "--steps", "1", "--no-progress")


def test_the_known_files_carry_their_sha256_prefix_in_their_names():
    for entry in IMAGENET_FILES:
        assert entry.file_name == f"{entry.backbone}-{entry.sha256[:8]}.pth"
        assert len(entry.sha256) == 64 and entry.url.endswith(entry.file_name)


def test_paper_preset_without_weights_exits_2_naming_the_files(tmp_path: Path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "train", *SYNTHETIC, "--preset", "paper", "--device", "cpu", "-o", tmp_path / "m.safetensors")
    assert code == 2
    assert err.startswith("error: --preset paper starts both backbones from ImageNet"), err
    assert "resnet18-f37072fd.pth" in err and "resnet50-0676ba61.pth" in err and "--no-pretrained" in err
    assert not (tmp_path / "m.safetensors").exists()


def test_no_pretrained_lets_the_paper_preset_start(tmp_path: Path, monkeypatch, capsys):
    import glsnet.training

    seen = []

    def fake_train(options):
        seen.append(options)
        raise InputError("stopped before training")

    monkeypatch.setattr(glsnet.training, "train", fake_train)
    code, _, err = run_cli(monkeypatch, capsys, "train", *SYNTHETIC, "--preset", "paper", "--no-pretrained", "-o", tmp_path / "m.safetensors")
    assert code == 2 and "stopped before training" in err
    assert seen and seen[0].require_pretrained is False
    assert "global and local backbone from random weights (paper: ImageNet-pretrained)" in seen[0].paper_differences()


def test_an_unknown_weights_file_is_refused_by_sha256_before_any_scene_is_read(tmp_path: Path, monkeypatch):
    import glsnet.training

    path = tmp_path / "resnet18-f37072fd.pth"
    path.write_bytes(b"a partial download")
    monkeypatch.setattr(glsnet.training, "open_training_scenes", lambda options: pytest.fail("scenes were read"))
    with pytest.raises(InputError, match=r"resnet18-f37072fd\.pth: sha256 [0-9a-f]{64} is not a known resnet18 ImageNet file"):
        train(tiny_options(tmp_path / "m.safetensors", global_weights=path))
    with pytest.raises(InputError, match=r"missing\.pth: ImageNet weights file not found"):
        check_weights_file(tmp_path / "missing.pth", "resnet50")


def test_a_known_digest_is_recognised_and_a_swapped_backbone_refused(tmp_path: Path, monkeypatch):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"x")
    v2 = next(f for f in IMAGENET_FILES if f.weights.endswith("V2"))
    monkeypatch.setattr(pretrained, "sha256_file", lambda p: v2.sha256)
    assert check_weights_file(path, "resnet50") is v2
    with pytest.raises(InputError, match=r"these are resnet50 weights \(resnet50-11ad3fa6\.pth\), the resnet18 backbone needs resnet18-f37072fd\.pth"):
        check_weights_file(path, "resnet18")
    assert check_weights_file(path, "resnet101") is None  # no known file: unchecked (and logged so)
