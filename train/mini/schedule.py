"""Learning-rate schedule, weight averaging and the training log shared by the recipe's stages."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch

logger = logging.getLogger("mgie.mini")


def warmup_cosine(steps: int, start: int = 0, warmup: int | None = None) -> Callable[[int], float]:
    """The learning-rate factor at scheduler step s of a run begun at stream step ``start``: a short warmup,
    then a cosine down to 0.1 at ``steps``. A stage resumed with more steps takes the schedule up where a
    ``steps``-long cosine stands (the joint stage ran so, in four ever longer cosines). A leg from saved weights
    with a fresh optimizer is its own schedule from 0 with ``warmup=100``: fresh Adam moments make full-size
    first steps."""
    warmup = warmup or min(200, steps // 10 + 1)

    def factor(s: int) -> float:
        s += start
        return min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))

    return factor


@torch.no_grad()
def update_ema(averaged: list[torch.Tensor], current: list[torch.Tensor], step: int, decay: float) -> None:
    """Move each averaged tensor towards its current one after stream step ``step``, keeping min(decay, (1 + step) /
    (10 + step)) of it: the usual warmup, so the first weights are not averaged in for long."""
    kept = min(decay, (1 + step) / (10 + step))
    for mean, now in zip(averaged, current, strict=True):
        mean.lerp_(now, 1 - kept)


def log_row(path: Path, row: dict) -> None:
    """One line of a stage's log: on screen, and appended to ``path`` as JSON."""
    logger.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
