"""The C++ runtime as an installed library (runtime/cpp/CMakeLists.txt, docs/cpp.md): `cmake --install` into a
temporary prefix, then two consumer programs built outside the source tree, one with find_package(glsnet) and
one with pkg-config, whose masks must equal `glsnet run`'s; only glsnet_* symbols exported; SONAME carries the
ABI; RUNPATHs relative to $ORIGIN; an ONNX Runtime too old is an error code, not a crash; CTest's tests pass.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.image_io.readers import open_image
from runtime.segmenter import Segmenter
from tests.runtime.cpp.c_abi import STATUS_RUNTIME as GLSNET_STATUS_RUNTIME
from tests.runtime.cpp.test_cpp_runtime import ROOT, _build, _scene

CPP = ROOT / "runtime" / "cpp"


def _abi_version() -> int:
    match = re.search(r"^#define GLSNET_ABI_VERSION (\d+)", (CPP / "include" / "glsnet" / "glsnet.h").read_text(), re.M)
    assert match, "glsnet.h defines no GLSNET_ABI_VERSION"
    return int(match.group(1))


def _run(*args: str | Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _clean_env() -> dict:
    """The environment without library search paths, so only RUNPATHs find the libraries."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """build/cpp installed into a temporary prefix, and the two consumers built against that prefix only."""
    build = _build("cpp")
    work = tmp_path_factory.mktemp("install")
    prefix = work / "prefix"
    _run("cmake", "--install", build, "--prefix", prefix)
    source = work / "consumer-src"  # outside the source tree: nothing can reach runtime/cpp by a relative path
    shutil.copytree(CPP / "tests" / "consumer", source)
    _run("cmake", "-S", source, "-B", work / "consumer-cmake", f"-DCMAKE_PREFIX_PATH={prefix}", "-DCMAKE_BUILD_TYPE=Release")
    _run("cmake", "--build", work / "consumer-cmake")
    libdir = next(p.parent for p in prefix.rglob("libglsnet.so"))
    flags = _run("pkg-config", "--cflags", "--libs", "glsnet", env=dict(_clean_env(), PKG_CONFIG_PATH=str(libdir / "pkgconfig"))).stdout.split()
    pkg_consumer = work / "consumer-pkg-config"
    _run("cc", "-std=c11", "-Wall", "-Werror", source / "consumer.c", "-o", pkg_consumer, *flags, f"-Wl,-rpath,{libdir}")
    return {"prefix": prefix, "libdir": libdir, "cmake": work / "consumer-cmake" / "consumer", "pkg-config": pkg_consumer, "work": work}


def test_install_puts_headers_library_cmake_package_and_pkg_config_file_under_the_prefix(installed):
    prefix, libdir, abi = installed["prefix"], installed["libdir"], _abi_version()
    for relative in ("include/glsnet/glsnet.h", "include/glsnet/glsnet.hpp", "bin/glsnet-cpp"):
        assert (prefix / relative).is_file(), relative
    assert (libdir / f"libglsnet.so.{abi}").exists() and (libdir / "libglsnet.so").is_symlink()
    for name in ("glsnetConfig.cmake", "glsnetConfigVersion.cmake", "glsnetTargets.cmake"):
        assert (libdir / "cmake" / "glsnet" / name).is_file(), name
    pc = (libdir / "pkgconfig" / "glsnet.pc").read_text()
    assert f"prefix={prefix}" in pc and "-lglsnet" in pc
    targets = (libdir / "cmake" / "glsnet" / "glsnetTargets.cmake").read_text()
    assert "glsnet::glsnet" in targets and str(ROOT) not in targets, "the exported target must not point into the source tree"


def test_installed_library_exports_only_the_c_api_with_the_abi_in_its_soname(installed):
    library = installed["libdir"] / "libglsnet.so"
    symbols = _run("nm", "-D", "--defined-only", library).stdout.split("\n")
    names = [line.split()[-1].split("@")[0] for line in symbols if line.strip()]
    assert "glsnet_open" in names and "glsnet_segment_file" in names
    assert [n for n in names if not n.startswith("glsnet_")] == []
    dynamic = _run("readelf", "-d", library).stdout
    assert f"Library soname: [libglsnet.so.{_abi_version()}]" in dynamic
    for binary in (library, installed["prefix"] / "bin" / "glsnet-cpp"):
        runpath = re.search(r"Library runpath: \[(.*)\]", _run("readelf", "-d", binary).stdout)
        assert runpath, f"{binary} has no RUNPATH"
        assert all(entry.startswith("$ORIGIN") for entry in runpath.group(1).split(":") if entry), runpath.group(1)


@pytest.mark.parametrize("consumer", ["cmake", "pkg-config"])
def test_consumers_built_against_the_prefix_segment_like_glsnet_run(installed, small_bundle, consumer, tmp_path):
    image = tmp_path / "scene.png"
    Image.fromarray(_scene(130, 170, seed=21)).save(image)
    with Segmenter(small_bundle) as segmenter:
        segmenter.segment_file(image, tmp_path / "py")
    _run(installed[consumer], small_bundle, image, tmp_path / "cpp", env=_clean_env())
    for name in ("scene_mask.png", "scene_color.png"):
        got, expected = open_image(tmp_path / "cpp" / name), open_image(tmp_path / "py" / name)
        a, b = got.read_rows(0, got.height), expected.read_rows(0, expected.height)
        assert a.shape == b.shape and np.array_equal(a, b), name
    assert len(np.unique(open_image(tmp_path / "py" / "scene_mask.png").read_rows(0, 130))) > 1


def test_an_onnxruntime_too_old_for_the_headers_is_a_runtime_error_not_a_crash(installed, small_bundle, tmp_path):
    fake = tmp_path / "fake-ort"
    fake.mkdir()
    _run("cc", "-shared", "-fPIC", "-Wl,-soname,libonnxruntime.so.1", CPP / "tests" / "fake_onnxruntime.c", "-o", fake / "libonnxruntime.so.1")
    image = tmp_path / "scene.png"
    Image.fromarray(_scene(40, 50, seed=2)).save(image)
    env = dict(_clean_env(), LD_LIBRARY_PATH=str(fake))  # searched before the installed RUNPATH
    result = subprocess.run([str(installed["cmake"]), str(small_bundle), str(image), str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert result.returncode == GLSNET_STATUS_RUNTIME, result.stderr
    assert "1.0.0-test" in result.stderr and "does not offer API version" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_tests_registered_with_ctest_pass():
    build = _build("cpp")
    result = _run("ctest", "--output-on-failure", cwd=build)
    assert "glsnet.exports" in result.stdout and "100% tests passed" in result.stdout
