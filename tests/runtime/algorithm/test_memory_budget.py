"""The memory budget: sizes parsed, batch size and global banding chosen from the backends' estimates."""

from __future__ import annotations

import pytest

from runtime.algorithm.memory_budget import DEFAULT_BATCH_SIZE, DEFAULT_STAGED_BAND_ROWS, MemoryModel, lowest_budget, plan_memory
from runtime.byte_sizes import parse_memory_size
from runtime.errors import InputError


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


def test_a_tight_budget_picks_the_least_time_plan_that_fits():
    whole = 200_000_000 + 6_000_000 + 2448 * 2448 * 100
    plan = plan_memory(model(), budget_bytes=whole - 1)
    # banding the single global graph recomputes a 256 px halo per band: one patch less per batch is cheaper
    assert plan.batch_size == DEFAULT_BATCH_SIZE - 1 and plan.global_band_rows is None
    assert plan.estimate_bytes <= whole - 1
    smallest_band = 200_000_000 + (128 + 512) * 2448 * 100
    tight = plan_memory(model(), budget_bytes=smallest_band + 2_500_000)
    assert tight.batch_size == 2 and tight.global_band_rows == 128 and "bands of 128 rows" in tight.describe()


@pytest.mark.parametrize("budget_mb", [300, 450, 600, 800, 1000])
def test_the_chosen_plan_has_the_least_time_of_all_that_fit(budget_mb):
    m = staged_model()
    budget = budget_mb * 1_000_000
    plan = plan_memory(m, budget_bytes=budget)
    assert plan.estimate_bytes <= budget and plan.staged
    rows = [None] + list(range(2432, 127, -32))
    for batch in range(1, 17):
        for r in rows:
            total = m.fixed_bytes + m.batch_bytes(batch) + m.global_bytes(r)
            if total <= budget:
                assert m.time_estimate(batch, r) >= plan.time_estimate - 1e-9, (batch, r, plan)


def staged_model(height: int = 2448) -> MemoryModel:
    """Stage-wise global branch: 40 bytes per pixel of band, 5% recomputed per band, 20 MB per patch in a batch."""
    whole_work = 10.0
    return MemoryModel(
        fixed_bytes=200_000_000,
        batch_bytes=lambda b: b * 20_000_000,
        global_bytes=lambda rows: (height if rows is None else rows) * 2448 * 40,
        padded_height=height,
        padded_width=2448,
        patches=36,
        halo=256,
        staged=True,
        global_cost=lambda rows: whole_work * (1.0 if rows is None else 1 + 0.05 * -(-height // rows)),
    )


def test_a_staged_global_branch_is_banded_by_default_so_memory_is_flat_in_height():
    square, tall = plan_memory(staged_model()), plan_memory(staged_model(9792))
    assert square.global_band_rows == tall.global_band_rows == DEFAULT_STAGED_BAND_ROWS
    assert square.estimate_bytes == tall.estimate_bytes
    assert "stage by stage" in square.describe()


def test_the_lowest_budget_is_accepted_and_anything_below_refused():
    m = staged_model()
    low = lowest_budget(m)
    assert plan_memory(m, budget_bytes=low).estimate_bytes <= low
    with pytest.raises(InputError, match="too small"):
        plan_memory(m, budget_bytes=low - 1)


def test_a_budget_that_nothing_fits_is_a_clear_error():
    with pytest.raises(InputError, match="too small for this bundle.*--max-memory"):
        plan_memory(model(), budget_bytes=100_000_000)
    with pytest.raises(InputError, match="batch size must be >= 1"):
        plan_memory(model(), batch_size=0)


# ------------------------------------------------------------------------------------------ device memory
from runtime.algorithm.memory_budget import DEVICE_HEADROOM, plan_device_batch  # noqa: E402


def device_buffers(batch: int) -> int:
    """100 MB fixed (image, features, stitching band) + 30 MB per patch in a batch."""
    return 100_000_000 + 30_000_000 * batch


def test_auto_takes_the_largest_batch_that_free_device_memory_holds():
    free = 2_000_000_000
    plan = plan_device_batch(device_buffers, free_bytes=free, batch_size="auto")
    usable = free * (1 - DEVICE_HEADROOM)
    assert plan.batch_size == int((usable - 100_000_000) // 30_000_000) == 56  # far more than the paper's 6
    assert plan.estimate_bytes <= usable < device_buffers(plan.batch_size + 1)
    assert "free device memory" in plan.describe()


def test_auto_stays_inside_the_engines_profile_and_counts_scratch_per_batch():
    plan = plan_device_batch(device_buffers, free_bytes=80_000_000_000, batch_size="auto", max_batch=32)
    assert plan.batch_size == 32
    scratch = plan_device_batch(device_buffers, lambda b: 20_000_000 * b, free_bytes=2_000_000_000, batch_size="auto")
    assert scratch.batch_size == int((1_800_000_000 - 100_000_000) // 50_000_000) and scratch.scratch_bytes == 20_000_000 * scratch.batch_size
    with pytest.raises(InputError, match="cannot hold even a batch of 4"):
        plan_device_batch(device_buffers, free_bytes=200_000_000, batch_size="auto", min_batch=4)


def test_a_device_budget_is_honoured_like_the_host_budget():
    budget = 700_000_000
    plan = plan_device_batch(device_buffers, free_bytes=80_000_000_000, budget_bytes=budget, fixed_bytes=150_000_000)
    assert plan.batch_size == 15 and plan.estimate_bytes + 150_000_000 <= budget < device_buffers(16) + 150_000_000
    assert "budget" in plan.describe()
    # a budget above what is free is capped by what is free (less the headroom)
    capped = plan_device_batch(device_buffers, free_bytes=1_000_000_000, budget_bytes=10_000_000_000)
    assert capped.limit_bytes == 900_000_000 and capped.batch_size == 26
    # without a free-memory reading (no device asked) the budget alone decides
    assert plan_device_batch(device_buffers, budget_bytes=budget).batch_size == 20


def test_a_fixed_batch_is_checked_against_the_device_budget():
    assert plan_device_batch(device_buffers, budget_bytes=700_000_000, batch_size=6).batch_size == 6
    with pytest.raises(InputError, match=r"batch 30 needs about .* --max-device-memory leaves .*lower --batch-size"):
        plan_device_batch(device_buffers, budget_bytes=700_000_000, batch_size=30)
    with pytest.raises(InputError, match="positive number or 'auto'"):
        plan_device_batch(device_buffers, budget_bytes=700_000_000, batch_size="many")
    with pytest.raises(InputError, match="needs --max-device-memory or the device's free memory"):
        plan_device_batch(device_buffers)
