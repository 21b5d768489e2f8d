"""Score a checkpoint on a labelled folder with the reference whole-image inference, and print the scores.

Scenes can be shrunk for speed: ``downscale`` averages f x f pixel blocks (labels keep the centre
pixel of each block), ``crop`` keeps a centred window. Scores come from one confusion matrix over
all scenes (runtime.accuracy.metrics); the means average the classes the papers average for the dataset
(glsnet.data.datasets: DeepGlobe without unknown, Vaihingen without clutter), or those asked for.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from glsnet.config import GLSNetConfig
from glsnet.data.datasets import mean_exclusions
from glsnet.data.layouts import Layout, open_scenes
from glsnet.data.scenes import Scenes
from glsnet.data.splits import SPLIT_NAMES, read_split_file
from glsnet.device.inference_memory import InferenceMemory, InferenceMemoryMeter
from glsnet.device.selection import resolve_device
from runtime.accuracy.metrics import ConfusionMatrix, Scores
from runtime.atomic_file import write_text_atomic
from runtime.errors import InputError
from runtime.image_io.preprocess import normalize


@dataclass(frozen=True)
class EvalOptions:
    layout: Layout = Layout.DEEPGLOBE
    downscale: int = 1  # average f x f blocks before inference (1: full resolution)
    crop: int | None = None  # centred crop of at most crop x crop px, after downscaling
    limit: int | None = None  # score only the first N scenes (sorted by name)
    batch_size: int = 6  # patches per forward pass
    progress: bool = True
    mean_exclude: tuple[str, ...] | None = None  # classes left out of the means; None: the dataset's convention
    split: str = "val"  # the split scored: a split file's list, or an mmsegmentation folder's split (train/val)
    split_file: Path | None = None  # train/val/test name lists (glsnet.data.splits)
    device: str = "cpu"  # auto, cpu, cuda or cuda:N (glsnet.device.selection)

    def __post_init__(self) -> None:
        if self.downscale < 1:
            raise InputError(f"downscale must be >= 1, got {self.downscale}")
        if self.crop is not None and self.crop < 1:
            raise InputError(f"crop must be >= 1 px, got {self.crop}")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"limit must be >= 1, got {self.limit}")
        if self.split not in SPLIT_NAMES:
            raise InputError(f"split must be one of {list(SPLIT_NAMES)}, got {self.split!r}")
        if self.split == "test" and self.split_file is None:
            raise InputError("--split test needs --split-file: the test scenes are those the split file lists")


@dataclass(frozen=True)
class EvaluationResult:
    scores: Scores
    class_names: tuple[str, ...]
    scenes: tuple[str, ...]
    pixels: int
    checkpoint_step: int = 0
    options: dict = field(default_factory=dict)
    gpu_memory: InferenceMemory | None = None  # CUDA only: the Table-3-like figure (glsnet.device.inference_memory)

    def as_dict(self) -> dict:
        return {
            "scenes": list(self.scenes),
            "pixels": self.pixels,
            "checkpoint_step": self.checkpoint_step,
            "options": self.options,
            "gpu_memory": self.gpu_memory.as_dict() if self.gpu_memory is not None else None,
            "scores": json_safe(self.scores.as_dict(self.class_names)),
        }


def excluded_from_means(config: GLSNetConfig, override: tuple[str, ...] | None = None) -> tuple[int, ...]:
    """Classes left out of mean F1 / mIoU: ``override`` (class names) or the dataset's convention."""
    return mean_exclusions(tuple(config.classes), override)


