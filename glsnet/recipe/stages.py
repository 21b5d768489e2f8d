"""GLNet's staged training as an option: the global branch first, then the local branch with the global
one fixed, then the fusion with both fixed.

GLNet trains its global branch alone (mode 1), then its local branch with the global one fixed (mode
2), then the global branch again with the local fixed (mode 3). GLSNet's paper trains end to end and
names no stages; the three stages here follow GLNet's order adapted to GLSNet's parts, and each takes
a third of the steps (ours). A stage trains only its parts: the others have no gradient (Adam leaves
them untouched) and are in eval mode (their batch-norm statistics stay fixed), as in GLNet.
"""

from __future__ import annotations

from enum import Enum

import torch

from glsnet.losses import LossParts
from glsnet.model import GLSNet


class Stages(str, Enum):
    JOINT = "joint"  # the paper: everything trained together from the first step
    GLNET = "glnet"  # global, then local (global fixed), then fusion (both fixed)


class Stage(str, Enum):
    JOINT = "joint"
    GLOBAL = "global"
    LOCAL = "local"
    FUSION = "fusion"


STAGED = (Stage.GLOBAL, Stage.LOCAL, Stage.FUSION)


def stage_of(step: int, total: int, stages: Stages) -> tuple[Stage, int, int]:
    """(stage, its first step, its end) of ``step`` in a run of ``total`` steps."""
    if Stages(stages) is Stages.JOINT:
        return Stage.JOINT, 0, total
    bounds = [round(total * i / 3) for i in range(4)]
    index = max(i for i in range(3) if bounds[i] <= step) if step < total else 2
    return STAGED[index], bounds[index], bounds[index + 1]


def trained_modules(model: GLSNet, stage: Stage) -> list[torch.nn.Module]:
    return {
        Stage.JOINT: [model],
        Stage.GLOBAL: [model.global_branch, model.global_aux],
        Stage.LOCAL: [model.local_branch.backbone, model.local_branch.neck, model.local_aux],
        Stage.FUSION: [model.fusion, model.local_branch.skip],  # the stride-4 skip feeds the fusion's head only
    }[stage]


def enter_stage(model: GLSNet, stage: Stage) -> None:
    """Train ``stage``'s parts only: the rest without gradients and in eval mode."""
    if stage is Stage.JOINT:
        return
    trained = trained_modules(model, stage)
    model.eval().requires_grad_(False)
    for module in trained:
        module.train().requires_grad_(True)


def stage_loss(parts: LossParts, stage: Stage, aux_weight: float) -> torch.Tensor:
    """What the stage minimises: the total (joint), the global aux loss, the local aux loss (plus
    ``aux_weight`` x GLNet's feature-map regulariser when it is on), or the fused logits' loss."""
    if stage is Stage.JOINT:
        return parts.total
    if stage is Stage.GLOBAL:
        return parts.global_aux
    if stage is Stage.LOCAL:
        return parts.local_aux if parts.fmreg is None else parts.local_aux + aux_weight * parts.fmreg
    return parts.main
