"""Each MGIE stage as the nodes run it: GPU residency, progress/cancel, ComfyUI tensors in and out."""

from __future__ import annotations

import dataclasses

import torch

from ..mgie_core import DeriveConfig, Imagination, InputError, SampleConfig, derive, imagine, make_generator, sample
from ..mgie_core.images import fit_for_vae, fit_mask
from ..mgie_core.progress import ProgressCallback, offset
from .runtime import MGIEHandle, image_from_core, image_to_core, intermediate, progress
from .types import DerivationLink


def run_derive(handle: MGIEHandle, image: torch.Tensor, instruction: str, override: str = "",
               max_new_tokens: int = DeriveConfig.max_new_tokens, callback: ProgressCallback | None = None) -> DerivationLink:
    """One instruction (and optional artist-edited expressive instruction) for every image of the batch."""
    config = DeriveConfig(max_new_tokens=max_new_tokens)
    pixels = image_to_core(image)  # (B, 3, H, W)
    count = pixels.shape[0]
    handle.use("derive")
    overrides = [override] * count if override and override.strip() else None
    callback = callback or progress(count * max_new_tokens)
    d = derive(handle.model, list(pixels), [instruction] * count, config, overrides, callback, compiled=handle.compile)
    return DerivationLink(handle, dataclasses.replace(d, visual_tokens=intermediate(d.visual_tokens)))


def expressive_text(link: DerivationLink) -> str:
    texts = list(dict.fromkeys(link.derivation.expressive_instructions))
    return texts[0] if len(texts) == 1 else "\n".join(f"{i}: {t}" for i, t in enumerate(link.derivation.expressive_instructions))


def run_imagine(link: DerivationLink) -> Imagination:
    link.handle.use("imagine")
    out = imagine(link.handle.model.edit_head, link.derivation)
    return Imagination(intermediate(out.imagination), intermediate(out.null_imagination))


def to_conditioning(tensor: torch.Tensor) -> list:
    return [[tensor, {}]]


def from_conditioning(conditioning: list, what: str) -> torch.Tensor:
    if not conditioning:
        raise InputError(f"{what} conditioning is empty: connect the Visual Imagination node's {what} output")
    return conditioning[0][0]


def run_sample(handle: MGIEHandle, image: torch.Tensor, imagination: Imagination, seed: int,
               config: SampleConfig, callback: ProgressCallback | None = None,
               mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Denoise ``image`` under ``imagination``; a ComfyUI MASK ((B,) H, W: one for all images or one per image,
    any size) limits the edit to where it is 1."""
    handle.use("sample")
    pixels = fit_for_vae(image_to_core(image), handle.model.vae_scale_factor, config.max_side)
    mask = fit_mask(mask, tuple(pixels.shape[-2:]), pixels.shape[0]) if mask is not None else None
    m = handle.model
    out = sample(handle.sampling_unet, m.vae, m.scheduler_config, pixels, imagination, config, make_generator(seed),
                 callback or progress(config.num_inference_steps), mask=mask)
    return image_from_core(out.images), {"samples": intermediate(out.latents)}


def mask_note(mask: torch.Tensor | None) -> str:
    """What the node says about its mask: nothing, or that an empty mask left the image unchanged."""
    if mask is None:
        return ""
    empty = (mask if mask.ndim > 2 else mask[None]).flatten(1).amax(1) <= 0  # one per mask of the batch
    if bool(empty.all()):
        return "\nThe mask is empty (nothing painted): the image is returned unchanged."
    if bool(empty.any()):
        return f"\nThe masks of images {empty.nonzero().flatten().tolist()} are empty: those images are unchanged."
    return ""


def edit_progress(image: torch.Tensor, max_new_tokens: int, steps: int,
                  edits: int = 1) -> list[tuple[ProgressCallback, ProgressCallback]]:
    """One progress bar over every stage of a one-node edit of ``edits`` steps: (derive, sample) callbacks per step."""
    tokens = image.shape[0] * max_new_tokens
    per_edit = tokens + steps
    total = per_edit * edits
    bar = progress(total)
    return [(offset(bar, k * per_edit, total), offset(bar, k * per_edit + tokens, total)) for k in range(edits)]
