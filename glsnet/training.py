"""Train GLSNet: Adam with the paper's two learning rates, focal + auxiliary losses, seeded and resumable.

Two modes (``TrainMode``). ``full``, the paper's: one step draws one scene, the global branch runs
on the whole image (or on the largest window a stated memory budget allows, said in the log when
it is less; glsnet.global_window) and the local batch is ``batch_size`` patches of that image.
``crop``, the fast mode for CPU smoke training: the global branch sees a random ``crop_size``
crop instead and the patches come from that crop (glsnet.data.samples). An epoch visits every training scene
once, in a seeded order. All randomness of step s comes from a generator seeded with (seed, s), so
a run resumed from a checkpoint saved at step s continues exactly as the uninterrupted run would.
The checkpoint (weights, optimizer state, step) is written atomically at every validation point
and at the end; validation scores whole held-out scenes (centre-cropped to ``val_crop``) with the
reference inference, as evaluation does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import torch

from glsnet.checkpoint import load_model, load_optimizer_state, save_checkpoint
from glsnet.config import SMALL, VARIANTS, VARIANTS_WITH_FPN, GLSNetConfig
from glsnet.data.layouts import Layout, open_scenes
from glsnet.data.loader import (
    StepSamples,
    scene_for_step,  # noqa: F401  (part of this module's interface since before the loader)
    step_loader,
)
from glsnet.data.scenes import Scenes
from glsnet.data.splits import read_split_file
from glsnet.data.synthetic import SyntheticScenes
from glsnet.device.memory import peak_memory_mib, reset_peak
from glsnet.device.precision import autocast, choose_amp, gradient_scaler
from glsnet.device.selection import resolve_device
from glsnet.device.step_rate import StepRate
from glsnet.evaluation import EvalOptions, excluded_from_means, json_safe, score_scenes
from glsnet.global_window import activation_bytes_per_pixel, global_window
from glsnet.losses import AuxMode, GLSNetLoss
from glsnet.model import GLSNet, build_glsnet
from glsnet.recipe.augmentation import flip_rot90
from glsnet.recipe.pretrained import check_weights_file, require_imagenet
from glsnet.recipe.schedule import Schedule, lr_factor, set_learning_rates
from glsnet.recipe.stages import Stages, enter_stage, stage_loss, stage_of
from runtime.accuracy.metrics import Scores
from runtime.algorithm.patch_grid import make_grid
from runtime.errors import GlsnetError, InputError

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"


class TrainMode(str, Enum):
    FULL = "full"  # the paper: the global branch sees the whole image (or the largest window the budget allows)
    CROP = "crop"  # fast: the global branch sees a random crop_size crop


# Where the paper is explicit (training): focal gamma 6, two auxiliary losses and 0.15 (which term it
# weighs is ambiguous: --aux-mode), Adam at
# 1e-4 (global branch) / 2e-5 (local branch), batches of six, the whole image globally. The fusion
# and aux heads sharing the global rate is ours (docs/model.md).
PAPER_TRAINING = {"mode": TrainMode.FULL, "batch_size": 6, "focal_gamma": 6.0, "aux_weight": 0.15, "global_lr": 1e-4, "local_lr": 2e-5}


@dataclass(frozen=True)
class TrainOptions:
    out: Path  # checkpoint to write (its optimizer state goes beside it)
    data: Path | None = None  # folder of labelled scenes; None trains on synthetic scenes
    layout: Layout = Layout.DEEPGLOBE
    config: GLSNetConfig = GLSNetConfig()
    steps: int | None = None  # total steps; None: ``epochs`` passes over the training scenes
    epochs: int = 1
    mode: TrainMode = TrainMode.CROP
    batch_size: int = 6  # patches per step (the paper's batch of 6)
    crop_size: int = 512  # crop mode: px of the random crop the global branch sees (the paper: the whole image)
    global_memory_mib: float | None = None  # full mode: activation budget of the global branch (None: no limit)
    global_lr: float = 1e-4  # global branch, fusion and global aux head
    local_lr: float = 2e-5  # local branch and its aux head
    focal_gamma: float = 6.0
    aux_weight: float = 0.15
    seed: int = 0
    resume: Path | None = None  # checkpoint to continue from; ``steps``/``epochs`` count from step 0
    val_every: int | None = None  # steps between validations and checkpoints; None: once per epoch
    val_fraction: float = 0.2  # share of the scenes held out (at least one scene stays for training)
    val_names: tuple[str, ...] = ()  # held-out scenes by name; overrides val_fraction (and an mmseg folder's val/)
    split_file: Path | None = None  # train/val/test name lists (glsnet.data.splits); overrides val_names and val_fraction
    val_crop: int | None = 512  # validate on centred crops of this size (None: whole scenes)
    mean_exclude: tuple[str, ...] | None = None  # classes left out of validation means; None: the dataset's convention
    synthetic_count: int = 8  # scenes when ``data`` is None
    synthetic_size: tuple[int, int] = (1024, 1024)
    global_weights: Path | None = None  # local ImageNet state-dict files for the two backbones (checked by sha256)
    local_weights: Path | None = None
    require_pretrained: bool = False  # refuse to start a new run without both ImageNet files (--preset paper)
    device: str = "cpu"  # auto, cpu, cuda or cuda:N (glsnet.device.selection)
    amp: str | None = None  # bf16, fp16 or off; None: bf16 on CUDA, off on the CPU
    workers: int | None = None  # loader processes; None: 4 on CUDA, 0 (in the training process) on the CPU
    log_every: int = 50  # steps between log lines with the loss, steps/s and peak memory (0: only at the end)
    schedule: Schedule = Schedule.CONSTANT  # poly: GLNet's (1 - t/T)^0.9 per stage
    weight_decay: float = 0.0  # Adam's L2 weight decay (GLNet: 5e-4)
    augment: bool = False  # GLNet's flip + rot90 of each scene
    all_patches: bool = False  # every patch of the image per step, batch_size at a time, gradients accumulated (GLNet)
    stages: Stages = Stages.JOINT  # glnet: global, then local (global fixed), then fusion, a third of the steps each
    aux_mode: AuxMode = AuxMode.IMPLEMENTED  # what the paper's 0.15 weighs (glsnet.losses)
    progress: bool = True

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps is None or self.steps >= 1,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "crop_size": self.crop_size >= 1,
            "global_memory_mib": self.global_memory_mib is None or self.global_memory_mib > 0,
            "val_every": self.val_every is None or self.val_every >= 1,
            "val_fraction": 0.0 <= self.val_fraction < 1.0,
            "synthetic_count": self.synthetic_count >= 1,
            "workers": self.workers is None or self.workers >= 0,
            "log_every": self.log_every >= 0,
            "weight_decay": self.weight_decay >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise InputError(f"training options out of range: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")
        if self.split_file is not None and self.val_names:
            raise InputError("give the validation scenes either by a split file or by val_names, not both")
        object.__setattr__(self, "mode", TrainMode(self.mode))
        object.__setattr__(self, "schedule", Schedule(self.schedule))
        object.__setattr__(self, "stages", Stages(self.stages))
        object.__setattr__(self, "aux_mode", AuxMode(self.aux_mode))

    def mode_note(self) -> str:
        """One line: which mode runs, and how it differs from the paper's training."""
        if self.mode is TrainMode.FULL:
            budget = f"within {self.global_memory_mib:,.0f} MiB" if self.global_memory_mib else "no memory budget"
            return (
                f"mode full (the paper's): the global branch sees the whole image each step ({budget}; a smaller "
                f"window is logged when it does not fit), the local batch is {self.batch_size} patches of it"
            )
        return (
            f"mode crop (fast, not the paper's): the global branch sees a random {self.crop_size} x {self.crop_size} px "
            f"crop each step, the local batch is {self.batch_size} patches of that crop; the paper's global branch sees "
            "the whole image (--mode full, or --preset paper)"
        )

    def paper_differences(self) -> list[str]:
        """Where these options and this configuration differ from the paper's explicit training setup."""
        out = [f"{name} {getattr(self, name).value if isinstance(getattr(self, name), Enum) else getattr(self, name)} "
               f"(paper: {value.value if isinstance(value, Enum) else value})"
               for name, value in PAPER_TRAINING.items() if getattr(self, name) != value]
        paper = GLSNetConfig()
        for name in ("global_backbone", "local_backbone", "fpn", "width", "patch_size"):
            if getattr(self.config, name) != getattr(paper, name):
                out.append(f"{name} {getattr(self.config, name)} (paper: {getattr(paper, name)})")
        if self.resume is None:
            random = [b for b, w in (("global", self.global_weights), ("local", self.local_weights)) if w is None]
            if random:
                out.append(f"{' and '.join(random)} backbone from random weights (paper: ImageNet-pretrained)")
        return out


