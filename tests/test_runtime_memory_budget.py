"""The memory budget: sizes parsed, batch size and global banding chosen from the backends' estimates."""

from __future__ import annotations

import pytest

from runtime.errors import InputError
from runtime.memory_budget import DEFAULT_BATCH_SIZE, MemoryModel, parse_memory_size, plan_memory


@pytest.mark.parametrize(
    "text,expected",
    [("2GB", 2_000_000_000), ("1.5GiB", int(1.5 * 1024**3)), ("800MB", 800_000_000), ("4096", 4096), (" 3 gb ", 3_000_000_000), (None, None), (7, 7)],
)
def test_parse_memory_size(text, expected):
    assert parse_memory_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "2 parsecs", "-1GB", "0MB", "", 0, -5, True])
def test_bad_memory_sizes(text):
    with pytest.raises(InputError):
        parse_memory_size(text)


def model(height: int = 2448, width: int = 2448, patches: int = 36) -> MemoryModel:
    """1 MB per patch in a batch, 100 bytes per global input pixel, 200 MB fixed."""
    return MemoryModel(
        fixed_bytes=200_000_000,
        batch_bytes=lambda b: b * 1_000_000,
        global_bytes=lambda rows: rows * width * 100,
        padded_height=height,
        padded_width=width,
        patches=patches,
        halo=256,
    )


def test_no_budget_uses_the_default_batch_and_whole_image_global():
    plan = plan_memory(model())
    assert plan.batch_size == DEFAULT_BATCH_SIZE and plan.global_band_rows is None and plan.budget_bytes is None
    assert plan_memory(model(), batch_size=3).batch_size == 3
    assert plan_memory(model(patches=2)).batch_size == 2


def test_no_budget_still_bands_the_global_branch_of_tall_images():
    plan = plan_memory(model(height=9792))
    assert plan.global_band_rows is not None and plan.global_band_rows % 32 == 0
    assert (plan.global_band_rows + 2 * 256) * 2448 <= 6_500_000


def test_a_generous_budget_grows_the_batch():
    plan = plan_memory(model(), budget_bytes=10**10)
    assert plan.global_band_rows is None and plan.batch_size > DEFAULT_BATCH_SIZE
    assert plan.estimate_bytes <= 10**10


def test_a_tight_budget_bands_the_global_branch_first_then_shrinks_the_batch():
    whole = 200_000_000 + 6_000_000 + 2448 * 2448 * 100
    plan = plan_memory(model(), budget_bytes=whole - 1)
    assert plan.batch_size == DEFAULT_BATCH_SIZE and plan.global_band_rows is not None
    assert plan.estimate_bytes <= whole - 1
    assert "bands of" in plan.describe()
    smallest_band = 200_000_000 + (128 + 512) * 2448 * 100
    tight = plan_memory(model(), budget_bytes=smallest_band + 2_500_000)
    assert tight.batch_size == 2 and tight.global_band_rows == 128


def test_a_budget_that_nothing_fits_is_a_clear_error():
    with pytest.raises(InputError, match="too small for this bundle.*--max-memory"):
        plan_memory(model(), budget_bytes=100_000_000)
    with pytest.raises(InputError, match="batch size must be >= 1"):
        plan_memory(model(), batch_size=0)
