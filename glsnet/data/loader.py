"""The training samples of steps start..total as a torch DataLoader: prefetched, pinned on CUDA.

Sample s depends only on (seed, s): the scene of step s (``scene_for_step``), the crop and patches
drawn from a generator seeded with (seed, 3, s), and, when augmentation is on, a flip / rotation
drawn from (seed, 4, s). So background workers produce exactly what the single-process loop did,
in the same order, and a resumed run sees the same samples as an uninterrupted one. With no workers
and no augmentation the loader is the former loop (``tests/glsnet/device/test_device_training.py``).
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from glsnet.config import GLSNetConfig
from glsnet.data.samples import TrainingSample, make_sample
from glsnet.data.scenes import Scenes
from runtime.image_io.preprocess import check_bands

Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def scene_for_step(step: int, train: list[int], seed: int) -> int:
    """The scene of step ``step``: epoch e = step // len(train) visits ``train`` in order permutation(seed, e)."""
    epoch, position = divmod(step, len(train))
    order = np.random.default_rng([seed, 2, epoch]).permutation(len(train))
    return train[int(order[position])]


@dataclass(frozen=True)
class StepSample:
    step: int
    scene: int
    sample: TrainingSample

    def pin_memory(self) -> StepSample:
        """Called by the DataLoader's pinning thread (pin_memory=True): page-locked copies for async copies."""
        return StepSample(self.step, self.scene, self.sample.pin_memory())


class StepSamples(Dataset):
    """Item i is the sample of step ``start + i``."""

    def __init__(
        self,
        scenes: Scenes,
        train: list[int],
        config: GLSNetConfig,
        window_of: Callable[[tuple[int, int]], int | tuple[int, int]],
        patches_per_step: int,
        seed: int,
        start: int,
        total: int,
        augment: Augment | None = None,
    ) -> None:
        self.scenes, self.train, self.config, self.window_of = scenes, train, config, window_of
        self.patches_per_step, self.seed, self.start, self.total, self.augment = patches_per_step, seed, start, total, augment
        self._read = functools.lru_cache(maxsize=16)(scenes.read)

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __getitem__(self, index: int) -> StepSample:
        step = self.start + index
        rng = np.random.default_rng([self.seed, 3, step])
        scene = scene_for_step(step, self.train, self.seed)
        image, labels = self._read(scene)
        check_bands(image.shape[2], self.config.normalization, self.scenes.source(scene))
        if self.augment is not None:
            image, labels = self.augment(image, labels, np.random.default_rng([self.seed, 4, step]))
        sample = make_sample(image, labels, self.config, self.window_of(labels.shape), self.patches_per_step, rng)
        return StepSample(step, scene, sample)


def step_loader(samples: StepSamples, device: torch.device, workers: int = 0, prefetch: int = 2) -> DataLoader:
    """Samples in step order; ``workers`` background processes prepare the next ones while the device
    trains (each prefetching ``prefetch``), pinned on CUDA so the copy to the device overlaps compute."""
    # fork: the workers inherit the scenes and the window chooser (closures, not picklable) and never touch
    # CUDA, so forking after the model moved to the GPU is safe; Python 3.14 would otherwise pick forkserver
    context = "fork" if workers > 0 and "fork" in multiprocessing.get_all_start_methods() else None
    return DataLoader(
        samples, batch_size=None, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
        prefetch_factor=prefetch if workers > 0 else None, persistent_workers=False, multiprocessing_context=context,
    )
