"""The held-out check of a fine-tuned LoRA: how far its edits of pairs it never trained on land from the targets.

The same check for every way of training (an fp32 base, an int8 one, ...), so their LoRAs compare side by side:
each held-out input is edited by the base model and by the base with the LoRA merged, with the same seed and
settings (the model's own guidance, as its edits have), at the training size; the figure is the mean absolute pixel
difference (0-1) to the target, and how much of the base's distance the LoRA closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mgie_core import EditSettings, MGIEPipeline, load_model
from mgie_core.formats.lora import apply_lora
from mgie_core.formats.pairs import Triplet

from .data import center_square


@dataclass(frozen=True)
class HeldOut:
    base: float  # mean |edit - target| of the base model's edits, pixels in [0, 1]
    tuned: float  # the same with the LoRA merged at strength 1

    @property
    def closed(self) -> float:
        """The fraction of the base's distance to the targets that the LoRA closed (1: every edit on target)."""
        return 1.0 - self.tuned / self.base


def edit_distance(pipe: MGIEPipeline, triplets: list[Triplet], resolution: int, steps: int, seed: int) -> float:
    """Mean absolute difference (0-1) between ``pipe``'s edit of each input and its target, at ``resolution``."""
    size = (resolution, resolution)
    distances = []
    for t in triplets:
        source = center_square(Image.open(t.input).convert("RGB")).resize(size, Image.Resampling.BICUBIC)
        target = center_square(Image.open(t.target).convert("RGB")).resize(size, Image.Resampling.BICUBIC)
        settings = EditSettings(seed=seed, num_inference_steps=steps)
        result = pipe(source, t.instruction, settings, expressive=t.expressive)
        edited = np.asarray(result.images[0].resize(size, Image.Resampling.BICUBIC), np.float32)
        distances.append(float(np.abs(edited - np.asarray(target, np.float32)).mean() / 255.0))
    return float(np.mean(distances))


def held_out_check(model: str | Path | None, lora: str | Path, triplets: list[Triplet], resolution: int,
                   steps: int = 20, seed: int = 0) -> HeldOut:
    """The base model (``model``, unquantized, fp32 on the CPU) against the same with ``lora`` merged."""
    figures = []
    for strength in (None, 1.0):
        loaded = load_model(model) if model is not None else load_model()
        if strength is not None:
            apply_lora(loaded, lora, strength)
        with torch.inference_mode():
            figures.append(edit_distance(MGIEPipeline(loaded, "cpu", "fp32"), triplets, resolution, steps, seed))
    return HeldOut(*figures)
