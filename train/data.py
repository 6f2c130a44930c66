"""Fine-tuning's pictures as the model trains on them: center-cropped to a square, then resized, as the reference
does. The pairs themselves are read and checked by :mod:`mgie_core.formats.pairs`."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def center_square(image: Image.Image) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def diffusion_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """(3, R, R) in [-1, 1]."""
    square = center_square(image).resize((resolution, resolution), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(square, np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def clip_image(image: Image.Image, size: int) -> Image.Image:
    """The square picture the CLIP processor then sees (the reference resizes the crop to 512 first)."""
    return center_square(image).resize((size, size), Image.Resampling.BICUBIC)
