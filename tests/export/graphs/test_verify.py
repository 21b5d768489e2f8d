"""glsnet-export verify: per-graph comparison and whole-image pixel agreement with the PyTorch reference."""

from __future__ import annotations

import copy
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from export.graphs.verify import VerifyOptions, verify_bundle  # noqa: E402
from runtime.bundle.manifest import read_manifest, sha256_file  # noqa: E402
from runtime.errors import CheckpointError, InputError  # noqa: E402


def _run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from export.cli import main

    monkeypatch.setattr(sys, "argv", ["glsnet-export", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, small_config):
    """ResNet18 on 64-pixel patches: cheap to export from the command line."""
    from glsnet.checkpoint import save_checkpoint
    from glsnet.model import build_glsnet

    torch.manual_seed(2)
    config = small_config.replace(local_backbone="resnet18", patch_size=64, min_overlap=8)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", build_glsnet(config).eval())


@pytest.mark.slow
def test_cli_export_then_verify_with_the_checkpoint_the_manifest_names(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from glsnet.checkpoint import read_config, save_checkpoint
    from glsnet.model import build_glsnet

    bundle = tmp_path / "bundle"
    code, output = _run_cli(monkeypatch, capsys, "onnx", str(tiny_checkpoint), "-o", str(bundle))
    assert code == 0 and "bundle written" in output
    code, output = _run_cli(monkeypatch, capsys, "verify", str(bundle), "--size", "150")
    assert code == 0, output
    assert output.count("PASSED") == 5 and "pixel agreement" in output
    code, output = _run_cli(monkeypatch, capsys, "verify", str(bundle), "--size", "150", "--graphs-only", "--atol", "0", "--rtol", "0")
    assert code == 1 and "FAILED" in output and "within tolerance" in output
    code, output = _run_cli(monkeypatch, capsys, "onnx", str(tiny_checkpoint), "-o", str(bundle))
    assert code == 2 and "--force" in output
    (bundle / "stale.txt").write_text("from the old bundle")
    code, output = _run_cli(monkeypatch, capsys, "onnx", str(tiny_checkpoint), "-o", str(bundle), "--force", "--opset", "18")
    assert code == 0, output
    manifest = read_manifest(bundle)
    assert manifest.graph("fusion").opset == 18 and not (bundle / "stale.txt").exists()
    assert manifest.provenance["checkpoint"] == str(tiny_checkpoint.resolve())
    assert manifest.provenance["checkpoint_sha256"] == sha256_file(tiny_checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging or old directories left

    torch.manual_seed(3)
    retrained = save_checkpoint(tmp_path / "retrained.safetensors", build_glsnet(read_config(tiny_checkpoint)))
    with pytest.raises(CheckpointError, match="not the .* this bundle was exported from"):
        verify_bundle(bundle, None, retrained, VerifyOptions(synthetic_size=100, whole_image=False))


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


@pytest.mark.integration
@pytest.mark.slow
def test_default_configuration_on_a_real_2448_image(deepglobe_dir, tmp_path):
    """Random-init (seeded) default GLSNet: export, then verify on a real DeepGlobe scene."""
    from export.graphs.onnx_export import export_bundle
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