@dataclass
class TrainResult:
    checkpoint: Path
    start_step: int
    final_step: int
    losses: list[dict[str, float]] = field(default_factory=list)  # per step run: total, main, global_aux, local_aux
    validation: list[tuple[int, Scores]] = field(default_factory=list)
    seconds_per_step: float = float("nan")
    peak_memory_mib: float | None = None  # CUDA: the allocator's peak; CPU: the process's peak RSS
    train_names: tuple[str, ...] = ()
    val_names: tuple[str, ...] = ()


# The recipe --preset paper adds where the paper is silent: GLNet's choices (docs/model.md says why
# each). The paper's own settings are PAPER_TRAINING.
PAPER_RECIPE = {
    "epochs": 50,  # GLNet: 50 epochs for its local stage (120 for its global ones)
    "schedule": Schedule.POLY,  # GLNet: poly, power 0.9, per iteration
    "weight_decay": 5e-4,  # GLNet: Adam weight_decay 5e-4
    "augment": True,  # GLNet: horizontal flip, rotation by 90/180/270
    "all_patches": True,  # GLNet: every patch of each image per step, 6 at a time, gradients accumulated
}

PRESETS: dict[str, GLSNetConfig] = {"default": GLSNetConfig(), "paper": GLSNetConfig(), "small": SMALL}
PRESET_MODES: dict[str, TrainMode] = {"default": TrainMode.CROP, "paper": TrainMode.FULL, "small": TrainMode.CROP}


