"""The global branch stage by stage: exported stage graphs chain to the single graph, and banding them is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from runtime.algorithm.global_features import GlobalStage, global_features, stage_band_rows, staged_global_features  # noqa: E402
from runtime.algorithm.scheduler import PaddedReader, normalization_for  # noqa: E402
from runtime.bundle.manifest import MANIFEST_NAME, read_manifest  # noqa: E402
from runtime.errors import BundleError  # noqa: E402
from runtime.image_io.readers import ArraySource  # noqa: E402
from runtime.segmenter import Segmenter  # noqa: E402


def _reader(segmenter: Segmenter, height: int, width: int, seed: int = 3) -> tuple[PaddedReader, int]:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    grid = segmenter.scheduler.grid_for(height, width)
    return PaddedReader(ArraySource(pixels), normalization_for(segmenter.manifest, None), grid), grid.padded_height


def test_the_bundle_carries_stage_graphs_that_multiply_to_the_feature_stride(small_bundle):
    stages = read_manifest(small_bundle).global_stages["fp32"]
    assert [s.stride for s in stages] == [4, 2, 2, 2]
    assert all(s.halo > 0 and s.halo % s.stride == 0 for s in stages)
    assert stages[0].halo == 24  # conv 7x7/2 (3) + maxpool 3x3/2 (1 x 2) + four 3x3 convs at stride 4 (4 x 4) = 21 -> 24


@pytest.mark.parametrize("height,width,band_rows", [(421, 300, 64), (421, 300, 200), (700, 190, 96), (421, 300, None)])
def test_stage_wise_bands_equal_the_single_global_graph_exactly(small_bundle, height, width, band_rows):
    segmenter = Segmenter(small_bundle)
    scheduler = segmenter.scheduler
    assert scheduler.global_stages, "the small bundle was exported with its stage graphs"
    reader, padded_height = _reader(segmenter, height, width)
    whole = global_features(scheduler.global_backend.activate(), reader.rows, padded_height)  # loaded on demand beside the stages
    staged = staged_global_features(scheduler.global_stages, reader.rows, padded_height, band_rows)
    assert staged.shape == whole.shape
    np.testing.assert_array_equal(staged, whole)


def test_several_bands_per_stage_really_happen(small_bundle):
    segmenter = Segmenter(small_bundle)
    calls: list[int] = []

    class Counting:
        def __init__(self, backend):
            self.backend = backend

        def infer(self, feed):
            calls.append(next(iter(feed.values())).shape[2])
            return self.backend.infer(feed)

    stages = tuple(GlobalStage(Counting(s.backend), s.stride, s.halo) for s in segmenter.scheduler.global_stages)
    reader, padded_height = _reader(segmenter, 700, 190)
    staged_global_features(stages, reader.rows, padded_height, 96)
    bands = stage_band_rows(stages, 96)
    assert bands[0] == 192  # at least 8 x its halo of 24
    assert len(calls) >= 2 * len(stages) and max(calls) < padded_height  # the first two stages run in several bands


@pytest.mark.parametrize(
    "band_rows,expected",
    [
        (512, [512, 256, 256, 256]),  # later stages widen to 32 x their halo: halos cost <= 6% of them
        (128, [192, 64, 64, 64]),  # ... but never past half the image band's rows, nor below 8 x the halo
        (2048, [2048, 512, 256, 256]),
    ],
)
def test_later_stages_take_wide_bands_within_the_image_band(band_rows, expected):
    stages = [GlobalStage(None, 4, 24), GlobalStage(None, 2, 8), GlobalStage(None, 2, 8), GlobalStage(None, 2, 8)]
    assert stage_band_rows(stages, band_rows) == expected


def test_a_manifest_whose_stages_do_not_chain_is_refused(small_bundle, tmp_path):
    data = json.loads((small_bundle / MANIFEST_NAME).read_text())
    data["global_stages"]["fp32"][1]["stride"] = 4
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="multiply to 64, not the feature stride 32"):
        read_manifest(tmp_path)
    data["global_stages"]["fp32"][1]["stride"] = 2
    data["global_stages"]["fp32"][1]["halo"] = 7
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="halo 7 a non-negative multiple"):
        read_manifest(tmp_path)


def test_a_bundle_without_stage_graphs_still_runs_its_single_global_graph(small_bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(small_bundle, copy)
    data = json.loads((copy / MANIFEST_NAME).read_text())
    del data["global_stages"]
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    image = np.random.default_rng(5).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    old, new = Segmenter(copy), Segmenter(small_bundle)
    assert not old.scheduler.global_stages and "stage by stage" not in old.plan(300, 260).describe()
    np.testing.assert_array_equal(old.segment(image), new.segment(image))
