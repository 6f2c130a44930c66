"""Image input/output and the two preprocessings MGIE applies to the same picture.

* the MLLM sees the picture through the CLIP image processor (docs/algorithm.md §2.3): bicubic resize of the
  shortest side, center crop, rescale, normalise — done here with PIL exactly as transformers 4.28
  did, so features do not depend on which transformers backend a user has installed;
* the diffusion model sees it resized to multiples of the VAE scale factor, as diffusers'
  ``VaeImageProcessor`` does (Lanczos), scaled down first when its longer side exceeds ``max_side``.

Tensors here are float32 ``[B, 3, H, W]`` in ``[0, 1]`` unless said otherwise.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError
from .files import atomic_write

logger = logging.getLogger(__name__)

ImageLike = Image.Image | torch.Tensor


# -- reading and writing ---------------------------------------------------------------------
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # what a folder of pictures holds
WRITTEN_AS = ".png, .jpg or .webp"  # what outputs are usually named


def existing_file(path: str | Path, what: str) -> Path:
    """``path``, refused unless it is a file: "not found" only when nothing is there, a folder said as such."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file")
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if not path.is_file():
        raise InputError(f"{what} {path} is not a regular file; give a picture file")
    return path


def read_picture(path: str | Path, what: str = "image") -> tuple[Image.Image, int]:
    """An image file as 8-bit RGB, upright (its EXIF orientation applied, as a phone's photo is shown), and its
    frame count (an animated picture's first frame is returned); a clear error for anything unreadable."""
    path = existing_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return to_rgb(ImageOps.exif_transpose(image)), int(getattr(image, "n_frames", 1) or 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(f"{what} {path} is too large to open safely ({err}); scale it down first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(
            f"cannot read {what} {path} ({type(err).__name__}: {err}); use a PNG, JPEG, WebP, BMP or TIFF file"
        ) from None


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as 8-bit RGB, upright, with a clear error for anything unreadable (see
    :func:`read_picture`)."""
    return read_picture(path)[0]


def check_output_name(path: str | Path, what: str = "--out") -> str:
    """The PIL format a picture is written in, from its file name; refused when the extension is not a picture's."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        shown = repr(path.suffix) if path.suffix else "(none)"
        raise InputError(f"{what} {path}: unknown image extension {shown}; use {WRITTEN_AS}")
    return fmt


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode; 16-bit and float images are scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        data = np.asarray(image, dtype=np.float64)
        scale = 1.0 if image.mode == "F" and data.max(initial=0.0) <= 1.0 else 1.0 / 257.0
        if image.mode == "F" and scale == 1.0:
            data = data * 255.0
        else:
            data = data * scale
        image = Image.fromarray(np.clip(np.round(data), 0, 255).astype(np.uint8), mode="L")
    # RGBA/LA/P lose their alpha exactly like the reference's ``Image.convert("RGB")``.
    return image.convert("RGB") if image.mode != "RGB" else image.copy()


def save_image_atomic(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    fmt = check_output_name(path)
    with atomic_write(path) as handle:
        image.save(handle, format=fmt)
    return path


def pil_to_tensor(images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
    """``[B, 3, H, W]`` float32 in ``[0, 1]``, as diffusers' ``pil_to_numpy`` computes it."""
    images = [images] if isinstance(images, Image.Image) else list(images)
    arrays = [np.asarray(to_rgb(im), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """PIL images from ``[B, 3, H, W]`` in ``[0, 1]`` (rounded, so ``k/255`` comes back as ``k``)."""
    arrays = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy(), mode="RGB") for a in arrays]


# -- the diffusion side ----------------------------------------------------------------------
def vae_size(width: int, height: int, multiple: int, max_side: int) -> tuple[int, int]:
    """(width, height) the sampler works at: within ``max_side``, rounded down to ``multiple``."""
    if max_side > 0 and max(width, height) > max_side:
        scale = max_side / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    new_w, new_h = width // multiple * multiple, height // multiple * multiple
    if new_w < multiple or new_h < multiple:
        raise InputError(
            f"image of {width}x{height} pixels is too small: both sides must be at least {multiple} pixels "
            "(after the max-side limit); upscale it first"
        )
    return new_w, new_h


def fit_for_vae(images: ImageLike | Sequence[Image.Image], multiple: int, max_side: int) -> torch.Tensor:
    """Pixels for the VAE, ``[B, 3, H, W]`` in [0, 1], with H and W multiples of ``multiple``.

    PIL inputs are resized with Lanczos like diffusers' pipeline; tensor inputs (ComfyUI) with
    antialiased bicubic interpolation. Sizes that already fit are left untouched.
    """
    if isinstance(images, torch.Tensor):
        check_image_tensor(images)
        height, width = images.shape[-2:]
        new_w, new_h = vae_size(width, height, multiple, max_side)
        if (new_w, new_h) == (width, height):
            return images.float()
        logger.info("resizing image batch from %dx%d to %dx%d for the VAE", width, height, new_w, new_h)
        resized = torch.nn.functional.interpolate(
            images.float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
        )
        return resized.clamp(0, 1)
    images = [images] if isinstance(images, Image.Image) else list(images)
    sizes = {im.size for im in images}
    if len(sizes) != 1:
        raise InputError(f"images in one batch must share a size, got {sorted(sizes)}; edit them separately")
    width, height = images[0].size
    new_w, new_h = vae_size(width, height, multiple, max_side)
    if (new_w, new_h) != (width, height):
        logger.info("resizing image from %dx%d to %dx%d for the VAE", width, height, new_w, new_h)
        images = [im.resize((new_w, new_h), resample=Image.Resampling.LANCZOS) for im in images]
    return pil_to_tensor(images)


def load_mask(path: str | Path) -> torch.Tensor:
    """A mask file as (1, H, W) float32 in [0, 1], 1 where to edit, by ComfyUI's rule: a picture with an alpha
    channel is edited where it is transparent (ComfyUI's mask editor paints the mask by erasing alpha, and its Load
    Image gives MASK = 1 - alpha); a picture without alpha is edited where it is white. EXIF orientation applies,
    as to the picture it goes with."""
    path = existing_file(path, "mask")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
            if alpha:
                grey = image.convert("RGBA").getchannel("A")
            else:
                grey = to_rgb(image).convert("L")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read mask {path} ({type(err).__name__}: {err}); use a PNG: transparent (or, "
                         "without alpha, white) where to edit") from None
    values = torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0)[None]
    return 1.0 - values if alpha else values


def fit_mask(mask: torch.Tensor, size: tuple[int, int], count: int | None = None) -> torch.Tensor:
    """``mask`` ((B,) H', W' or (B, 1, H', W') in [0, 1]) as (B, 1, H, W) for pixels of ``size`` = (H, W);
    another size is resized (bilinear), as the picture it goes with was. With ``count`` images, one mask
    serves them all and B masks pair with B images."""
    mask = mask_batch(mask)
    if count is not None and mask.shape[0] not in (1, count):
        raise InputError(f"{mask.shape[0]} masks for {count} images: give one mask for all the images, or one per image")
    if count is not None:
        mask = mask.expand(count, -1, -1, -1)
    mask = mask.float().cpu()
    if tuple(mask.shape[-2:]) != tuple(size):
        mask = torch.nn.functional.interpolate(mask, size=size, mode="bilinear", align_corners=False)
    return mask.clamp(0, 1)


def mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """A mask given as (H, W), (B, H, W) or (B, 1, H, W), as (B, 1, H, W)."""
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"a mask must be a tensor of floats in [0, 1] (1 where to edit), got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise InputError(f"a mask must be (H, W), (B, H, W) or (B, 1, H, W), got shape {tuple(mask.shape)}")
    return mask


def check_image_tensor(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"image tensor must be [B, 3, H, W], got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise InputError("image batch is empty")


# -- the MLLM side ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipImageConfig:
    """The fields of a CLIP ``preprocessor_config.json`` that MGIE's preprocessing uses."""

    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    resample: int = 3  # PIL bicubic

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> ClipImageConfig:
        size, crop = cfg.get("size", 224), cfg.get("crop_size", 224)
        shortest = size.get("shortest_edge", size.get("height", 224)) if isinstance(size, Mapping) else int(size)
        crop_h, crop_w = (crop["height"], crop["width"]) if isinstance(crop, Mapping) else (int(crop), int(crop))
        defaults = cls()
        return cls(
            shortest_edge=int(shortest),
            crop_height=int(crop_h),
            crop_width=int(crop_w),
            do_resize=bool(cfg.get("do_resize", True)),
            do_center_crop=bool(cfg.get("do_center_crop", True)),
            do_rescale=bool(cfg.get("do_rescale", True)),
            do_normalize=bool(cfg.get("do_normalize", True)),
            rescale_factor=float(cfg.get("rescale_factor", defaults.rescale_factor)),
            image_mean=tuple(float(x) for x in cfg.get("image_mean", defaults.image_mean)),
            image_std=tuple(float(x) for x in cfg.get("image_std", defaults.image_std)),
            resample=int(cfg.get("resample", 3)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": {"shortest_edge": self.shortest_edge},
            "crop_size": {"height": self.crop_height, "width": self.crop_width},
            "do_resize": self.do_resize,
            "do_center_crop": self.do_center_crop,
            "do_rescale": self.do_rescale,
            "do_normalize": self.do_normalize,
            "rescale_factor": self.rescale_factor,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "resample": self.resample,
        }


def clip_pixel_values(image: ImageLike, cfg: ClipImageConfig) -> torch.Tensor:
    """``[3, crop_h, crop_w]`` float32 CLIP input for one image (PIL, or ``[3, H, W]`` in [0, 1])."""
    if isinstance(image, torch.Tensor):
        image = tensor_to_pil(image.unsqueeze(0))[0]
    image = to_rgb(image)
    if cfg.do_resize:
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_short, new_long = cfg.shortest_edge, int(cfg.shortest_edge * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        image = image.resize(size, resample=cfg.resample)
    pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3)
    if cfg.do_center_crop:
        height, width = pixels.shape[:2]
        top, left = (height - cfg.crop_height) // 2, (width - cfg.crop_width) // 2
        pixels = _crop_or_pad(pixels, top, left, cfg.crop_height, cfg.crop_width)
    if cfg.do_rescale:
        pixels = pixels * np.float32(cfg.rescale_factor)
    if cfg.do_normalize:
        pixels = (pixels - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def _crop_or_pad(pixels: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    if top >= 0 and left >= 0:
        return pixels[top : top + height, left : left + width]
    # Only reachable when resizing is off and the image is smaller than the crop: zero-pad like transformers.
    out = np.zeros((height, width, 3), dtype=pixels.dtype)
    src = pixels[max(top, 0) : max(top, 0) + height, max(left, 0) : max(left, 0) + width]
    out[max(-top, 0) : max(-top, 0) + src.shape[0], max(-left, 0) : max(-left, 0) + src.shape[1]] = src
    return out
