"""The bench's measuring tools on the small bundle: the global branch timed alone, and overlaps compared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from runtime.algorithm.patch_grid import make_grid
from runtime.bench.segment_bench import main as segment_bench
from runtime.bench.segment_bench import synthetic_scene
from runtime.bundle.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "scene_sat.png"
    Image.fromarray(synthetic_scene(248, 376, seed=3)).save(path)
    return path


def test_global_rate_times_the_branch_the_runtime_runs_and_counts_its_flops(small_bundle, scene, capsys):
    segment_bench(["global-rate", "--bundle", str(small_bundle), "--image", str(scene), "--repeats", "1"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    manifest = read_manifest(small_bundle)
    flops = manifest.provenance["flops"]
    assert report["staged"] is bool(manifest.global_stages.get("fp32")) and report["seconds"] > 0
    assert (report["padded_height"], report["padded_width"]) == (248, 376)
    assert report["flops"] == pytest.approx(flops["global"] / (flops["height"] * flops["width"]) * 248 * 376)


def test_bench_overlap_reports_fewer_flops_for_a_coarser_grid(small_bundle, scene, tmp_path):
    manifest = read_manifest(small_bundle)
    default, smaller = manifest.patch.min_overlap, 0
    out = tmp_path / "overlap.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_overlap.py"), "--bundle", str(small_bundle), "--overlaps", str(smaller),
                    "--out", str(out), str(scene)], check=True, capture_output=True, text=True, cwd=ROOT)
    rows = {row["min_overlap"]: row for row in json.loads(out.read_text())}
    assert rows[default]["agreement"] == [1.0]
    patches = {o: len(g.ys) * len(g.xs) for o in (default, smaller) for g in [make_grid(248, 376, manifest.patch.size, o)]}
    assert patches[smaller] < patches[default]
    assert rows[smaller]["flops"][0] < rows[default]["flops"][0]
    assert 0.5 < rows[smaller]["agreement"][0] <= 1.0