def shrink(image: np.ndarray, labels: np.ndarray, downscale: int = 1, crop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Downscale by an integer factor (block mean for pixels, block centre for labels), then centre-crop."""
    if downscale > 1:
        f = downscale
        h, w = labels.shape[0] // f, labels.shape[1] // f
        if h == 0 or w == 0:
            raise InputError(f"downscale {f} leaves nothing of a {labels.shape[1]} x {labels.shape[0]} px scene")
        blocks = image[: h * f, : w * f].reshape(h, f, w, f, image.shape[2]).astype(np.float32)
        image = np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)
        labels = labels[f // 2 :: f, f // 2 :: f][:h, :w]
    if crop is not None:
        y = max(0, (labels.shape[0] - crop) // 2)
        x = max(0, (labels.shape[1] - crop) // 2)
        image, labels = image[y : y + crop, x : x + crop], labels[y : y + crop, x : x + crop]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def score_scenes(model, scenes: Scenes, indices: list[int], options: EvalOptions) -> tuple[ConfusionMatrix, int]:
    """Confusion matrix of ``model`` (torch GLSNet) over the chosen scenes, and the number of pixels scored."""
    from glsnet.inference import predict_mask

    config = model.config
    device = next(model.parameters()).device
    matrix = ConfusionMatrix(config.num_classes, config.ignore_index)
    pixels = 0
    for index in _tracked(indices, options.progress, "evaluating"):
        image, labels = shrink(*scenes.read(index), options.downscale, options.crop)
        pixels_in = torch.from_numpy(normalize(image, config.normalization)).to(device)
        prediction = predict_mask(model, pixels_in, options.batch_size)
        matrix.update(prediction, labels)
        pixels += labels.size
    return matrix, pixels


def evaluate(checkpoint: str | Path, folder: str | Path, options: EvalOptions = EvalOptions()) -> EvaluationResult:
    """Load ``checkpoint`` and score it on every scene of ``folder`` (or the first ``options.limit``)."""
    from glsnet.checkpoint import load_model

    device = resolve_device(options.device)
    model, info = load_model(checkpoint)
    model.to(device)
    excluded = excluded_from_means(model.config, options.mean_exclude)  # checks the names before any scene is scored
    if options.split_file is not None:
        scenes = open_scenes(options.layout, folder, model.config)
        indices = read_split_file(options.split_file).indices(options.split, scenes.names, options.split_file)
        if not indices:
            raise InputError(f"{options.split_file}: the split file's {options.split} list is empty")
    else:
        scenes = open_scenes(options.layout, folder, model.config, splits=(options.split,))
        indices = list(range(len(scenes.names)))
    indices = indices[: options.limit]
    meter = InferenceMemoryMeter(device, options.batch_size)
    with meter.measuring():
        matrix, pixels = score_scenes(model, scenes, indices, options)
    return EvaluationResult(
        scores=matrix.scores(exclude=excluded),
        class_names=tuple(model.config.classes),
        scenes=tuple(scenes.names[i] for i in indices),
        pixels=pixels,
        checkpoint_step=info["step"],
        gpu_memory=meter.result,
        options={"layout": Layout(options.layout).value, "downscale": options.downscale, "crop": options.crop,
                 "split": options.split if Layout(options.layout).is_mmseg or options.split_file else None,
                 "split_file": str(options.split_file) if options.split_file else None},
    )


def write_scores_json(path: str | Path, result: EvaluationResult) -> None:
    write_text_atomic(path, json.dumps(result.as_dict(), indent=2) + "\n")


def print_scores(scores: Scores, class_names: tuple[str, ...], title: str = "scores") -> None:
    """A rich table of per-class precision, recall, F1 and IoU (in %) and labelled pixels, then OA, mean F1 and mIoU."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("class", "precision", "recall", "F1", "IoU", "pixels"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for i, name in enumerate(class_names):
        note = "" if i in scores.classes_in_mean else (" (excluded from means)" if i in scores.excluded else " (not in means)")
        table.add_row(
            name + note, _pct(scores.precision[i]), _pct(scores.recall[i]), _pct(scores.f1[i]), _pct(scores.iou[i]),
            f"{int(scores.support[i]):,}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"overall accuracy {_pct(scores.overall_accuracy)}   mean F1 {_pct(scores.mean_f1)}   mIoU {_pct(scores.miou)}\n"
        f"({scores.mean_note(class_names)})", markup=False,
    )


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def json_safe(value):
    """NaN (undefined scores) -> None, recursively, so the JSON written is standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def _tracked(items: list[int], progress: bool, description: str):
    if not progress:
        return items
    from rich.progress import track

    return track(items, description=description, transient=True)
