"""``glsnet-train``: thin typer commands over glsnet.training, glsnet.evaluation and glsnet.data.synthetic.

Heavy modules (torch) are imported inside the commands, so ``--help`` and ``synth`` start fast.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from runtime.cli_errors import run_app
from runtime.cli_options import parse_bands
from runtime.errors import InputError

app = typer.Typer(
    help="Train and evaluate GLSNet on DeepGlobe, ISPRS Vaihingen/Potsdam or LoveDA folders, or on seeded synthetic scenes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class LayoutChoice(str, Enum):
    deepglobe = "deepglobe"
    vaihingen = "vaihingen"
    mmseg_vaihingen = "mmseg-vaihingen"
    mmseg_potsdam = "mmseg-potsdam"
    mmseg_loveda = "mmseg-loveda"


class PresetChoice(str, Enum):
    paper = "paper"
    default = "default"
    small = "small"


class ModeChoice(str, Enum):
    full = "full"
    crop = "crop"


class SplitChoice(str, Enum):
    train = "train"
    val = "val"
    test = "test"


LAYOUT_OPTION_HELP = (
    "deepglobe: <id>_sat.jpg + <id>_mask.png; vaihingen: top/*.tif + gts/*.tif; mmseg-vaihingen / mmseg-potsdam / "
    "mmseg-loveda: mmsegmentation converter output (img_dir/{train,val} + ann_dir/{train,val}, class-index PNGs)."
)
DEVICE_HELP = (
    "Where to compute: auto (CUDA when torch sees a GPU, else the CPU), cpu, cuda or cuda:N; a CUDA device that is "
    "not there is a one-line error (exit 2). On CUDA the model and images are channels-last. The CPU path computes "
    "exactly what it did before this option existed."
)
AMP_HELP = (
    "Mixed precision on CUDA (ours; the paper does not say): bf16 (autocast, no loss scaling), fp16 (autocast with a "
    "gradient scaler) or off (fp32). The CPU allows only off. Default: bf16 on CUDA, off on the CPU."
)
SPLIT_FILE_HELP = (
    "JSON split file with 'train', 'val' and 'test' lists of scene names (written by `glsnet-train split`; "
    "the ISPRS Vaihingen 16/17 tiles are in docs/splits/)."
)
MEAN_EXCLUDE_HELP = (
    "Classes left out of mean F1 / mIoU, comma-separated names, or 'none'. Default: as the papers report the "
    "dataset (DeepGlobe: unknown; Vaihingen, Potsdam: clutter; LoveDA: none)."
)


class ScheduleChoice(str, Enum):
    constant = "constant"
    poly = "poly"


class PatchesChoice(str, Enum):
    batch = "batch"
    all = "all"


class StagesChoice(str, Enum):
    joint = "joint"
    glnet = "glnet"


class AuxModeChoice(str, Enum):
    implemented = "implemented"
    glnet = "glnet"


class AmpChoice(str, Enum):
    bf16 = "bf16"
    fp16 = "fp16"
    off = "off"


class VariantChoice(str, Enum):
    shallow_deep = "shallow-deep"
    shallow_shallow = "shallow-shallow"
    deep_deep = "deep-deep"


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' (or 'N' for a square) -> (height, width)."""
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise InputError(f"--size {text!r}: expected HEIGHTxWIDTH in pixels, e.g. 2448x2448")
    return values


