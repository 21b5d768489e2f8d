"""Refusal of engines built for another TensorRT release or GPU, with the command that rebuilds them."""

from __future__ import annotations

import pytest

from runtime.backends.tensorrt.engine_check import Platform, engine_directory, engine_paths, rebuild_command, select_engines, slug
from runtime.bundle.manifest import EngineSpec, sha256_file
from runtime.errors import BundleError
from tests.tensorrt_support import make_manifest

ORIN = Platform("10.3.0", "Orin", "8.7")


def spec(precision="fp16", version="10.3.0.30", gpu="Orin", cc="8.7", dla_core=None, files=None):
    directory = engine_directory(gpu, version, precision, dla_core)
    return EngineSpec(
        target="tensorrt",
        precision=precision,
        directory=directory,
        files=files if files is not None else {r: {"file": f"{directory}/{r}.plan", "sha256": "0" * 64} for r in ("global", "local", "fusion")},
        tensorrt_version=version,
        gpu_name=gpu,
        compute_capability=cc,
        dla_core=dla_core,
    )


def test_engine_directories_name_the_gpu_and_release():
    assert slug("NVIDIA GeForce RTX 4090") == "nvidia-geforce-rtx-4090"
    assert engine_directory("NVIDIA H100 80GB HBM3", "10.3.0.30", "fp16") == "engines/nvidia-h100-80gb-hbm3_10.3.0.30/fp16"
    assert engine_directory("Orin", "10.3.0", "int8", dla_core=1) == "engines/orin_10.3.0/int8-dla1"
    assert rebuild_command("b", "int8", 0) == "glsnet-export build b --int8 --target tensorrt --dla-core 0"


def test_a_matching_engine_set_is_chosen_among_others(tmp_path):
    wanted = spec()
    manifest = make_manifest().replace(engines=(spec(gpu="NVIDIA A100", cc="8.0"), spec(precision="int8"), wanted))
    assert select_engines(manifest, tmp_path, "fp16", ORIN) is wanted  # 10.3.0.30 and 10.3.0 are one release


@pytest.mark.parametrize(
    "engine,reason",
    [
        (spec(version="10.4.0"), "built with TensorRT 10.4.0, this machine runs TensorRT 10.3.0"),
        (spec(gpu="NVIDIA A100", cc="8.0"), "built for compute capability 8.0 (NVIDIA A100), this GPU has 8.7 (Orin)"),
        (spec(gpu="Orin Nano"), "built on a Orin Nano, this GPU is a Orin"),
    ],
)
def test_mismatched_engines_are_refused_with_the_rebuild_command(tmp_path, engine, reason):
    manifest = make_manifest().replace(engines=(engine,))
    with pytest.raises(BundleError) as info:
        select_engines(manifest, tmp_path, "fp16", ORIN)
    message = str(info.value)
    assert reason in message
    assert f"glsnet-export build {tmp_path} --fp16 --target tensorrt" in message
    assert "refusing" in message


def test_no_engines_of_that_precision_or_dla_core(tmp_path):
    manifest = make_manifest().replace(engines=(spec(),))
    with pytest.raises(BundleError, match=r"no int8 TensorRT engines \(it has: fp16 on Orin"):
        select_engines(manifest, tmp_path, "int8", ORIN)
    with pytest.raises(BundleError, match=f"glsnet-export build {tmp_path} --fp16 --target tensorrt --dla-core 0"):
        select_engines(manifest, tmp_path, "fp16", ORIN, dla_core=0)
    incomplete = make_manifest().replace(engines=(spec(files={"global": {"file": "x", "sha256": "0"}}),))
    with pytest.raises(BundleError, match="lacks"):
        select_engines(incomplete, tmp_path, "fp16", ORIN)


def test_engine_files_are_checksum_verified(tmp_path):
    plan = tmp_path / "engines" / "local.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"plan")
    good = spec(files={"local": {"file": "engines/local.plan", "sha256": sha256_file(plan)}})
    assert engine_paths(tmp_path, good) == {"local": plan}
    plan.write_bytes(b"tampered")
    with pytest.raises(BundleError, match="does not match the manifest"):
        engine_paths(tmp_path, good)
