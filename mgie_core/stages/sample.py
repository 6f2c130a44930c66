"""Stage 3, sample: dual-guidance denoising of the input image's latent (docs/algorithm.md §2.9).

The same computation as diffusers' ``StableDiffusionInstructPix2PixPipeline`` given
``prompt_embeds=imagination, negative_prompt_embeds=null_imagination`` and the same generator:
three branches per step — (imagination, image), (null, image), (null, no image) — combined as
``e_null0 + s_text * (e_text - e_img) + s_img * (e_img - e_null0)``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from ..config import TILE_ABOVE, SampleConfig
from ..errors import InputError
from ..runtime.progress import ProgressCallback, report
from .finite import check_finite
from .imagine import Imagination
from .schedulers import make_scheduler

logger = logging.getLogger(__name__)
Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class SampleOutput:
    """images: (B, 3, H, W) float32 in [0, 1]; latents: (B, C, H/f, W/f) raw VAE latents (unscaled)."""

    images: torch.Tensor
    latents: torch.Tensor


@torch.no_grad()
def sample(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler_config: Mapping[str, Any],
    pixels: torch.Tensor,
    imagination: Imagination,
    config: SampleConfig,
    generator: Generators = None,
    callback: ProgressCallback | None = None,
    *,
    mask: torch.Tensor | None = None,
) -> SampleOutput:
    """Edit ``pixels`` (B, 3, H, W) in [0, 1], H and W multiples of the VAE factor, under ``imagination``.

    ``generator`` may live on the CPU whatever the device: noise is then drawn on the CPU and moved,
    so a seed gives the same picture everywhere. A list of B generators gives each image noise of its own,
    the same whatever batch it is edited in. ``mask`` (B, 1, H, W) in [0, 1] limits the edit to where it is 1.
    """
    device, dtype = unet.device, unet.dtype
    _check(pixels, vae)
    mask = _check_mask(mask, pixels)
    imagination = imagination.expand(pixels.shape[0])
    cfg = config.do_classifier_free_guidance

    # 1. conditioning: [imagination, null, null], the pipeline's order
    cond = imagination.imagination.to(device, dtype)  # (B, Q, D)
    if cfg:
        null = imagination.null_imagination.to(device, dtype)
        cond = torch.cat([cond, null, null])  # (3B, Q, D)

    # 2. timesteps of a fresh scheduler
    scheduler = make_scheduler(config.scheduler, scheduler_config)
    scheduler.set_timesteps(config.num_inference_steps, device=device)

    # 3. image latents: the VAE mode, unscaled (as InstructPix2Pix was trained); zeros for the third branch
    tiled = use_vae_tiling(config.vae_tiling, pixels.shape[-2:])
    image = (pixels * 2.0 - 1.0).to(vae.device, vae.dtype)  # (B, 3, H, W) in [-1, 1]
    with vae_tiles(vae, tiled):
        image_latents = vae.encode(image).latent_dist.mode().to(device, dtype)  # (B, C, h, w)
    if cfg:
        image_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])  # (3B, C, h, w)

    # 4. initial noise
    shape = (pixels.shape[0], vae.config.latent_channels, *image_latents.shape[-2:])
    initial_noise = randn_tensor(shape, generator=_generators(generator), device=device, dtype=dtype)
    latents = initial_noise * scheduler.init_noise_sigma
    step_kwargs = _step_kwargs(scheduler, _generators(generator))
    known = image_latents[: shape[0]] * vae.config.scaling_factor  # the input, where the denoised latents live
    keep = _Keep(mask, known, initial_noise) if mask is not None else None

    # 5. denoising loop
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        model_input = torch.cat([latents] * 3) if cfg else latents
        model_input = torch.cat([scheduler.scale_model_input(model_input, t), image_latents], dim=1)  # (3B, 2C, h, w)
        noise = unet(model_input, t, encoder_hidden_states=cond, return_dict=False)[0]
        if cfg:
            e_text, e_image, e_null = noise.chunk(3)
            noise = e_null + config.guidance_scale * (e_text - e_image) + config.image_guidance_scale * (e_image - e_null)
        latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
        if keep is not None:  # outside the mask: the input, at the next step's noise level
            latents = keep.blend(latents, scheduler, timesteps[i + 1] if i + 1 < len(timesteps) else None)
        report(callback, i + 1, len(timesteps))

    # 6. decode
    raw = check_finite(latents, "the denoising (UNet)", dtype) / vae.config.scaling_factor
    decoded = check_finite(decode_latents(vae, raw, tiled), "the VAE's decoding", vae.dtype)
    images = (decoded.float() / 2 + 0.5).clamp(0, 1)
    if mask is not None:  # 7. outside the mask, the input's own pixels
        inside = feather(mask).to(images.device)
        images = inside * images + (1 - inside) * pixels.to(images.device, images.dtype)
    return SampleOutput(images=images, latents=raw.float())


def use_vae_tiling(setting: str, size: Sequence[int]) -> bool:
    """Whether the VAE encodes and decodes ``size`` (H, W) in tiles: diffusers' overlapping tiles of the VAE's
    ``sample_size``, blended. ``auto`` tiles above :data:`TILE_ABOVE` px, so a 2048 px picture fits a small GPU
    while edits within the default 1024 px limit are not tiled."""
    if setting == "auto":
        return max(size) > TILE_ABOVE
    return setting == "on"


def decode_latents(vae: AutoencoderKL, raw: torch.Tensor, tiled: bool = False) -> torch.Tensor:
    """Raw latents -> pixels in [-1, 1]. A half-precision VAE that overflows (inf or NaN, as SD VAEs can on
    some pictures) decodes that batch again in fp32, once, and says so; a finite result is kept as it is."""
    with vae_tiles(vae, tiled):
        decoded = vae.decode(raw.to(vae.device, vae.dtype), return_dict=False)[0]
        if vae.dtype != torch.float16 or bool(torch.isfinite(decoded).all()):
            return decoded
        logger.warning("the VAE overflowed in fp16; decoding this picture again in fp32")
        half = vae.dtype
        nn.Module.to(vae, dtype=torch.float32)
        try:
            return vae.decode(raw.to(vae.device, torch.float32), return_dict=False)[0]
        finally:
            nn.Module.to(vae, dtype=half)


@contextmanager
def vae_tiles(vae: AutoencoderKL, tiled: bool) -> Iterator[None]:
    """diffusers' VAE tiling on (or off) for the calls inside, then as it was (ComfyUI's VAE shares this VAE)."""
    before = vae.use_tiling
    vae.enable_tiling() if tiled else vae.disable_tiling()
    try:
        yield
    finally:
        vae.enable_tiling() if before else vae.disable_tiling()


def _check(pixels: torch.Tensor, vae: AutoencoderKL) -> None:
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise InputError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if pixels.shape[-1] % factor or pixels.shape[-2] % factor:
        raise InputError(f"image size {pixels.shape[-1]}x{pixels.shape[-2]} is not a multiple of {factor}")


@dataclass(frozen=True)
class _Keep:
    """What a masked edit keeps: the input's latents (scaled, as the denoised ones are) outside the mask."""

    mask: torch.Tensor  # (B, 1, H, W) in pixels
    known: torch.Tensor  # (B, C, h, w)
    noise: torch.Tensor  # (B, C, h, w), the initial noise

    def blend(self, latents: torch.Tensor, scheduler: Any, next_t: torch.Tensor | None) -> torch.Tensor:
        inside = F.interpolate(self.mask.float(), size=latents.shape[-2:], mode="area").to(latents)  # (B, 1, h, w)
        known = self.known if next_t is None else scheduler.add_noise(self.known, self.noise, next_t.reshape(1))
        return inside * latents + (1 - inside) * known.to(latents.dtype)


