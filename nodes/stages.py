"""MGIE's stages as the nodes run them: ComfyUI tensors in and out, progress and Cancel, the placed model's
stages on the GPU. The whole edit (MGIE Edit) is mgie_core's runner; the single-stage nodes call the same pieces."""

from __future__ import annotations

import dataclasses

import torch

from ..mgie_core import DeriveConfig, Edit, Imagination, InputError, SampleConfig, derive, imagine
from ..mgie_core.images import mask_batch, vae_size
from ..mgie_core.runner import OneBar, check_seed, run_edit, sample_pictures
from .runtime import MGIEHandle, image_from_core, image_to_core, intermediate, progress
from .types import DerivationLink


def run_derive(handle: MGIEHandle, image: torch.Tensor, instruction: str, override: str,
               config: DeriveConfig) -> DerivationLink:
    """One instruction (and optional artist-edited expressive instruction) for every image of the batch."""
    pixels = image_to_core(image)  # (B, 3, H, W)
    count = pixels.shape[0]
    handle.place("derive")
    overrides = [override] * count if override and override.strip() else None
    d = derive(handle.model, list(pixels), [instruction] * count, config, overrides,
               progress(count * config.max_new_tokens), compiled=handle.compiled)
    return DerivationLink(handle, dataclasses.replace(d, visual_tokens=intermediate(d.visual_tokens)))


def run_imagine(link: DerivationLink) -> Imagination:
    link.handle.place("imagine")
    out = imagine(link.handle.model.edit_head, link.derivation)
    return Imagination(intermediate(out.imagination), intermediate(out.null_imagination))


def run_sample(handle: MGIEHandle, image: torch.Tensor, imagination: Imagination, seed: int, config: SampleConfig,
               mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Denoise ``image`` under ``imagination``; a ComfyUI MASK ((B,) H, W: one for all images or one per image,
    any size) limits the edit to where it is 1."""
    handle.place("sample")
    masks = mask_batch(mask) if mask is not None else None
    out = sample_pictures(handle, list(image_to_core(image)), imagination, config, (check_seed(seed),), masks,
                          progress(config.num_inference_steps))
    return image_from_core(out.images), {"samples": intermediate(out.latents)}


def run_chain(handle: MGIEHandle, image: torch.Tensor, chain: list[str], override: str, seed: int,
              derive_config: DeriveConfig, config: SampleConfig, mask: torch.Tensor | None = None):
    """The whole edit by mgie_core's runner, one progress bar over every stage of every instruction; the last
    pictures (ComfyUI IMAGE), each instruction's expressive text, and the notices to show."""
    edit = Edit.of(image_to_core(image), chain, override if override and override.strip() else None, seed, mask,
                   chained=True)
    tokens, steps = len(edit.images) * derive_config.max_new_tokens, config.num_inference_steps
    bar = OneBar(progress((tokens + steps) * len(edit.chain)), tokens, steps, len(edit.chain))
    results = run_edit(handle, edit, derive_config, config, bar)
    notices = "".join(f"\n{notice}" for notice in results[-1].notices)
    return image_from_core(results[-1].output.images), [expressive_text(r.derivation) for r in results], notices


def expressive_text(derivation) -> str:
    texts = list(dict.fromkeys(derivation.expressive_instructions))
    return texts[0] if len(texts) == 1 else "\n".join(f"{i}: {t}" for i, t in enumerate(derivation.expressive_instructions))


def to_conditioning(tensor: torch.Tensor) -> list:
    return [[tensor, {}]]


def from_conditioning(conditioning: list, what: str) -> torch.Tensor:
    if not conditioning:
        raise InputError(f"{what} conditioning is empty: connect the Visual Imagination node's {what} output")
    return conditioning[0][0]


def size_note(handle: MGIEHandle, image: torch.Tensor, config: SampleConfig) -> str:
    """What the node says when the picture is edited at another size than it came in (the model's working size,
    or the max_side limit): so a small result is no surprise."""
    height, width = image.shape[1:3]
    edited = vae_size(width, height, handle.model.vae_scale_factor, config.max_side)
    if edited == (width, height):
        return ""
    return (f"\nEdited at {edited[0]}x{edited[1]} (the input is {width}x{height}; max_side {config.max_side}): "
            "upscale the result, or raise max_side, for the input's size.")


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
