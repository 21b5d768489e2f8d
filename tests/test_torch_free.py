"""The runtime must install and run without torch, glsnet, export or calibration (Jetson, C++ services)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "torchvision", "glsnet", "export", "calibration")

BLOCKER = """
import sys

FORBIDDEN = {forbidden!r}


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"{{name}} is blocked: the runtime must not import it")
        return None


sys.meta_path.insert(0, _Blocker())
"""


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "require", "__import__"):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def test_no_runtime_module_imports_torch_or_the_build_side():
    offenders = []
    files = sorted((ROOT / "runtime").rglob("*.py"))
    assert len(files) > 10
    for path in files:
        for line, module in _imports(path):
            if module.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)


@pytest.fixture(scope="module")
def blocked_env(tmp_path_factory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("blocker")
    (site / "sitecustomize.py").write_text(BLOCKER.format(forbidden=FORBIDDEN))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    return env


def test_the_blocker_really_blocks_torch(blocked_env):
    result = subprocess.run([sys.executable, "-c", "import torch"], env=blocked_env, capture_output=True, text=True)
    assert result.returncode != 0 and "blocked" in result.stderr


def test_runtime_imports_and_segments_without_torch(blocked_env, small_bundle):
    code = (
        "import numpy as np, sys\n"
        "import runtime, runtime.cli, runtime.segmenter, runtime.algorithm.scheduler, runtime.bench.segment_bench, runtime.image_io.writers\n"
        "from runtime.segmenter import Segmenter\n"
        "mask = Segmenter(sys.argv[1]).segment(np.full((70, 90, 3), 120, np.uint8))\n"
        "assert mask.shape == (70, 90) and mask.dtype == np.uint8\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'glsnet', 'export', 'calibration')]\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(small_bundle)], env=blocked_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_glsnet_run_works_without_torch(blocked_env, small_bundle, tmp_path):
    from PIL import Image

    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (60, 150, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "run", str(image), "--bundle", str(small_bundle), "-o", str(out), "--stats"],
        env=blocked_env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["scene_color.png", "scene_mask.png", "scene_stats.json"]
    assert np.asarray(Image.open(out / "scene_mask.png")).shape == (60, 150)


def test_glsnet_bench_no_torch_runs_on_a_runtime_only_install(blocked_env, small_bundle, tmp_path):
    out = tmp_path / "bench"
    args = [sys.executable, "-m", "runtime.cli", "bench", "--bundle", str(small_bundle), "--out", str(out), "--size", "256"]
    result = subprocess.run([*args, "--no-torch", "--tall-factors", "2", "--budgets", "2GB"], env=blocked_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads((out / "bench.json").read_text())
    assert "torch" not in report and report["runtime"]["peak_rss_bytes"] > 0
    assert report["budgets"][0]["accepted"] and report["machine"]["sgemm_flops_per_s"] > 0
    assert report["rss_timelines"]["runtime 256x256"]["peak"]["rss_bytes"] > 0
    assert report["banded_global"]["staged_max_abs"] == 0.0  # the stage-wise global branch is exact
    refused = subprocess.run(args, env=blocked_env, capture_output=True, text=True)  # the torch half asked for
    assert refused.returncode != 0 and "--no-torch" in refused.stderr + refused.stdout
