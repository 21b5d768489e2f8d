"""glsnet-export inspect: operator counts, parameters and FLOPs per graph, checked against torch's own counter."""

from __future__ import annotations

import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from export.graphs.inspect_graphs import ExampleSize, inspect_bundle  # noqa: E402


def _torch_flops(module, *args) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*args)
    return counter.get_total_flops()


def test_flops_and_parameters_agree_with_torch(small_bundle, small_model):
    example = ExampleSize(height=256, width=320, batch=3)
    summaries = {s.role: s for s in inspect_bundle(small_bundle, example)}
    assert list(summaries) == ["global", "local", "fusion"]
    image = torch.zeros(1, 3, 256, 320)
    patches = torch.zeros(3, 3, 128, 128)
    with torch.no_grad():
        global_features = small_model.global_branch(image)
        local_features, local_skip = small_model.local_branch(patches)
    boxes = torch.tensor([[0.0, 0.0, 128.0, 128.0]] * 3)
    expected = {
        "global": _torch_flops(small_model.global_branch, image),
        "local": _torch_flops(small_model.local_branch, patches),
        "fusion": _torch_flops(small_model.fusion, local_features, local_skip, global_features, boxes),
    }
    for role, summary in summaries.items():
        assert summary.flops_complete
        assert summary.flops == pytest.approx(expected[role], rel=0.01), role
        assert summary.nodes == sum(summary.op_counts.values()) > 0
    # BatchNorm is folded into the convolutions at export: ONNX parameters are the conv weights
    # plus one bias per folded channel, so fewer than torch's weights + BN affine parameters.
    local_torch = sum(p.numel() for p in small_model.local_branch.parameters())
    assert 0.97 * local_torch < summaries["local"].parameters <= local_torch
    assert summaries["fusion"].op_counts["MatMul"] >= 2 and summaries["global"].op_counts["Conv"] > 10


def test_the_cli_prints_every_graph_and_the_tensorrt_verdict(small_bundle, monkeypatch, capsys):
    from export.cli import main

    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setattr(sys, "argv", ["glsnet-export", "inspect", str(small_bundle), "--height", "512", "--width", "512"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for text in ("fp32/global", "fp32/local", "fp32/fusion", "512 x 512 image, batch 6", "[batch, 4]", "LayerNormalization"):
        assert text in out
    assert out.count(" ok ") >= 3