@app.command()
def train(
    out: Path = typer.Option(Path("glsnet.safetensors"), "--out", "-o", help="Checkpoint to write (optimizer state goes beside it)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder of labelled scenes (see --layout)."),
    layout: LayoutChoice = typer.Option(LayoutChoice.deepglobe, help=LAYOUT_OPTION_HELP + " mmseg folders train on train/ and validate on val/."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Train on seeded synthetic scenes instead of --data."),
    synthetic_count: int = typer.Option(8, help="Synthetic scenes to generate (with --synthetic)."),
    synthetic_size: str = typer.Option("1024x1024", help="Synthetic scene size HxW (with --synthetic)."),
    preset: Optional[PresetChoice] = typer.Option(None, help="paper: the paper's sizes and training (mode full) with GLNet's recipe where the paper is silent (50 epochs, poly, weight decay 5e-4, flip + rot90, all patches per step; docs/model.md), refusing to start without both ImageNet files (--imagenet-global/--imagenet-local) unless --no-pretrained; default: the paper's sizes, crop mode; small: CPU-sized (width 64, patch 128), crop mode. Default: default, or the --resume checkpoint's."),
    mode: Optional[ModeChoice] = typer.Option(None, help="full: the paper's training, the global branch on the whole image each step (or the largest window --global-memory-mib allows, logged when less), six patches of it locally; crop: fast, for CPU smoke runs, the global branch on a random --crop-size crop and the patches from that crop (differs from the paper). Default: the preset's (paper: full, else crop), or the --resume checkpoint's."),
    global_memory_mib: Optional[float] = typer.Option(None, help="Mode full: activation memory budget of the global branch in MiB; images that need more are trained on the largest window that fits (logged). Default: no limit."),
    bands: Optional[str] = typer.Option(None, help="Image bands the model reads, 0-based in file order, e.g. 3,0,1 for IRRG from RGBIR tiles (default: 0,1,2)."),
    mean_exclude: Optional[str] = typer.Option(None, help=MEAN_EXCLUDE_HELP),
    variant: Optional[VariantChoice] = typer.Option(None, help="The paper's ablation (Table 4): shallow-deep (GLSNet, R18/R50), shallow-shallow (R18/R18), deep-deep (R50/R50, each followed by an FPN; its wiring is ours, see docs/model.md)."),
    steps: Optional[int] = typer.Option(None, help="Total steps (counted from 0, also when resuming). Default: --epochs passes."),
    epochs: Optional[int] = typer.Option(None, help="Passes over the training scenes (one step per scene each), when --steps is not given. The paper: not stated; GLNet: 50 (its local stage; 120 for its global ones). Default: 50 with --preset paper (GLNet), else 1 (ours)."),
    schedule: Optional[ScheduleChoice] = typer.Option(None, help="Learning-rate schedule. The paper: not stated; poly: GLNet's lr x (1 - t/T)^0.9 per step (per stage with --stages glnet), each group keeping its own base rate (ours: GLNet set all groups to one rate); constant: ours. Default: poly with --preset paper, else constant."),
    weight_decay: Optional[float] = typer.Option(None, help="Adam L2 weight decay. The paper: not stated; GLNet: 5e-4. Default: 5e-4 with --preset paper, else 0 (ours)."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Flip + rot90 of each scene (GLNet: horizontal flip with p 0.5, then with p 0.5 a rotation by 90, 180 or 270 degrees). The paper: not stated. Default: on with --preset paper, else off."),
    patches: Optional[PatchesChoice] = typer.Option(None, help="Patches of the image per step. batch: --batch-size patches drawn at random (ours); all: every patch of the image, --batch-size at a time, gradients accumulated, one optimiser step per image (GLNet). The paper: batches of 6, not how many per image. Default: all with --preset paper, else batch."),
    stages: Optional[StagesChoice] = typer.Option(None, help="Default joint (or the --resume checkpoint's). joint: everything trained together (ours: the paper names no stages); glnet: GLNet's staged training adapted to GLSNet: the global branch alone, then the local branch with the global one fixed, then the fusion with both fixed, a third of the steps each (the split is ours)."),
    aux_mode: Optional[AuxModeChoice] = typer.Option(None, help="Default implemented (or the --resume checkpoint's). What the paper's 0.15 weighs. implemented: each auxiliary focal loss x --aux-weight (our reading of the GLSNet text); glnet: GLNet's weighting, auxiliary losses x 1.0 plus --aux-weight x a feature-map regulariser (mean squared difference of the local tokens and the global tokens at the same pixels). See docs/model.md."),
    batch_size: int = typer.Option(6, help="Patches per step (the paper: 6)."),
    crop_size: int = typer.Option(512, help="Mode crop: pixels of the random crop the global branch sees (the paper: the whole image)."),
    focal_gamma: float = typer.Option(6.0, help="Focal loss gamma (the paper: 6)."),
    aux_weight: float = typer.Option(0.15, help="Weight of each of the two auxiliary losses (the paper: 0.15; see docs/model.md on its ambiguity)."),
    global_lr: float = typer.Option(1e-4, help="Adam learning rate of the global branch (the paper: 1e-4), also used for the fusion and the global aux head (ours)."),
    local_lr: float = typer.Option(2e-5, help="Adam learning rate of the local branch and its aux head (the paper: 2e-5)."),
    seed: int = typer.Option(0, help="Seed of the initial weights, the split and every crop."),
    resume: Optional[Path] = typer.Option(None, help="Continue from this checkpoint (weights, optimizer, step)."),
    val_every: Optional[int] = typer.Option(None, help="Steps between validation + checkpoint. Default: once per epoch."),
    val_fraction: float = typer.Option(0.2, help="Share of the scenes held out for validation (without --split-file)."),
    split_file: Optional[Path] = typer.Option(None, help=SPLIT_FILE_HELP + " Trains on its train list, validates on its val list; its test list is never trained on."),
    val_crop: Optional[int] = typer.Option(None, help="Validate on centred crops of this size (0: whole scenes). Default: 512 in crop mode, whole scenes in full mode."),
    imagenet_global: Optional[Path] = typer.Option(None, help="torchvision ImageNet state dict for the global backbone, checked by sha256: resnet18-f37072fd.pth (ResNet18_Weights.IMAGENET1K_V1; resnet50 for deep-deep: see --imagenet-local). Files and sources: docs/model.md."),
    imagenet_local: Optional[Path] = typer.Option(None, help="torchvision ImageNet state dict for the local backbone, checked by sha256: resnet50-0676ba61.pth (IMAGENET1K_V1, what GLNet loaded) or resnet50-11ad3fa6.pth (IMAGENET1K_V2); resnet18-f37072fd.pth for shallow-shallow."),
    no_pretrained: bool = typer.Option(False, "--no-pretrained", help="Let --preset paper start from random weights (not the paper's: it starts both backbones from ImageNet); the log lists it among the differences."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    amp: Optional[AmpChoice] = typer.Option(None, help=AMP_HELP),
    workers: Optional[int] = typer.Option(None, help="Loader processes preparing the next steps' samples while the device trains (ours). Default: 4 on CUDA (pinned memory), 0 on the CPU (samples made in the training process, as before)."),
    log_every: int = typer.Option(50, help="Steps between log lines giving the loss, steps/s and peak memory (CUDA: allocator peak; CPU: peak RSS); 0: at the end only."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train GLSNet (Adam, focal loss gamma 6, two auxiliary losses weighted per --aux-mode) and write a checkpoint.

    --preset paper trains as the paper does (mode full). The log says which mode runs and every setting that differs from the paper's training.
    """
    from glsnet.checkpoint import read_config, training_options
    from glsnet.config import with_bands
    from glsnet.data.datasets import parse_class_names
    from glsnet.data.layouts import Layout
    from glsnet.evaluation import print_scores
    from glsnet.training import (
        PAPER_RECIPE,
        PRESET_MODES,
        TrainMode,
        TrainOptions,
        preset_config,
    )
    from glsnet.training import train as run_training

    if (data is None) == (not synthetic):
        raise InputError("give exactly one data source: --data DIR or --synthetic")
    if synthetic and layout is not LayoutChoice.deepglobe:
        raise InputError(f"--synthetic scenes carry DeepGlobe's classes; drop --layout {layout.value}")
    chosen_layout = Layout(layout.value)
    if resume is not None and preset is None and variant is None:
        config = read_config(resume)
    else:
        config = preset_config((preset or PresetChoice.default).value, variant.value if variant else None, chosen_layout)
    chosen_bands = parse_bands(bands)
    if chosen_bands is not None:
        config = with_bands(config, chosen_bands)
    if mode is not None:
        chosen_mode = TrainMode(mode.value)
    elif resume is not None and preset is None:
        chosen_mode = TrainMode(training_options(resume).get("mode", TrainMode.CROP.value))
    else:
        chosen_mode = PRESET_MODES[(preset or PresetChoice.default).value]
    if val_crop is None:
        val_crop = 512 if chosen_mode is TrainMode.CROP else 0
    recipe = PAPER_RECIPE if preset is PresetChoice.paper else {}
    if resume is not None and preset is None:  # a resumed run keeps its recipe unless told otherwise
        stored = training_options(resume)
        recipe = {name: stored[name] for name in (*PAPER_RECIPE, "stages", "aux_mode") if name in stored}
    given = {
        "epochs": epochs, "schedule": schedule.value if schedule else None, "weight_decay": weight_decay,
        "augment": augment, "all_patches": None if patches is None else patches is PatchesChoice.all,
        "stages": stages.value if stages else None, "aux_mode": aux_mode.value if aux_mode else None,
    }
    chosen_recipe = {name: value if value is not None else recipe.get(name, TrainOptions.__dataclass_fields__[name].default)
                     for name, value in given.items()}
    options = TrainOptions(
        out=out, data=data, layout=chosen_layout, config=config, steps=steps, mode=chosen_mode, **chosen_recipe,
        batch_size=batch_size, crop_size=crop_size, global_memory_mib=global_memory_mib, global_lr=global_lr,
        local_lr=local_lr, focal_gamma=focal_gamma, aux_weight=aux_weight, seed=seed, resume=resume,
        val_every=val_every, val_fraction=val_fraction, split_file=split_file, val_crop=val_crop or None,
        mean_exclude=parse_class_names(mean_exclude), synthetic_count=synthetic_count,
        synthetic_size=parse_size(synthetic_size), global_weights=imagenet_global, local_weights=imagenet_local,
        require_pretrained=preset is PresetChoice.paper and not no_pretrained,
        device=device, amp=amp.value if amp else None, workers=workers, log_every=log_every, progress=progress,
    )
    _log_to_console()
    result = run_training(options)
    if result.losses:
        typer.echo(
            f"trained steps {result.start_step}..{result.final_step}: loss {result.losses[0]['total']:.4f} -> "
            f"{result.losses[-1]['total']:.4f}, {result.seconds_per_step:.2f} s/step"
        )
    else:
        typer.echo(f"nothing to train: the checkpoint is already at step {result.final_step}")
    if result.validation:
        step, scores = result.validation[-1]
        print_scores(scores, config.classes, title=f"validation at step {step} ({', '.join(result.val_names)})")
    typer.echo(f"checkpoint: {result.checkpoint}")


@app.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., help="A glsnet-train checkpoint (.safetensors)."),
    data_dir: Path = typer.Argument(..., help="Folder of labelled scenes (see --layout)."),
    layout: LayoutChoice = typer.Option(LayoutChoice.deepglobe, help=LAYOUT_OPTION_HELP),
    split: SplitChoice = typer.Option(SplitChoice.val, help="With --split-file: the list of scenes to score (test: exactly the split file's test scenes). Without: mmseg layouts' split folder (train or val); other layouts score the whole folder."),
    split_file: Optional[Path] = typer.Option(None, help=SPLIT_FILE_HELP),
    mean_exclude: Optional[str] = typer.Option(None, help=MEAN_EXCLUDE_HELP),
    downscale: int = typer.Option(1, help="Average f x f pixel blocks first, for speed (1: full resolution)."),
    crop: int = typer.Option(0, help="Score a centred crop of this size only, for speed (0: whole scenes)."),
    limit: int = typer.Option(0, help="Score only the first N scenes (0: all)."),
    batch_size: int = typer.Option(6, help="Patches per forward pass."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the scores to this JSON file."),
    device: str = typer.Option("auto", help=DEVICE_HELP + " On CUDA the run also reports GPU memory comparable with the paper's Table 3 (eager PyTorch, TF32 allowed, at --batch-size 6): the allocator's peak and the whole process's GPU memory through NVML (pip install nvidia-ml-py)."),
) -> None:
    """Score a checkpoint: overall accuracy, per-class precision/recall/F1/IoU, mean F1 and mIoU (and, on CUDA, its GPU memory)."""
    from glsnet.data.datasets import parse_class_names
    from glsnet.data.layouts import Layout
    from glsnet.evaluation import EvalOptions, print_scores, write_scores_json
    from glsnet.evaluation import evaluate as run_evaluation

    options = EvalOptions(
        layout=Layout(layout.value), downscale=downscale, crop=crop or None, limit=limit or None, batch_size=batch_size,
        mean_exclude=parse_class_names(mean_exclude), split=split.value, split_file=split_file, device=device,
    )
    result = run_evaluation(checkpoint, data_dir, options)
    title = f"{checkpoint.name} (step {result.checkpoint_step}) on {len(result.scenes)} scene(s) of {data_dir}"
    print_scores(result.scores, result.class_names, title=title)
    if result.gpu_memory is not None:
        typer.echo(result.gpu_memory.describe())
    if json_out is not None:
        write_scores_json(json_out, result)
        typer.echo(f"scores: {json_out}")


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="A folder (DeepGlobe layout), or an image file name ending in .png."),
    count: int = typer.Option(1, help="Scenes to write into the folder."),
    size: str = typer.Option("2448x2448", help="Scene size HEIGHTxWIDTH in pixels."),
    seed: int = typer.Option(0, help="Same seed, same scenes."),
) -> None:
    """Write seeded synthetic aerial scenes with DeepGlobe colour masks.

    OUT a folder: <name>_sat.png + <name>_mask.png per scene (readable by train/evaluate --data).
    OUT ending in .png: one scene there (the folder's first) and its colour mask as <stem>_mask.png beside it.
    """
    from glsnet.data.synthetic import (
        SyntheticScenes,
        write_scene,
        write_synthetic_folder,
    )

    height, width = parse_size(size)
    if out.suffix.lower() == ".png":
        if count != 1:
            raise InputError(f"{out}: a single image file holds one scene; use a folder for --count {count}")
        image_path, mask_path = write_scene(out, *SyntheticScenes(1, height, width, seed).read(0))
        typer.echo(f"wrote {image_path} and {mask_path}")
        return
    written = write_synthetic_folder(out, count, height, width, seed=seed)
    typer.echo(f"wrote {len(written)} scene(s) of {height} x {width} px to {out}")


@app.command()
def split(
    data_dir: Path = typer.Argument(..., help="Folder of labelled scenes (see --layout); its scene names are listed."),
    out: Path = typer.Option(..., "--out", "-o", help="Split file (JSON) to write."),
    layout: LayoutChoice = typer.Option(LayoutChoice.deepglobe, help=LAYOUT_OPTION_HELP),
    counts: str = typer.Option("455,207,142", help="Scenes for train,val,test. Default: GLNet's DeepGlobe split sizes, which GLSNet reports on (its lists are not known for sure; see docs/model.md)."),
    scale: bool = typer.Option(False, "--scale", help="Scale --counts to the folder's number of scenes (largest remainder), e.g. 6/2/2 of 10 scenes and 454/207/142 of 803 for 455,207,142."),
    seed: int = typer.Option(0, help="Seed of numpy's default_rng permutation of the sorted names: same folder listing and seed, same split."),
) -> None:
    """Draw a seeded train/val/test split of a folder's scenes and write it as a split file.

    The names are sorted, permuted by numpy.random.default_rng(SEED).permutation, and cut into the counts in the order train, val, test.
    """
    from glsnet.config import GLSNetConfig
    from glsnet.data.layouts import Layout, open_scenes
    from glsnet.data.splits import draw_split, scaled_counts, write_split_file

    try:
        wanted = tuple(int(c) for c in counts.split(","))
    except ValueError:
        wanted = ()
    if len(wanted) != 3 or min(wanted) < 0 or sum(wanted) == 0:
        raise InputError(f"--counts {counts!r}: expected three counts >= 0, train,val,test, e.g. 455,207,142")
    chosen_layout = Layout(layout.value)
    names = open_scenes(chosen_layout, data_dir, chosen_layout.dataset.config(GLSNetConfig())).names
    final = scaled_counts(wanted, len(names)) if scale else wanted
    note = (
        f"glsnet-train split: {len(names)} scene(s) of {data_dir} ({chosen_layout.value}), names sorted, "
        f"permuted by numpy.random.default_rng({seed}).permutation, cut into train/val/test = "
        f"{'/'.join(map(str, final))}" + (f" (--counts {counts} scaled to the folder)" if scale else "")
    )
    result = draw_split(names, final, seed, note)
    write_split_file(out, result)
    typer.echo(f"wrote {out}: {len(result.train)} train, {len(result.val)} val, {len(result.test)} test scene(s), seed {seed}")


def _log_to_console() -> None:
    """glsnet's INFO/WARNING records (e.g. a global window smaller than the image) on the console."""
    import logging

    from rich.logging import RichHandler

    logger = logging.getLogger("glsnet")
    if not logger.handlers:
        logger.addHandler(RichHandler(show_path=False, show_time=False))
        logger.setLevel(logging.INFO)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