def preset_config(preset: str = "default", variant: str | None = None, layout: Layout = Layout.DEEPGLOBE) -> GLSNetConfig:
    """A named preset ("paper"/"default": the paper's sizes; "small": CPU-sized), optionally with the
    backbones of an ablation variant, and with the classes of the data layout. "paper" also trains in
    the paper's mode (PRESET_MODES)."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[preset]
    if variant is not None:
        if variant not in VARIANTS:
            raise InputError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
        global_backbone, local_backbone = VARIANTS[variant]
        config = config.replace(global_backbone=global_backbone, local_backbone=local_backbone, fpn=variant in VARIANTS_WITH_FPN)
    return Layout(layout).dataset.config(config)


def open_training_scenes(options: TrainOptions) -> Scenes:
    if options.data is None:
        return SyntheticScenes(options.synthetic_count, *options.synthetic_size, seed=options.seed)
    return open_scenes(options.layout, options.data, options.config)


def split_scenes(names: tuple[str, ...], options: TrainOptions, held_out: tuple[str, ...] = ()) -> tuple[list[int], list[int]]:
    """(train indices, validation indices): the ``split_file``'s train and val lists if given, else
    ``val_names``, else the data's own ``held_out`` scenes (an mmsegmentation folder's val/), else a
    seeded ``val_fraction``. With a split file its test scenes are never trained on."""
    if options.split_file is not None:
        split = read_split_file(options.split_file)
        train = split.indices("train", names, options.split_file)
        if not train:
            raise InputError(f"{options.split_file}: the split file's train list is empty")
        return train, split.indices("val", names, options.split_file)
    chosen = options.val_names or held_out
    if chosen:
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            raise InputError(f"validation scene(s) {unknown} not in the data; available: {list(names)[:10]}...")
        val = [i for i, n in enumerate(names) if n in chosen]
    else:
        count = min(int(round(options.val_fraction * len(names))), len(names) - 1)
        order = np.random.default_rng([options.seed, 1]).permutation(len(names))
        val = sorted(int(i) for i in order[:count])
    train = [i for i in range(len(names)) if i not in val]
    if not train:
        raise InputError("every scene is held out for validation; leave at least one for training")
    return train, val


def _check_imagenet_files(options: TrainOptions) -> None:
    """A new run: --preset paper needs both ImageNet files; every file given must be a known one (sha256)."""
    if options.resume is not None:
        return
    config = options.config
    if options.require_pretrained:
        require_imagenet(config.global_backbone, config.local_backbone, options.global_weights, options.local_weights)
    for branch, backbone, path in (("global", config.global_backbone, options.global_weights), ("local", config.local_backbone, options.local_weights)):
        if path is not None:
            known = check_weights_file(path, backbone)
            what = f"{known.file_name} ({known.weights}), sha256 checked" if known else "no known file to check its sha256 against"
            log.info("%s backbone (%s) from %s: %s", branch, backbone, path, what)


def _initial_model(options: TrainOptions) -> tuple[GLSNet, int]:
    """(model in train mode, on the CPU, start step)."""
    torch.manual_seed(options.seed)
    if options.resume is not None:
        model, info = load_model(options.resume, expected=options.config)
        return model.train(), info["step"]
    model = build_glsnet(options.config, global_weights=options.global_weights, local_weights=options.local_weights)
    return model.train(), 0


def _optimizer(model: GLSNet, options: TrainOptions) -> torch.optim.Adam:
    """Adam over the paper's two parameter groups (built after the model is on its device, so a resumed
    optimizer state lands there too)."""
    optimizer = torch.optim.Adam(model.parameter_groups(options.global_lr, options.local_lr), weight_decay=options.weight_decay)
    if options.resume is not None and not load_optimizer_state(options.resume, optimizer):
        log.warning("%s: no optimizer state beside the checkpoint; Adam restarts from zero moments", options.resume)
    return optimizer


def _validate(model, scenes: Scenes, val: list[int], options: TrainOptions) -> Scores:
    model.eval()
    try:
        eval_options = EvalOptions(crop=options.val_crop, batch_size=options.batch_size, progress=False)
        matrix, _ = score_scenes(model, scenes, val, eval_options)
    finally:
        model.train()
    return matrix.scores(exclude=excluded_from_means(options.config, options.mean_exclude))


def train(options: TrainOptions) -> TrainResult:
    """Run (or continue) training to the requested step and write the checkpoint; see TrainOptions."""
    device = resolve_device(options.device)  # a missing GPU fails now, before any scene is read
    _check_imagenet_files(options)
    amp = choose_amp(options.amp, device)
    excluded_from_means(options.config, options.mean_exclude)  # checks the names: a wrong one fails now, not after an epoch
    scenes = open_training_scenes(options)
    train_idx, val_idx = split_scenes(scenes.names, options, scenes.validation_names)
    log.info("%s", options.mode_note())
    differences = options.paper_differences()
    log.info("differs from the paper's training: %s", "; ".join(differences) if differences else "nothing")
    total = options.steps if options.steps is not None else options.epochs * len(train_idx)
    every = options.val_every or len(train_idx)
    model, start = _initial_model(options)
    window_of = _window_chooser(model, options)  # measured on the CPU, before the model moves
    on_cuda = device.type == "cuda"
    if on_cuda:
        model.to(device, memory_format=torch.channels_last)
    optimizer = _optimizer(model, options)
    scaler = gradient_scaler(amp, device)
    criterion = GLSNetLoss(options.focal_gamma, options.aux_weight, options.config.ignore_index, options.aux_mode, model)
    workers = options.workers if options.workers is not None else (min(4, os.cpu_count() or 1) if on_cuda else 0)
    patches_per_step = ALL_PATCHES if options.all_patches else options.batch_size
    augment = flip_rot90 if options.augment else None
    samples = StepSamples(scenes, train_idx, options.config, window_of, patches_per_step, options.seed, start, total, augment)
    log.info("device %s, amp %s, %d loader worker(s)%s", device, amp.value, workers, ", channels-last, pinned memory" if on_cuda else "")
    result = TrainResult(
        Path(options.out), start, start,
        train_names=tuple(scenes.names[i] for i in train_idx), val_names=tuple(scenes.names[i] for i in val_idx),
    )

    def checkpoint(step: int) -> None:
        scores = None
        if val_idx:
            scores = _validate(model, scenes, val_idx, options)
            result.validation.append((step, scores))
        extra = {
            "train": {f.name: _plain(getattr(options, f.name)) for f in dataclasses.fields(options) if f.name not in ("config", "progress")},
            "val_scenes": list(result.val_names),
            "loss": result.losses[-1] if result.losses else None,
            "validation": scores.as_dict(options.config.classes) if scores is not None else None,
        }
        save_checkpoint(options.out, model, step=step, optimizer=optimizer, extra=json_safe(extra))

    reset_peak(device)
    rate = StepRate()
    base_rates = [options.global_lr, options.local_lr]
    with _progress_bar(options.progress, max(0, total - start)) as advance:
        for item in step_loader(samples, device, workers):
            step = item.step
            sample = item.sample.to(device, channels_last=True) if on_cuda else item.sample
            stage, begin, end = stage_of(step, total, options.stages)
            enter_stage(model, stage)
            if options.schedule is not Schedule.CONSTANT:
                set_learning_rates(optimizer, base_rates, lr_factor(options.schedule, step, begin, end))
            optimizer.zero_grad(set_to_none=True)
            parts = _forward_backward(model, criterion, sample, options, amp, device, scaler, stage)
            if not all(np.isfinite(v) for v in parts.values()):
                raise GlsnetError(
                    f"the loss became {parts['total']} at step {step} ({scenes.names[item.scene]}); lower the learning "
                    f"rates (--global-lr {options.global_lr}, --local-lr {options.local_lr}) or resume from the last checkpoint"
                )
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
            result.losses.append(parts)
            result.final_step = step + 1
            rate.tick()
            advance(parts["total"])
            if options.log_every and (result.final_step - start) % options.log_every == 0:
                log.info("step %d/%d: loss %.4f, %s", result.final_step, total, parts["total"], rate.describe(device))
            if result.final_step % every == 0 and result.final_step < total:
                checkpoint(result.final_step)
    model.train().requires_grad_(True)
    if result.losses:
        result.seconds_per_step = rate.seconds_per_step()
        result.peak_memory_mib = peak_memory_mib(device)
        log.info("trained %d step(s): %s", len(result.losses), rate.describe(device))
    checkpoint(result.final_step)
    return result


ALL_PATCHES = 1 << 30  # make_sample takes min(this, the grid's patches): all of them


def _forward_backward(model, criterion, sample, options: TrainOptions, amp, device, scaler, stage) -> dict[str, float]:
    """Forward and backward one step's sample; the loss parts as floats.

    At most ``batch_size`` patches: one forward of the whole model, as the paper's step. More (``all_patches``):
    the global branch runs once, the patches go through in chunks of ``batch_size``, each chunk's loss is
    weighted by its share of the patches and back-propagated at once (its activations freed), the global
    branch's graph kept until the last chunk; the gradients add up to those of the mean over all patches.
    """
    count = sample.patches.shape[0]
    chunks = [(i, min(i + options.batch_size, count)) for i in range(0, count, options.batch_size)]
    if len(chunks) == 1:
        with autocast(amp, device):
            parts = criterion(model(sample.image, sample.patches, sample.boxes), sample.patch_labels, sample.crop_labels)
            loss = stage_loss(parts, stage, options.aux_weight)
        _backward(loss, scaler)
        return parts.as_floats()
    totals: dict[str, float] = {}
    with autocast(amp, device):
        global_features = model.global_branch(sample.image)
    for index, (first, last) in enumerate(chunks):
        share = (last - first) / count
        with autocast(amp, device):
            output = model.patch_outputs(global_features, sample.patches[first:last], sample.boxes[first:last])
            parts = criterion(output, sample.patch_labels[first:last], sample.crop_labels)
            loss = stage_loss(parts, stage, options.aux_weight) * share
        _backward(loss, scaler, retain_graph=index < len(chunks) - 1)
        for name, value in parts.as_floats().items():
            totals[name] = totals.get(name, 0.0) + share * value
    return totals


def _backward(loss: torch.Tensor, scaler, retain_graph: bool = False) -> None:
    if not loss.requires_grad:
        return  # a stage whose loss does not reach any trained part (cannot happen with the stages defined)
    (loss if scaler is None else scaler.scale(loss)).backward(retain_graph=retain_graph)


def _window_chooser(model, options: TrainOptions) -> Callable[[tuple[int, int]], int | tuple[int, int]]:
    """scene (height, width) -> what make_sample crops: ``crop_size`` in crop mode; in full mode the whole
    scene or the budget's window (measured once, logged once per scene size)."""
    if options.mode is TrainMode.CROP:
        if options.global_memory_mib is not None:
            log.warning("--global-memory-mib applies to mode full; mode crop ignores it (the global branch sees --crop-size crops)")
        return lambda shape: options.crop_size
    bytes_per_pixel = activation_bytes_per_pixel(model, options.focal_gamma)

    @functools.lru_cache(maxsize=None)
    def window(shape: tuple[int, int]) -> tuple[int, int]:
        chosen = global_window(*shape, bytes_per_pixel, options.global_memory_mib, options.config.patch_size)
        (log.info if chosen.whole else log.warning)("%s", chosen.describe(*shape, options.global_memory_mib))
        patches = len(make_grid(chosen.height, chosen.width, options.config.patch_size, options.config.min_overlap))
        if patches < options.batch_size:
            log.warning(
                "a %d x %d px window holds %d patch(es) of %d px: local batches of %d, not %d as the paper's "
                "ultra-high-resolution scenes give (tiles such as mmsegmentation's 512 px ones are too small for it)",
                chosen.width, chosen.height, patches, options.config.patch_size, patches, options.batch_size,
            )
        return chosen.height, chosen.width

    return lambda shape: window(tuple(shape))


@contextlib.contextmanager
def _progress_bar(enabled: bool, steps: int) -> Iterator[Callable[[float], None]]:
    """Yield ``advance(loss)``, which moves a rich progress bar showing the loss one step (or does nothing)."""
    if not enabled:
        yield lambda loss: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("train", total=steps, loss="-")
        yield lambda loss: bar.update(task, advance=1, loss=f"{loss:.4f}")


def _plain(value: object) -> object:
    """Options as JSON values: paths and enums as strings, tuples as lists."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
