"""Sampler choices: diffusers schedulers built from the checkpoint's scheduler config.

``euler_ancestral`` is what the InstructPix2Pix folder ships and what the paper used; the others
reuse the same noise schedule (betas, training steps, prediction type) with another solver.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

# name -> (class, config overrides); overrides keep the SD1.5 conventions where a class's own
# defaults differ from them (DDIM would otherwise clip samples and use alpha_prod_0 = 1).
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "ddim": (DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": False}),
    "unipc": (UniPCMultistepScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
}

SCHEDULER_NAMES = tuple(SCHEDULERS)


def make_scheduler(name: str, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """A fresh scheduler named ``name`` on the noise schedule of ``base_config``."""
    cls, overrides = SCHEDULERS[name]
    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    return cls.from_config({**config, **overrides})
