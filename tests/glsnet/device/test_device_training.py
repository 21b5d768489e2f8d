"""--device / --amp / the prefetching loader: the CPU path computes what it did before they existed."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from glsnet.data.loader import StepSamples, scene_for_step, step_loader
from glsnet.data.samples import make_sample
from glsnet.data.synthetic import SyntheticScenes
from glsnet.device.precision import Amp, choose_amp
from glsnet.device.selection import resolve_device
from glsnet.losses import GLSNetLoss
from glsnet.model import build_glsnet
from glsnet.training import TrainMode, train
from runtime.errors import InputError
from tests.glsnet.test_training import TINY, tiny_options

# Loss curves of tiny_options (crop: 4 steps; full: 3 steps) recorded with the code before --device,
# the loader and AMP existed (commit 9fc66e4), on this project's CPU.
BEFORE = {
    "crop": [1.0084980726242065, 0.9439018964767456, 1.133724570274353, 1.1328425407409668],
    "full": [1.0471779108047485, 0.9190326929092407, 1.1273072957992554],
}


def former_loop(options) -> list[float]:
    """The training loop as it was before the loader (sample making inline, same seeds), crop mode."""
    scenes = SyntheticScenes(options.synthetic_count, *options.synthetic_size, seed=options.seed)
    train_idx = list(range(len(scenes.names)))
    torch.manual_seed(options.seed)
    model = build_glsnet(options.config).train()
    optimizer = torch.optim.Adam(model.parameter_groups(options.global_lr, options.local_lr))
    criterion = GLSNetLoss(options.focal_gamma, options.aux_weight, options.config.ignore_index)
    losses = []
    for step in range(options.steps):
        rng = np.random.default_rng([options.seed, 3, step])
        image, labels = scenes.read(scene_for_step(step, train_idx, options.seed))
        sample = make_sample(image, labels, options.config, options.crop_size, options.batch_size, rng)
        loss = criterion(model(sample.image, sample.patches, sample.boxes), sample.patch_labels, sample.crop_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        losses.append(float(loss.total.detach()))
    return losses


def test_cpu_loss_curve_equals_the_former_loop_exactly_and_the_recorded_one(tmp_path: Path):
    options = tiny_options(tmp_path / "m.safetensors", steps=4, device="cpu")
    now = [step["total"] for step in train(options).losses]
    assert now == former_loop(options)  # exact, computed by both paths on this machine
    assert now == pytest.approx(BEFORE["crop"], rel=1e-5, abs=0)  # recorded before the change (BLAS may differ elsewhere)


def test_cpu_full_mode_loss_curve_equals_the_recorded_one(tmp_path: Path):
    result = train(tiny_options(tmp_path / "m.safetensors", steps=3, mode=TrainMode.FULL, device="cpu"))
    assert [step["total"] for step in result.losses] == pytest.approx(BEFORE["full"], rel=1e-5, abs=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_equal_the_former_loops_batches(workers: int):
    scenes = SyntheticScenes(3, 192, 192, seed=0)
    train_idx = [0, 2]
    samples = StepSamples(scenes, train_idx, TINY, lambda shape: 160, 2, seed=5, start=1, total=6)
    got = list(step_loader(samples, torch.device("cpu"), workers=workers))
    assert [item.step for item in got] == [1, 2, 3, 4, 5]
    for item in got:
        rng = np.random.default_rng([5, 3, item.step])
        scene = scene_for_step(item.step, train_idx, 5)
        expected = make_sample(*scenes.read(scene), TINY, 160, 2, rng)
        assert item.scene == scene
        for name in ("image", "patches", "boxes", "patch_labels", "crop_labels"):
            assert torch.equal(getattr(item.sample, name), getattr(expected, name)), name


def test_training_logs_steps_per_second_and_peak_memory(tmp_path: Path, caplog):
    with caplog.at_level(logging.INFO, logger="glsnet"):
        result = train(tiny_options(tmp_path / "m.safetensors", steps=2, log_every=1, device="cpu"))
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("step 1/2: loss") and "steps/s" in line and "peak process RSS" in line for line in lines), lines
    assert result.peak_memory_mib is not None and result.peak_memory_mib > 10
    assert any("device cpu, amp off, 0 loader worker(s)" in line for line in lines), lines


def test_device_names_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a CUDA device")
def test_cuda_without_a_gpu_is_an_input_error_naming_the_option():
    with pytest.raises(InputError, match=r"--device cuda:1: no CUDA device is available"):
        resolve_device("cuda:1")


def test_amp_needs_cuda_and_defaults_to_off_on_the_cpu():
    cpu = torch.device("cpu")
    assert choose_amp(None, cpu) is Amp.OFF
    assert choose_amp(None, torch.device("cuda")) is Amp.BF16
    with pytest.raises(InputError, match="--amp bf16 needs a CUDA device"):
        choose_amp("bf16", cpu)


def test_a_sample_moves_channels_last():
    rng = np.random.default_rng(0)
    sample = make_sample(*SyntheticScenes(1, 192, 192, seed=0).read(0), TINY, 160, 2, rng)
    moved = sample.to(torch.device("cpu"), channels_last=True)
    assert moved.patches.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(moved.patches, sample.patches)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a CUDA device")
@pytest.mark.parametrize("command", [("train", "--synthetic", "--steps", "1"), ("evaluate", "{tmp}/m.safetensors", "{tmp}")])
def test_cli_device_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, capsys, command):
    from tests.glsnet.test_train_cli import run_cli

    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--device", "cuda", "-o" if args[0] == "train" else "--json",
                           str(tmp_path / ("m.safetensors" if args[0] == "train" else "s.json")))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: --device cuda: no CUDA device is available"), err
