"""The accuracy gate: a converted graph set is compared with fp32 before any engine is built.

Three views, all with ONNX Runtime on the CPU and all on held-back data only:
- per graph, on held-back tiles, each graph fed the same fp32 inputs: error statistics of its outputs
  (runtime.accuracy.comparison), which say *where* a conversion hurts;
- the chain on held-back tiles (candidate global -> local -> fusion vs fp32), argmax of the stride-4
  logits: cheap, used by the INT8 sensitivity check;
- whole held-back scenes through the runtime's Segmenter (fp32 vs candidate masks): pixel agreement,
  mIoU of the candidate against the fp32 prediction, and, where labels exist, mIoU against the
  labels for both. This view gates.

The mIoU drop is fp32's mIoU against the labels minus the candidate's, in points; without labels
only the agreement gates (and the report says so). Constant held-back scenes (e.g. all black) or
constant calibration scenes (for INT8) cannot show a difference, so they fail the gate.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibration.data_readers import TileFeeds
from calibration.tiles import CALIBRATION, HOLDOUT, TileSet
from runtime.accuracy.comparison import compare_outputs
from runtime.accuracy.metrics import ConfusionMatrix, default_mean_exclusions
from runtime.bundle.manifest import FUSION_OUTPUT, GLOBAL_INPUT, GLOBAL_OUTPUT, LOCAL_INPUT, LOCAL_OUTPUTS, Manifest
from runtime.errors import AccuracyGateError

MIN_PIXEL_STD = 1.0  # a scene whose pixels vary less than this (in pixel units) is constant


@dataclass(frozen=True)
class PrecisionThresholds:
    min_agreement: float  # fraction of pixels whose class equals fp32's
    max_miou_drop: float | None  # points of mIoU against the labels; None: not gated


@dataclass(frozen=True)
class GateThresholds:
    fp16: PrecisionThresholds = PrecisionThresholds(min_agreement=0.999, max_miou_drop=None)
    int8: PrecisionThresholds = PrecisionThresholds(min_agreement=0.98, max_miou_drop=1.0)

    def of(self, precision: str) -> PrecisionThresholds:
        if precision not in ("fp16", "int8"):
            raise ValueError(f"no accuracy gate for precision {precision!r}; expected fp16 or int8")
        return getattr(self, precision)


def excluded_classes(manifest: Manifest) -> tuple[int, ...]:
    """Classes left out of mean scores, as the papers report them (DeepGlobe: unknown; ISPRS: clutter)."""
    return default_mean_exclusions(tuple(manifest.classes))


@dataclass(frozen=True)
class MaskScores:
    """Candidate vs fp32 masks (and both vs labels where there are labels)."""

    agreement: float
    miou_vs_fp32: float
    pixels: int
    miou_labels_fp32: float | None = None
    miou_labels_candidate: float | None = None

    @property
    def miou_drop(self) -> float | None:
        """fp32 mIoU minus candidate mIoU against the labels, in points (None without labels)."""
        if self.miou_labels_fp32 is None or self.miou_labels_candidate is None:
            return None
        if math.isnan(self.miou_labels_fp32) or math.isnan(self.miou_labels_candidate):
            return None
        return 100.0 * (self.miou_labels_fp32 - self.miou_labels_candidate)


class MaskTally:
    """Accumulates agreement and confusion matrices over many masks."""

    def __init__(self, num_classes: int, exclude: tuple[int, ...]) -> None:
        self.exclude = exclude
        self.same = 0
        self.pixels = 0
        self.vs_fp32 = ConfusionMatrix(num_classes, ignore_index=None)
        self.labels_fp32 = ConfusionMatrix(num_classes, ignore_index=255)
        self.labels_candidate = ConfusionMatrix(num_classes, ignore_index=255)
        self.has_labels = False

    def update(self, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> None:
        self.same += int((reference == candidate).sum())
        self.pixels += reference.size
        self.vs_fp32.update(candidate, reference)
        if labels is not None:
            self.has_labels = True
            self.labels_fp32.update(reference, labels)
            self.labels_candidate.update(candidate, labels)

    def scores(self) -> MaskScores:
        labelled = self.has_labels and self.labels_fp32.counts.sum() > 0
        return MaskScores(
            agreement=self.same / self.pixels if self.pixels else float("nan"),
            miou_vs_fp32=self.vs_fp32.scores(self.exclude).miou,
            pixels=self.pixels,
            miou_labels_fp32=self.labels_fp32.scores(self.exclude).miou if labelled else None,
            miou_labels_candidate=self.labels_candidate.scores(self.exclude).miou if labelled else None,
        )


# ---------------------------------------------------------------- per graph and chain, on tiles


def compare_graphs(feeds: TileFeeds, candidate: dict) -> dict[str, dict[str, Any]]:
    """role -> per-output error statistics of the candidate graph fed exactly the fp32 graph's inputs."""
    stats: dict[str, dict[str, Any]] = {}
    for role in ("global", "local", "fusion"):
        worst: dict[str, dict[str, float]] = {}
        for feed in feeds.feeds(role):
            reference = feeds.reference[role].run(None, feed)
            names = [o.name for o in feeds.reference[role].get_outputs()]
            got = candidate[role].run(names, feed)
            report = compare_outputs(dict(zip(names, reference)), dict(zip(names, got)), atol=math.inf)
            for o in report.outputs:
                entry = worst.setdefault(o.name, {"max_abs": 0.0, "p99_abs": 0.0, "mean_abs": 0.0, "ref_max_abs": 0.0, "n": 0})
                entry["max_abs"] = max(entry["max_abs"], o.max_abs)
                entry["p99_abs"] = max(entry["p99_abs"], o.p99_abs)
                entry["mean_abs"] += o.mean_abs
                entry["ref_max_abs"] = max(entry["ref_max_abs"], float(np.abs(dict(zip(names, reference))[o.name]).max()))
                entry["n"] += 1
        for entry in worst.values():
            entry["mean_abs"] /= max(entry.pop("n"), 1)
        stats[role] = worst
    return stats


