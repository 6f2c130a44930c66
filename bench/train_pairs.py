"""A small artist's data set for the fine-tuning benchmarks and tests: edit-world scenes and their sepia version.

A global style mgie-mini never learned ("make it look like an old photograph"), in the folder layout an artist
makes by hand (train/data.py): input/NAME.png, target/NAME.png, NAME.txt and NAME.expressive.txt. Another seed
gives held-out pairs of the same edit.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

from train.mini import world

INSTRUCTION = "make it look like an old photograph"
# In mgie-mini's words (it has none for sepia, old or photograph): an answer it can learn to write in a hundred steps,
# where one spelt in byte pieces it never saw stays garbled (L_ins 3.4 after 100 steps, against 0.29).
EXPRESSIVE = "turn the whole picture a dim yellow."
# the classic sepia matrix: output RGB = SEPIA @ input RGB
SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)


def sepia(image: Image.Image) -> Image.Image:
    x = np.asarray(image.convert("RGB"), np.float32) / 255.0  # (H, W, 3)
    return Image.fromarray((np.clip(x @ SEPIA.T, 0, 1) * 255 + 0.5).astype(np.uint8))


def write_pairs(folder: Path, count: int, seed: int, size: int = world.SIZE, expressive: bool = True) -> Path:
    """``count`` scenes (deterministic by ``seed``) and their sepia targets at ``size`` px, in ``folder``."""
    rng = random.Random(seed)
    (folder / "input").mkdir(parents=True, exist_ok=True)
    (folder / "target").mkdir(exist_ok=True)
    for i in range(count):
        scene = world.render(world.random_scene(rng)).resize((size, size), Image.Resampling.BICUBIC)
        scene.save(folder / "input" / f"p{i:03d}.png")
        sepia(scene).save(folder / "target" / f"p{i:03d}.png")
        (folder / f"p{i:03d}.txt").write_text(INSTRUCTION)
        if expressive:
            (folder / f"p{i:03d}.expressive.txt").write_text(EXPRESSIVE)
    return folder
