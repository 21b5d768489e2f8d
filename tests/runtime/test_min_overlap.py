"""--min-overlap: the patch grid's minimum overlap chosen at run time instead of the bundle's patch.min_overlap."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from runtime.algorithm.patch_grid import make_grid
from runtime.errors import InputError
from runtime.segmenter import Segmenter, SegmenterOptions
from tests.runtime.test_segmenter import reference_mask, scene

SIZE = 360  # the small bundle (128 px patches, 16 px overlap): 4 x 4 patches, but 3 x 3 at an 8 px overlap
OVERLAP = 8


def glsnet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"))


def test_the_geometry_facts_of_the_docs():
    """docs/runtime-algorithm.md: 2448 px, 508 px patches: 50, 32, 24 give 6 x 6 (stride 388), <= 23 gives 5 x 5 (stride 485)."""
    for overlap in (50, 32, 24):
        grid = make_grid(2448, 2448, 508, overlap)
        assert (grid.rows, grid.cols, grid.stride_y) == (6, 6, 388)
    for overlap in (23, 0):
        grid = make_grid(2448, 2448, 508, overlap)
        assert (grid.rows, grid.cols, grid.stride_y) == (5, 5, 485)
    assert round(36 * 508**2 / 2448**2, 3) == 1.550 and round(25 * 508**2 / 2448**2, 3) == 1.077


def test_a_smaller_overlap_gives_fewer_patches_and_the_reference_mask_at_that_overlap(small_bundle, small_model):
    image = scene(SIZE, SIZE, seed=11)
    with Segmenter(small_bundle) as default, Segmenter(small_bundle, min_overlap=OVERLAP) as chosen:
        assert default.manifest.patch.min_overlap == 16 and chosen.manifest.patch.min_overlap == OVERLAP
        assert len(default.scheduler.grid_for(SIZE, SIZE)) == 16
        grid = chosen.scheduler.grid_for(SIZE, SIZE)
        assert (grid.rows, grid.cols, grid.min_overlap) == (3, 3, OVERLAP)
        mask = chosen.segment(image)
        default_mask = default.segment(image)
    assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8 and int(mask.max()) < small_model.config.num_classes
    # the PyTorch reference run on the same 3 x 3 grid: the runtime did use the chosen overlap
    model = copy.copy(small_model)
    model.config = small_model.config.replace(min_overlap=OVERLAP)
    assert (mask == reference_mask(model, image)).mean() >= 0.999
    assert len(np.unique(mask)) >= 2
    assert not np.array_equal(mask, default_mask), "another grid blends other patches: some pixel should change"


@pytest.mark.parametrize("value,words", [(128, "less than the bundle's patch size (128 px)"), (500, "(128 px)"), (-1, "at least 0")])
def test_bad_overlaps_are_refused_with_one_clear_message(small_bundle, value, words):
    with pytest.raises(InputError, match=r"--min-overlap -?\d+: the minimum patch overlap must be") as info:
        Segmenter(small_bundle, min_overlap=value)
    assert words in str(info.value)
    with pytest.raises(InputError, match="--min-overlap True"):
        SegmenterOptions(min_overlap=True)  # type: ignore[arg-type]


def test_glsnet_run_takes_the_overlap_and_refuses_a_bad_one(small_bundle, tmp_path):
    image = tmp_path / "scene.png"
    Image.fromarray(scene(SIZE, SIZE, seed=11)).save(image)
    result = glsnet("run", str(image), "-b", str(small_bundle), "-o", str(tmp_path / "out"), "--min-overlap", str(OVERLAP), "--no-color")
    assert result.returncode == 0, result.stderr
    with Segmenter(small_bundle, min_overlap=OVERLAP) as segmenter:
        expected = segmenter.segment(np.asarray(Image.open(image)))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "scene_mask.png")), expected)
    result = glsnet("run", str(image), "-b", str(small_bundle), "-o", str(tmp_path / "bad"), "--min-overlap", "128")
    assert result.returncode == 2
    assert "--min-overlap 128: the minimum patch overlap must be a whole number of pixels, at least 0 and less than the bundle's patch size (128 px)" in result.stderr
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
    assert "--min-overlap" in glsnet("run", "--help").stdout


def test_the_declared_plan_of_glsnet_batch_grids_with_the_chosen_overlap(small_bundle):
    """glsnet batch sizes its workers from the manifest alone (runtime.engines.declared_plan): the same overlap."""
    from runtime.bundle.loader import graph_files, open_bundle
    from runtime.engines.declared_plan import declared_plan

    manifest = open_bundle(small_bundle).manifest
    sizes = {file: os.path.getsize(small_bundle / file) for file, _ in graph_files(manifest, "fp32").all()}
    plans = {}
    for overlap in (None, OVERLAP):
        options = SegmenterOptions(threads=1, min_overlap=overlap)
        with Segmenter(small_bundle, options=options) as segmenter:
            plans[overlap] = segmenter.plan(1000, 3000)
            assert declared_plan(manifest, options, sizes, 1000, 3000) == plans[overlap]
    assert plans[OVERLAP].time_estimate < plans[None].time_estimate  # the plan priced fewer patches
