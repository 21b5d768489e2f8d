"""TensorRT version detection and the 10.x / 11.x API choices, against fake tensorrt modules."""

from __future__ import annotations

import types

import pytest

from runtime.backends.tensorrt.api import TensorRTVersion, load_tensorrt, tensorrt_api
from runtime.errors import GlsnetError, InputError, MissingDependencyError
from runtime.optional_import import available
from tests.tensorrt_support import fake_tensorrt


@pytest.mark.parametrize(
    "text,parsed,shown,encoded",
    [
        ("10.3.0", (10, 3, 0, 0), "10.3.0", 100300),
        ("10.3.0.30", (10, 3, 0, 30), "10.3.0.30", 100300),
        ("11.4.0.106", (11, 4, 0, 106), "11.4.0.106", 110400),
        ("10.13.0.post1", (10, 13, 0, 1), "10.13.0.1", 101300),
        ("8.6.1", (8, 6, 1, 0), "8.6.1", 8601),
    ],
)
def test_versions_are_read_from_tensorrt_version_strings(text, parsed, shown, encoded):
    version = TensorRTVersion.parse(text)
    assert (version.major, version.minor, version.patch, version.build) == parsed
    assert str(version) == shown
    assert version.encoded == encoded
    assert version.release == ".".join(str(n) for n in parsed[:3])


def test_an_unreadable_version_is_an_error():
    with pytest.raises(GlsnetError, match="cannot read a TensorRT version"):
        TensorRTVersion.parse("unknown")


def test_tensorrt_10_builds_strongly_typed_by_flag_and_keeps_weak_typing_for_dla():
    trt = fake_tensorrt("10.3.0")
    api = tensorrt_api(trt)
    assert api.network_flags(strongly_typed=True) == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 2
    assert api.network_flags(strongly_typed=False) == 0
    assert not api.strongly_typed_by_default
    assert api.has_implicit_precision and api.has_dla
    assert api.entropy_calibrator_base() is trt.IInt8EntropyCalibrator2


def test_tensorrt_11_is_strongly_typed_by_default_and_has_no_weak_typing():
    trt = fake_tensorrt("11.4.0.106")
    api = tensorrt_api(trt)
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    assert api.strongly_typed_by_default
    assert api.network_flags(strongly_typed=True) == 0
    with pytest.raises(InputError, match="strongly typed networks only"):
        api.network_flags(strongly_typed=False)
    with pytest.raises(InputError, match="no implicit precision"):
        api.enable_implicit_precision(object(), "int8", calibrator=object())
    with pytest.raises(InputError, match="no INT8 calibrators"):
        api.entropy_calibrator_base()
    assert not api.has_dla  # DLA is back only from 11.4.1


def test_dla_is_refused_on_tensorrt_11_before_11_4():
    api = tensorrt_api(fake_tensorrt("11.1.0"))
    assert not api.has_dla
    with pytest.raises(InputError, match="does not support DLA"):
        api.use_dla(object(), 0)


def test_tensorrt_older_than_10_is_refused_with_the_jetpack_hint():
    with pytest.raises(MissingDependencyError, match="JetPack 6.0 ships 8.6"):
        tensorrt_api(fake_tensorrt("8.6.1"))


def test_implicit_precision_sets_the_tensorrt_10_flags_calibrator_and_profile():
    trt = fake_tensorrt("10.3.0")
    api = tensorrt_api(trt)
    config = trt.Builder(trt.Logger()).create_builder_config()
    calibrator, profile = object(), trt.Builder(trt.Logger()).create_optimization_profile()
    api.enable_implicit_precision(config, "int8", calibrator, profile)
    assert config.flags == [trt.BuilderFlag.FP16, trt.BuilderFlag.INT8]
    assert config.settings["int8_calibrator"] is calibrator
    assert ("set_calibration_profile",) in trt.calls
    fp16 = trt.Builder(trt.Logger()).create_builder_config()
    api.enable_implicit_precision(fp16, "fp16")
    assert fp16.flags == [trt.BuilderFlag.FP16]
    with pytest.raises(InputError, match="needs a calibrator"):
        api.enable_implicit_precision(trt.Builder(trt.Logger()).create_builder_config(), "int8")


def test_dla_configuration_sets_device_core_and_gpu_fallback():
    trt = fake_tensorrt("10.3.0")
    config = trt.Builder(trt.Logger()).create_builder_config()
    tensorrt_api(trt).use_dla(config, 1)
    assert config.settings == {"default_device_type": trt.DeviceType.DLA, "DLA_core": 1}
    assert config.flags == [trt.BuilderFlag.GPU_FALLBACK]


def test_memory_api_choice_prefers_the_v2_calls_and_falls_back_for_10_0():
    api = tensorrt_api(fake_tensorrt("10.0.1"))
    assert api.engine_device_memory(types.SimpleNamespace(device_memory_size_v2=7, device_memory_size=9)) == 7
    assert api.engine_device_memory(types.SimpleNamespace(device_memory_size=9)) == 9
    old_context = types.SimpleNamespace()
    api.set_context_memory(old_context, 0x100, 64)
    assert old_context.device_memory == 0x100
    calls = []
    api.set_context_memory(types.SimpleNamespace(set_device_memory=lambda p, n: calls.append((p, n))), 0x200, 64)
    assert calls == [(0x200, 64)]
    engine = types.SimpleNamespace(device_memory_size_v2=100)
    assert api.context_device_memory(types.SimpleNamespace(update_device_memory_size_for_shapes=lambda: 40), engine) == 40
    assert api.context_device_memory(types.SimpleNamespace(), engine) == 100


def test_contexts_are_created_user_managed_or_static():
    trt = fake_tensorrt("11.4.0")
    api = tensorrt_api(trt)
    made = []
    engine = types.SimpleNamespace(create_execution_context=lambda strategy: made.append(strategy) or object())
    api.create_context(engine, user_managed_memory=True)
    api.create_context(engine, user_managed_memory=False)
    assert made == [trt.ExecutionContextAllocationStrategy.USER_MANAGED, trt.ExecutionContextAllocationStrategy.STATIC]
    with pytest.raises(GlsnetError, match="execution context"):
        api.create_context(types.SimpleNamespace(create_execution_context=lambda s: None), True)


@pytest.mark.skipif(available("tensorrt"), reason="TensorRT is installed here")
def test_without_tensorrt_the_error_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r"glsnet-deploy\[tensorrt\]"):
        load_tensorrt()


@pytest.mark.parametrize(
    "version, has_dla",
    [("10.0.1", True), ("10.3.0", True), ("10.7.0", True), ("10.8.0", False), ("10.13.0", False), ("11.0.0", False), ("11.4.0", False), ("11.4.1", True), ("11.5.0", True)],
)
def test_the_dla_support_table(version, has_dla):
    """Defect 3: DLA in TensorRT 10.0-10.7, nothing in between, and again from 11.4.1 (AGX Orin, JetPack 7.2.2+)."""
    api = tensorrt_api(fake_tensorrt(version))
    assert api.has_dla is has_dla
    if not has_dla:
        with pytest.raises(InputError, match="does not support DLA .*10.0-10.7 and from 11.4.1"):
            api.use_dla(object(), 0)