def feather(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` (B, 1, H, W) softened inward over a few pixels (1 per 128 of the longer side): 0 stays 0."""
    radius = max(1, round(max(mask.shape[-2:]) / 128))
    padded = F.pad(mask.float(), (radius,) * 4, mode="replicate")
    return mask.float() * F.avg_pool2d(padded, 2 * radius + 1, stride=1)


def _check_mask(mask: torch.Tensor | None, pixels: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != pixels.shape[0] or mask.shape[-2:] != pixels.shape[-2:]:
        raise InputError(f"mask must be (B, 1, H, W) like the pixels {tuple(pixels.shape)}, got {tuple(mask.shape)}; "
                         "resize it with images.fit_mask")
    for index in torch.nonzero(mask.flatten(1).amax(1) <= 0).flatten().tolist():
        logger.info("the mask of image %d is empty: that image is returned unchanged", index)
    return mask.clamp(0, 1)


def _generators(generator: Generators) -> torch.Generator | list[torch.Generator] | None:
    return list(generator) if isinstance(generator, Sequence) else generator


def _step_kwargs(scheduler: Any, generator: torch.Generator | list[torch.Generator] | None) -> dict[str, Any]:
    # Only some schedulers take ``generator`` (ancestral noise) or ``eta`` (DDIM); pass what each accepts.
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "generator" in params:
        kwargs["generator"] = generator
    if "eta" in params:
        kwargs["eta"] = 0.0
    return kwargs
