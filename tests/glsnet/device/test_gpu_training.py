"""On a CUDA GPU (skipped without one): 20 steps of the paper preset with AMP, the loss falls, the
checkpoint exports to the three graphs and verifies, and evaluate reports the Table-3-like figure.

Paper sizes (508 px patches, the whole image globally, every patch six at a time) on one seeded
synthetic 1024 px scene, so the loss can fall within 20 steps; random weights (--no-pretrained:
no test downloads ImageNet files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def test_paper_preset_trains_20_steps_with_amp_and_the_checkpoint_exports_and_verifies(tmp_path: Path, monkeypatch, capsys):
    import glsnet.training
    from glsnet.data.synthetic import write_synthetic_folder
    from tests.glsnet.test_train_cli import run_cli

    results = []
    original = glsnet.training.train
    monkeypatch.setattr(glsnet.training, "train", lambda options: results.append(original(options)) or results[-1])
    data = tmp_path / "data"
    write_synthetic_folder(data, 1, 1024, 1024, seed=3)
    checkpoint = tmp_path / "paper.safetensors"
    code, out, err = run_cli(
        monkeypatch, capsys, "train", "--data", data, "--preset", "paper", "--no-pretrained", "--device", "cuda",
        "--amp", "bf16", "--steps", "20", "--val-fraction", "0", "--log-every", "10", "--no-progress", "-o", checkpoint,
    )
    assert code == 0, err
    text = " ".join((out + err).split())
    print(text)
    assert "device cuda" in text and "amp bf16" in text and "steps/s" in text and "peak CUDA allocator memory" in text
    curve = [step["total"] for step in results[0].losses]
    assert len(curve) == 20
    assert np.mean(curve[-5:]) < 0.9 * np.mean(curve[:5]), curve

    bundle = tmp_path / "bundle"
    from export.cli import main as export_main

    for args in (["onnx", str(checkpoint), "-o", str(bundle)], ["verify", str(bundle), "--size", "1024"]):
        monkeypatch.setattr("sys.argv", ["glsnet-export", *args])
        try:
            export_main()
            exported = 0
        except SystemExit as exc:
            exported = exc.code or 0
        assert exported == 0, capsys.readouterr()

    code, out, err = run_cli(monkeypatch, capsys, "evaluate", checkpoint, data, "--device", "cuda", "--batch-size", "6")
    assert code == 0, err
    assert "GPU memory, eager PyTorch, batch 6, TF32 allowed: allocator peak" in " ".join(out.split())
    print(out)