def _center_labels(labels: np.ndarray, stride: int) -> np.ndarray:
    """Labels at the logits' stride-``stride`` grid: the pixel at the centre of each cell."""
    offset = stride // 2
    return labels[:, offset::stride, offset::stride]


def chain_scores(feeds: TileFeeds, candidate: dict, max_batches: int | None = None) -> MaskScores:
    """Candidate chain vs the fp32 chain on the tiles: argmax of the stride-4 logits of every patch
    (of the first ``max_batches`` batches, when given)."""
    tally = MaskTally(feeds.manifest.num_classes, excluded_classes(feeds.manifest))
    stride = feeds.manifest.patch.output_stride
    global_cache: dict[int, np.ndarray] = {}
    for b, (scene, indices) in enumerate(feeds.batches[:max_batches]):
        local_ref, skip_ref = feeds.reference_local(b)
        boxes = feeds.boxes(indices)
        reference = feeds.reference["fusion"].run(
            [FUSION_OUTPUT],
            {"local_features": local_ref, "local_skip": skip_ref, "global_features": feeds.reference_global(scene), "boxes": boxes},
        )[0]
        if scene not in global_cache:
            global_cache[scene] = candidate["global"].run([GLOBAL_OUTPUT], {GLOBAL_INPUT: feeds.scene_input(scene)})[0]
        local_c, skip_c = candidate["local"].run(list(LOCAL_OUTPUTS), {LOCAL_INPUT: feeds.patch_input(indices)})
        got = candidate["fusion"].run(
            [FUSION_OUTPUT],
            {"local_features": local_c, "local_skip": skip_c, "global_features": global_cache[scene], "boxes": boxes},
        )[0]
        labels = feeds.labels(indices)
        tally.update(
            reference.argmax(1).astype(np.uint8),
            got.argmax(1).astype(np.uint8),
            None if labels is None else _center_labels(labels, stride)[:, : reference.shape[2], : reference.shape[3]],
        )
    return tally.scores()


# ---------------------------------------------------------------- whole scenes, through the runtime


def gate_scenes(tiles: TileSet) -> np.ndarray:
    """The held-back scenes (all scenes when none was held back)."""
    held = tiles.scene_indices(HOLDOUT)
    return held if len(held) else np.arange(len(tiles.scenes))


def scene_masks(bundle_dir: str | Path, precision: str, tiles: TileSet, threads: int | None = None) -> list[np.ndarray]:
    """Masks of the held-back scenes from the runtime's Segmenter with ``precision``'s graphs."""
    from runtime.segmenter import Segmenter

    with Segmenter(bundle_dir, precision=precision, threads=threads) as segmenter:
        return [segmenter.segment(tiles.scenes[int(scene)]) for scene in gate_scenes(tiles)]


def image_scores(reference: list[np.ndarray], candidate: list[np.ndarray], tiles: TileSet, manifest: Manifest) -> MaskScores:
    """fp32 vs candidate masks of the held-back scenes (and both vs their labels)."""
    tally = MaskTally(manifest.num_classes, excluded_classes(manifest))
    for scene, ref, cand in zip(gate_scenes(tiles), reference, candidate):
        tally.update(ref, cand, tiles.labels[int(scene)])
    return tally.scores()


