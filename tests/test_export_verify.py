"""glsnet-export verify: per-graph comparison and whole-image pixel agreement with the PyTorch reference."""

from __future__ import annotations

import copy
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from export.verify import VerifyOptions, verify_bundle  # noqa: E402
from runtime.errors import InputError  # noqa: E402


def _run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from export.cli import main

    monkeypatch.setattr(sys, "argv", ["glsnet-export", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


@pytest.mark.slow
def test_whole_image_agreement_on_a_1024_synthetic_scene(small_bundle, small_model):
    report = verify_bundle(small_bundle, None, small_model, VerifyOptions(synthetic_size=1024))
    assert report, "\n".join(report.lines())
    assert report.image_size == (1024, 1024) and report.image.startswith("synthetic")
    assert report.pixel_agreement >= 0.9999
    assert report.max_abs()["fusion"] <= 1e-4 and report.max_abs()["global"] <= 1e-4


def test_a_model_that_differs_from_the_bundle_fails(small_bundle, small_model):
    other = copy.deepcopy(small_model)
    with torch.no_grad():
        other.fusion.head.classify.bias += 0.01
    report = verify_bundle(small_bundle, None, other, VerifyOptions(synthetic_size=160, whole_image=False))
    assert report.graphs["global"] and report.graphs["local"]
    assert not report.graphs["fusion"] and not report
    assert any(line.startswith("fusion FAILED") for line in report.lines())


def test_a_bundle_exported_from_a_model_object_needs_a_checkpoint(small_bundle):
    with pytest.raises(InputError, match="--checkpoint"):
        verify_bundle(small_bundle, None, None, VerifyOptions(synthetic_size=160, whole_image=False))


def test_the_cli_exits_nonzero_when_over_tolerance(small_bundle, small_model, tmp_path, monkeypatch, capsys):
    from glsnet.checkpoint import save_checkpoint

    other = copy.deepcopy(small_model)
    with torch.no_grad():
        other.fusion.head.classify.bias += 0.01
    checkpoint = save_checkpoint(tmp_path / "other.safetensors", other)
    code, output = _run_cli(
        monkeypatch, capsys, "verify", str(small_bundle), "--checkpoint", str(checkpoint), "--size", "160", "--graphs-only"
    )
    assert code == 1
    assert "fusion FAILED" in output and "global PASSED" in output


@pytest.mark.integration
@pytest.mark.slow
def test_default_configuration_on_a_real_2448_image(deepglobe_dir, tmp_path):
    """Random-init (seeded) default GLSNet: export, then verify on a real DeepGlobe scene."""
    from export.onnx_export import export_bundle
    from glsnet.config import GLSNetConfig
    from glsnet.model import build_glsnet

    torch.manual_seed(0)
    model = build_glsnet(GLSNetConfig()).eval()
    bundle = tmp_path / "default"
    export_bundle(model, bundle)
    image = sorted(deepglobe_dir.glob("*_sat.jpg"))[0]
    report = verify_bundle(bundle, image, model, VerifyOptions())
    print("\n".join(report.lines()))
    assert report.image_size == (2448, 2448)
    assert all(report.graphs.values()), report.lines()
    assert report.max_abs()["fusion"] <= 1e-4
    assert report.pixel_agreement >= 0.9999
