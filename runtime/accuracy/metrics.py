"""Segmentation scores from one confusion matrix (numpy only, shared by training, export and runtime)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.errors import InputError

# Class names the papers leave out of their means: DeepGlobe's "unknown" (GLNet, MagNet, GLSNet report six
# classes) and ISPRS's "clutter" (GLSNet's Table 2 reports five Vaihingen classes); LoveDA has neither and
# averages all its classes. Training, evaluation and the accuracy gates all use this one rule.
DEFAULT_MEAN_EXCLUDED = ("unknown", "clutter")


def default_mean_exclusions(class_names: tuple[str, ...]) -> tuple[int, ...]:
    """Indices of the classes the papers leave out of the means (by name: unknown, clutter)."""
    return tuple(i for i, name in enumerate(class_names) if name.lower() in DEFAULT_MEAN_EXCLUDED)


@dataclass(frozen=True)
class Scores:
    """Every score the paper reports. ``mean_*`` average over ``classes_in_mean`` only."""

    overall_accuracy: float
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    iou: np.ndarray
    mean_f1: float
    miou: float
    classes_in_mean: tuple[int, ...]
    support: np.ndarray  # labelled pixels per class
    excluded: tuple[int, ...] = ()  # classes left out of the means on purpose (e.g. Vaihingen's clutter)

    def mean_note(self, class_names: tuple[str, ...] | None = None) -> str:
        """Which classes the means average, and which are left out and why, e.g.
        'means over 5 classes: impervious, building, ...; left out: clutter (excluded)'."""
        names = class_names or tuple(str(i) for i in range(len(self.iou)))
        over = ", ".join(names[i] for i in self.classes_in_mean) or "no class"
        left = [f"{names[i]} (excluded)" for i in self.excluded]
        left += [f"{names[i]} (no pixels)" for i in range(len(names)) if i not in self.excluded and i not in self.classes_in_mean]
        return f"means over {len(self.classes_in_mean)} classes: {over}" + (f"; left out: {', '.join(left)}" if left else "")

    def as_dict(self, class_names: tuple[str, ...] | None = None) -> dict:
        names = class_names or tuple(str(i) for i in range(len(self.iou)))
        return {
            "overall_accuracy": self.overall_accuracy,
            "mean_f1": self.mean_f1,
            "miou": self.miou,
            "classes_in_mean": list(self.classes_in_mean),
            "excluded_from_means": list(self.excluded),
            "per_class": {
                n: {"precision": float(p), "recall": float(r), "f1": float(f), "iou": float(i), "support": int(s)}
                for n, p, r, f, i, s in zip(names, self.precision, self.recall, self.f1, self.iou, self.support)
            },
        }


class ConfusionMatrix:
    """Accumulates counts[target, prediction]; pixels whose target is ``ignore_index`` are skipped."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if num_classes < 1:
            raise InputError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction: np.ndarray, target: np.ndarray) -> "ConfusionMatrix":
        prediction = np.asarray(prediction)
        target = np.asarray(target)
        if prediction.shape != target.shape:
            raise InputError(f"prediction shape {prediction.shape} differs from target shape {target.shape}")
        keep = np.ones(target.shape, dtype=bool) if self.ignore_index is None else target != self.ignore_index
        t = target[keep].astype(np.int64)
        p = prediction[keep].astype(np.int64)
        k = self.num_classes
        if t.size and (t.min() < 0 or t.max() >= k or p.min() < 0 or p.max() >= k):
            raise InputError(f"class indices must lie in [0, {k}) (or be the ignore index {self.ignore_index})")
        self.counts += np.bincount(t * k + p, minlength=k * k).reshape(k, k)
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        self.counts += other.counts
        return self

    def scores(self, exclude: tuple[int, ...] = ()) -> Scores:
        """Scores; classes in ``exclude`` are left out of the means (the papers' subsets: DeepGlobe without
        unknown, Vaihingen without clutter; see default_mean_exclusions).

        A class with no labelled pixels and no predictions has undefined IoU/F1 (NaN) and is left
        out of the means as well.
        """
        c = self.counts.astype(np.float64)
        tp = np.diag(c)
        predicted = c.sum(axis=0)
        actual = c.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(predicted > 0, tp / predicted, np.nan)
            recall = np.where(actual > 0, tp / actual, np.nan)
            f1 = np.where(predicted + actual > 0, 2 * tp / (predicted + actual), np.nan)
            iou = np.where(predicted + actual - tp > 0, tp / (predicted + actual - tp), np.nan)
        total = c.sum()
        in_mean = tuple(i for i in range(self.num_classes) if i not in exclude and not np.isnan(iou[i]))
        mean = lambda values: float(np.mean(values[list(in_mean)])) if in_mean else float("nan")  # noqa: E731
        return Scores(
            overall_accuracy=float(tp.sum() / total) if total else float("nan"),
            precision=precision,
            recall=recall,
            f1=f1,
            iou=iou,
            mean_f1=mean(f1),
            miou=mean(iou),
            classes_in_mean=in_mean,
            support=actual.astype(np.int64),
            excluded=tuple(sorted(int(i) for i in exclude if 0 <= i < self.num_classes)),
        )