def data_problems(tiles: TileSet, precision: str) -> list[str]:
    """Reasons the tiles cannot judge a conversion (empty or constant data)."""
    problems = []
    if len(tiles.indices(HOLDOUT)) == 0:
        problems.append("no held-back tiles: calibrate with more images or a holdout > 0")

    def constant(indices) -> bool:
        return len(indices) > 0 and all(float(tiles.scenes[int(s)].std()) < MIN_PIXEL_STD for s in indices)

    if constant(gate_scenes(tiles)):
        problems.append("the held-back scenes are constant images (e.g. all black): they cannot show a difference")
    if precision == "int8" and constant(tiles.scene_indices(CALIBRATION)):
        problems.append("the calibration scenes are constant images (e.g. all black): INT8 ranges from them are meaningless")
    return problems


# ---------------------------------------------------------------- the report


@dataclass
class GateReport:
    precision: str
    thresholds: PrecisionThresholds
    images: MaskScores | None
    tiles: MaskScores | None
    graphs: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    forced: bool = False
    details: dict[str, Any] = field(default_factory=dict)  # e.g. INT8 nodes left in float
    seconds: float = 0.0

    @property
    def judged(self) -> MaskScores | None:
        return self.images if self.images is not None else self.tiles

    def failures(self) -> list[str]:
        failed = list(self.problems)
        scores = self.judged
        if scores is None:
            return failed + ["nothing was measured"]
        t = self.thresholds
        if not scores.agreement >= t.min_agreement:
            failed.append(f"pixel agreement {100 * scores.agreement:.3f}% < {100 * t.min_agreement:.3f}%")
        drop = scores.miou_drop
        if t.max_miou_drop is not None and drop is not None and drop > t.max_miou_drop:
            failed.append(f"mIoU drop {drop:.2f} points > {t.max_miou_drop:.2f}")
        return failed

    @property
    def passed(self) -> bool:
        return not self.failures()

    def as_dict(self) -> dict[str, Any]:
        def scores(s: MaskScores | None):
            return None if s is None else {**asdict(s), "miou_drop": s.miou_drop}

        return _finite(
            {
                "passed": self.passed,
                "forced": self.forced,
                "failures": self.failures(),
                "thresholds": asdict(self.thresholds),
                "images": scores(self.images),
                "tiles": scores(self.tiles),
                "graphs": self.graphs,
                "details": self.details,
                "seconds": round(self.seconds, 2),
                "measured_with": "onnxruntime CPUExecutionProvider on held-back calibration scenes and tiles",
                "miou_drop_note": "fp32 minus candidate mIoU against labels, in points; without labels only agreement gates",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def _pct(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}"


def accuracy_table(reports: list[GateReport], fp32_labels: float | None = None):
    """A rich table: one row for fp32 (the reference) and one per converted precision."""
    from rich.table import Table

    table = Table(title="Accuracy gate (ONNX Runtime, CPU, held-back data; %)")
    for column in ("precision", "agree images", "agree tiles", "mIoU vs fp32", "mIoU labels", "drop pts", "gate"):
        table.add_column(column, justify="right" if column != "precision" else "left")
    if fp32_labels is None:
        fp32_labels = next((r.judged.miou_labels_fp32 for r in reports if r.judged is not None), None)
    table.add_row("fp32", "100", "100", "100", _pct(fp32_labels, 2), "0", "reference")
    for r in reports:
        images, tiles = r.images, r.tiles
        drop = r.judged.miou_drop if r.judged is not None else None
        status = "PASSED" if r.passed else ("FORCED" if r.forced else "FAILED")
        table.add_row(
            r.precision,
            _pct(images.agreement if images else None),
            _pct(tiles.agreement if tiles else None),
            _pct(r.judged.miou_vs_fp32 if r.judged else None, 2),
            _pct(r.judged.miou_labels_candidate if r.judged else None, 2),
            "-" if drop is None else f"{drop:.2f}",
            f"[green]{status}[/]" if r.passed else f"[red]{status}[/]",
        )
    return table


def graph_table(report: GateReport):
    """Per-graph output error of the candidate fed fp32 inputs, on held-back tiles (worst over batches)."""
    from rich.table import Table

    table = Table(title=f"{report.precision} graphs vs fp32, same inputs (held-back tiles)")
    for column in ("graph", "output", "max abs", "p99 abs", "mean abs", "fp32 max abs"):
        table.add_column(column, justify="left" if column in ("graph", "output") else "right")
    for role, outputs in report.graphs.items():
        for name, s in outputs.items():
            table.add_row(role, name, f"{s['max_abs']:.3g}", f"{s['p99_abs']:.3g}", f"{s['mean_abs']:.3g}", f"{s['ref_max_abs']:.3g}")
    return table


def raise_if_failed(report: GateReport, bundle_dir: str | Path) -> None:
    failures = report.failures()
    if failures and not report.forced:
        raise AccuracyGateError(
            f"{bundle_dir}: the {report.precision} graphs fail the accuracy gate: {'; '.join(failures)}. "
            "The bundle was left as it was. Calibrate with more, and more varied, images "
            f"(glsnet-export calibrate), relax the thresholds, or keep the result anyway with --force"
        )
