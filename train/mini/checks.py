"""What counts as success in the edit world: a right expressive instruction, a right edit.

* expressive: the derived text names the right object (colour, shape) and the right change
  (new colour, removal, addition and its place, or the global effect), in that order;
* edit (pixel level): the intended region has the intended colour (or the picture moved the
  intended way: brighter, warmer...), the rest barely changed (on average, and every other object
  kept its colour), and the result is much closer to the ground truth than the unedited input (L1
  below half of doing nothing). For a local edit that L1
  is taken over the edited object and 3 px around it (outside, "the rest" applies): over the whole
  picture a small object's edit moves L1 by only 1.5-3.5 /255, less than any latent editor's VAE
  round trip costs (mgie-mini's: 3-4 /255), so even the VAE round trip of the ground truth failed it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mgie_core import DeriveConfig
from train.objective import conversation_ids

from . import world

GLOBAL_WORDS = {"brighter": ("brighten",), "darker": ("darken",), "warmer": ("warm",), "cooler": ("cool",),
                "night": ("night",), "sunset": ("sunset",)}
REGION_TOLERANCE = 60.0  # RGB distance (0-255) of the region's mean colour to the intended one
REST_TOLERANCE = 12.0  # mean absolute change (0-255) allowed outside the edited region
L1_RATIO = 0.5  # the result's L1 to the ground truth, relative to the input's


def required_words(edit: world.Edit) -> tuple[str, ...]:
    return GLOBAL_WORDS.get(edit.kind, edit.required_words)


def expressive_ok(edit: world.Edit, text: str) -> bool:
    """All required words appear as whole words, in order."""
    words = re.findall(r"[a-z]+", text.lower())
    position = 0
    for wanted in required_words(edit):
        for part in wanted.split():
            try:
                position = words.index(part, position) + 1
            except ValueError:
                return False
    return True


def unsayable(model, edit: world.Edit, n: int = DeriveConfig.no_repeat_ngram_size) -> bool:
    """True when derivation's n-gram ban (docs/algorithm.md §2.5: no n tokens of prompt or answer twice) forbids the
    true expressive instruction, so no model can derive it: one of its n-grams of tokens came before."""
    if n < 1:
        return False  # no ban
    ids, start = conversation_ids(model, edit.instruction, edit.expressive)
    seen = {tuple(ids[i : i + n]) for i in range(start - n + 1)}
    for end in range(start + 1, len(ids) + 1):
        gram = tuple(ids[end - n : end])
        if gram in seen:
            return True
        seen.add(gram)
    return False


@dataclass(frozen=True)
class EditCheck:
    ok: bool
    region: bool
    rest: bool
    l1: float
    l1_unedited: float


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def grow(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        mask = mask | _shift(mask, 1, 0) | _shift(mask, -1, 0) | _shift(mask, 0, 1) | _shift(mask, 0, -1)
    return mask


def shrink(mask: np.ndarray, steps: int) -> np.ndarray:
    return ~grow(~mask, steps)


def luminance(x: np.ndarray) -> float:
    return float((x @ np.array([0.299, 0.587, 0.114])).mean())


def warmth(x: np.ndarray) -> float:
    return float((x[..., 0] - x[..., 2]).mean())


def _others_kept(edit: world.Edit, before: np.ndarray, output: np.ndarray, near: np.ndarray) -> bool:
    """Every object the edit does not touch keeps its colour: a small object is too little of the picture
    for the mean change to notice it being repainted too (say, every shape turned red for "the biggest")."""
    for obj in edit.before.objects:
        inside = shrink(world.mask(obj), 1) & ~near
        if obj != edit.target and inside.any():
            if np.linalg.norm(output[inside].mean(0) - before[inside].mean(0)) >= REGION_TOLERANCE:
                return False
    return True


def edit_ok(edit: world.Edit, before: Image.Image, output: Image.Image, target: Image.Image) -> EditCheck:
    b, o, t = (np.asarray(im.convert("RGB").resize((world.SIZE, world.SIZE)), np.float64) for im in (before, output, target))
    near = grow(world.mask(edit.target), 3) if edit.target is not None else np.ones(b.shape[:2], bool)
    l1, l1_unedited = float(np.abs(o - t)[near].mean()), float(np.abs(b - t)[near].mean())
    close = l1 < L1_RATIO * l1_unedited
    if edit.target is not None:
        region = shrink(world.mask(edit.target), 1)
        wanted = (world.BACKGROUNDS[edit.before.background] if edit.kind == "remove" else world.COLOURS[edit.new_colour])
        region_ok = bool(np.linalg.norm(o[region].mean(0) - np.array(wanted)) < REGION_TOLERANCE)
        rest_ok = bool(np.abs(o - b)[~near].mean() < REST_TOLERANCE) and _others_kept(edit, b, o, near)
    else:
        measure = warmth if edit.kind in ("warmer", "cooler", "sunset") else luminance
        wanted_change = measure(t) - measure(b)  # the picture must move at least half way, the right way
        region_ok = bool((measure(o) - measure(b)) / wanted_change > 0.5)
        rest_ok = True  # a global edit has no "rest"; closeness to the ground truth covers it
    return EditCheck(close and region_ok and rest_ok, region_ok, rest_ok, l1, l1_unedited)
