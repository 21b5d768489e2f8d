"""Output comparison as reports (after Polygraphy): error statistics per output, pass/fail, truthiness.

Used by ``glsnet-export verify`` and by the precision gates, so both judge outputs the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from runtime.errors import InputError


@dataclass(frozen=True)
class OutputComparison:
    name: str
    max_abs: float
    mean_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    atol: float
    rtol: float
    passed: bool

    def line(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        return (
            f"{status} | Output: {self.name!r} | max abs={self.max_abs:.3g} mean abs={self.mean_abs:.3g} "
            f"p99 abs={self.p99_abs:.3g} max rel={self.max_rel:.3g} (atol={self.atol:g}, rtol={self.rtol:g})"
        )


@dataclass(frozen=True)
class ComparisonReport:
    outputs: tuple[OutputComparison, ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return all(o.passed for o in self.outputs)

    def lines(self) -> list[str]:
        return [o.line() for o in self.outputs]

    def __getitem__(self, name: str) -> OutputComparison:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(name)


def _tolerance(value: float | Mapping[str, float], name: str) -> float:
    if isinstance(value, Mapping):
        return float(value.get(name, value.get("", 0.0)))
    return float(value)


def compare_arrays(name: str, reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float) -> OutputComparison:
    """Passes when every element satisfies |c - r| <= atol + rtol * |r| (numpy.isclose's rule)."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise InputError(f"output {name!r}: shapes differ, reference {reference.shape} vs candidate {candidate.shape}")
    diff = np.abs(candidate - reference)
    rel = diff / np.maximum(np.abs(reference), 1e-12)
    if diff.size == 0:
        return OutputComparison(name, 0.0, 0.0, 0.0, 0.0, 0.0, atol, rtol, True)
    finite = bool(np.isfinite(candidate).all())
    passed = finite and bool(np.all(diff <= atol + rtol * np.abs(reference)))
    return OutputComparison(
        name=name,
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        p99_abs=float(np.percentile(diff, 99)),
        max_rel=float(rel.max()),
        mean_rel=float(rel.mean()),
        atol=atol,
        rtol=rtol,
        passed=passed,
    )


def compare_outputs(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    atol: float | Mapping[str, float] = 1e-4,
    rtol: float | Mapping[str, float] = 0.0,
) -> ComparisonReport:
    """Compare every output the two runs share; a tolerance may be a float or a per-output dict ("" = default)."""
    missing = sorted(set(reference) - set(candidate))
    if missing:
        raise InputError(f"candidate lacks outputs {missing}")
    return ComparisonReport(
        tuple(
            compare_arrays(name, reference[name], candidate[name], _tolerance(atol, name), _tolerance(rtol, name))
            for name in reference
        )
    )


def pixel_agreement(reference_mask: np.ndarray, candidate_mask: np.ndarray) -> float:
    """Fraction of pixels whose class index is the same in both masks."""
    if reference_mask.shape != candidate_mask.shape:
        raise InputError(f"mask shapes differ: {reference_mask.shape} vs {candidate_mask.shape}")
    return float(np.mean(reference_mask == candidate_mask)) if reference_mask.size else 1.0
