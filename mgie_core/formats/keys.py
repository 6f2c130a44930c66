"""Every key rename between the released files and our modules, in one place."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

StateDict = dict[str, torch.Tensor]

# LLaVA-7B-v1 shards -> MultimodalLLM. First matching prefix wins; None drops the key.
LLAVA_TO_MLLM: tuple[tuple[str, str | None], ...] = (
    ("model.mm_projector.", "mm_projector."),
    ("model.vision_tower.", None),  # some LLaVA saves carry CLIP; MGIE loads it from the CLIP folder
    ("model.", "llm."),
    ("lm_head.", "lm_head."),
)

# mgie_7b/mllm.pt -> MGIEModel parts ("mllm." / "edit_head." prefixes).
MLLM_PT_TO_MGIE: tuple[tuple[str, str | None], ...] = (
    ("model.embed_tokens.", "mllm.llm.embed_tokens."),
    ("lm_head.", "mllm.lm_head."),
    ("edit_head.", "edit_head."),
    ("emb", "edit_head.emb"),
)

# Buffers that old checkpoints saved and current modules recompute.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

# Old diffusers VAE attention names (the InstructPix2Pix VAE predates the rename).
VAE_LEGACY_ATTENTION = ((".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0."))

# CLIP vision weights are stored with or without this prefix depending on the transformers version.
CLIP_VISION_PREFIX = "vision_model."


def rename(state: Mapping[str, torch.Tensor], table: Iterable[tuple[str, str | None]]) -> StateDict:
    """Apply a prefix table; keys matching no prefix are dropped, so are ignored buffers."""
    table = tuple(table)
    out: StateDict = {}
    for key, tensor in state.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        for old, new in table:
            if key == old or key.startswith(old):
                if new is not None:
                    out[new + key[len(old):]] = tensor
                break
    return out


def split_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """The entries under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def vae_keys(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename old attention keys of a diffusers VAE to the current names."""
    out: StateDict = {}
    for key, tensor in state.items():
        if ".attentions." in key:
            for old, new in VAE_LEGACY_ATTENTION:
                key = key.replace(old, new)
        out[key] = tensor
    return out


def clip_vision_keys(state: Mapping[str, torch.Tensor], expected: Iterable[str]) -> StateDict:
    """Match CLIP checkpoint keys (full CLIPModel or vision-only, any transformers version) to ``expected``."""
    expected = set(expected)
    with_prefix = any(k.startswith(CLIP_VISION_PREFIX) for k in expected)
    out: StateDict = {}
    for key, tensor in state.items():
        bare = key[len(CLIP_VISION_PREFIX):] if key.startswith(CLIP_VISION_PREFIX) else key
        name = CLIP_VISION_PREFIX + bare if with_prefix else bare
        if name in expected:  # the text tower, projections and logit scale never are
            out[name] = tensor
    return out
