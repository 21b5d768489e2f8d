"""The memory plan from the manifest and file sizes alone equals the plan of the loaded sessions."""

from __future__ import annotations

import os

import pytest

from runtime.bundle.loader import graph_files, open_bundle
from runtime.engines.declared_plan import declared_plan
from runtime.errors import BundleError, GlsnetError
from runtime.options import SegmenterOptions
from runtime.segmenter import Segmenter

SIZES = [(300, 200), (1000, 3000), (4000, 700)]


@pytest.mark.parametrize("max_memory", [None, 450_000_000], ids=["no budget", "budget"])
def test_the_declared_plan_is_the_loaded_segmenters_plan(small_bundle, max_memory):
    options = SegmenterOptions(threads=1, max_memory=max_memory)
    manifest = open_bundle(small_bundle).manifest
    sizes = {file: os.path.getsize(small_bundle / file) for file, _ in graph_files(manifest, "fp32").all()}
    with Segmenter(small_bundle, options=options) as segmenter:
        for height, width in SIZES:
            assert declared_plan(manifest, options, sizes, height, width) == segmenter.plan(height, width), (height, width)
    if max_memory is None:  # the file sizes are the weights' share of the estimate
        larger = declared_plan(manifest, options, {f: 10 * n for f, n in sizes.items()}, *SIZES[-1])
        assert larger.estimate_bytes > declared_plan(manifest, options, sizes, *SIZES[-1]).estimate_bytes
    else:  # the budget shapes the plan: a batch or band smaller than the defaults for the widest image
        budgeted = declared_plan(manifest, options, sizes, *SIZES[1])
        assert budgeted.budget_bytes == max_memory and budgeted.estimate_bytes <= max_memory


def test_the_declared_plan_needs_every_file_size_and_the_cpu_provider(small_bundle):
    manifest = open_bundle(small_bundle).manifest
    with pytest.raises(BundleError, match="local.onnx: named in the manifest but its size is unknown"):
        declared_plan(manifest, SegmenterOptions(), {"global.onnx": 1}, 500, 500)
    with pytest.raises(GlsnetError, match="CPU provider only"):
        declared_plan(manifest, SegmenterOptions(provider="cuda"), {}, 500, 500)
