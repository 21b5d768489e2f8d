"""The learning-rate schedule: constant (ours, as before) or GLNet's poly decay.

Poly: lr = base_lr x (1 - t / T)^0.9 with t the step within its stage and T the stage's steps
(GLNet's LR_Scheduler('poly'), per iteration). Each parameter group keeps its own base rate, so the
paper's 1e-4 / 2e-5 ratio holds throughout (GLNet's scheduler set every trained group to one rate).
The factor depends on the step only, so a resumed run continues the same curve.
"""

from __future__ import annotations

from enum import Enum

import torch

POLY_POWER = 0.9  # GLNet's


class Schedule(str, Enum):
    CONSTANT = "constant"
    POLY = "poly"


def lr_factor(schedule: Schedule, step: int, begin: int, end: int) -> float:
    """The multiplier of the base rates at ``step`` of a stage running from ``begin`` to ``end`` (exclusive)."""
    if Schedule(schedule) is Schedule.CONSTANT:
        return 1.0
    return (1.0 - (step - begin) / max(1, end - begin)) ** POLY_POWER


def set_learning_rates(optimizer: torch.optim.Optimizer, base_rates: list[float], factor: float) -> None:
    for group, base in zip(optimizer.param_groups, base_rates):
        group["lr"] = base * factor
