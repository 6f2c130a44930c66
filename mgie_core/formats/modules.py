"""Modules built from configs: empty (meta device, no weight initialisation), then the file's weights assigned.

Apple's folders and bundles both describe a model by its configs and state dicts; these builders turn
those into modules, check that the parts fit together, and read the token ids the algorithm needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel

from ..errors import CheckpointError
from ..model.edit_head import EditHead, EditHeadConfig
from ..model.mgie import (
    IM_END,
    IM_PATCH,
    IM_START,
    ModelSpec,
    MultimodalLLM,
    clip_vision_config_from,
    llama_config_from,
    visual_token_names,
)
from ..model.tokenizer import LegacyLlamaTokenizer
from . import keys
from .weights import StateDict, load_into


@contextmanager
def empty_modules() -> Iterator[None]:
    """Build modules with parameters on the meta device and no weight initialisation at all.

    The weights are assigned from the files right after, so initialising them is wasted work; on the
    meta device it still costs Python-level dispatch per tensor (two thirds of a bundle's load time).
    """
    try:  # transformers' own switch for torch.nn.init and PreTrainedModel.init_weights
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: only the meta device
        no_init_weights = nullcontext
    with init_empty_weights(), no_init_weights():
        yield


def build_mllm(llava_cfg: dict[str, Any], clip_cfg: dict[str, Any], vocab_size: int) -> MultimodalLLM:
    """An empty (meta-device) MultimodalLLM shaped by the LLaVA and CLIP configs."""
    try:
        llm_config = llama_config_from(llava_cfg, vocab_size)
        vision_config = clip_vision_config_from(clip_cfg)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"model config is incomplete or invalid ({err})") from None
    with empty_modules():
        return MultimodalLLM(llm_config, vision_config, int(llava_cfg.get("mm_vision_select_layer", -2)))


def build_edit_head(config: EditHeadConfig, state: StateDict, source: str) -> EditHead:
    with empty_modules():
        head = EditHead(config)
    load_into(head, state, source)
    return head


def build_unet(config: dict[str, Any], state: StateDict, source: str) -> UNet2DConditionModel:
    with empty_modules():
        unet = UNet2DConditionModel.from_config(_public(config))
    load_into(unet, state, source)
    return unet


def build_vae(config: dict[str, Any], state: StateDict, source: str) -> AutoencoderKL:
    with empty_modules():
        vae = AutoencoderKL.from_config(_public(config))
    load_into(vae, keys.vae_keys(state), source)
    return vae


def _public(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def make_spec(tokenizer: LegacyLlamaTokenizer, llava_cfg: dict[str, Any], mllm: MultimodalLLM,
              edit_config: EditHeadConfig) -> ModelSpec:
    use_start_end = bool(llava_cfg.get("mm_use_im_start_end", True))
    needed = [IM_PATCH] + ([IM_START, IM_END] if use_start_end else [])
    absent = [t for t in needed if t not in tokenizer.added_tokens]
    if absent:
        raise CheckpointError(f"the tokenizer lacks {', '.join(absent)} (added_tokens.json of the LLaVA folder)")
    vision = mllm.vision_tower.config
    return ModelSpec(
        im_patch_token_id=tokenizer.added_tokens[IM_PATCH],
        im_start_token_id=tokenizer.added_tokens[IM_START] if use_start_end else None,
        im_end_token_id=tokenizer.added_tokens[IM_END] if use_start_end else None,
        visual_token_ids=tuple(tokenizer.added_tokens[t] for t in visual_token_names(edit_config.num_visual_tokens)),
        eos_token_id=tokenizer.eos_token_id,
        num_image_patches=(vision.image_size // vision.patch_size) ** 2,
        max_position_embeddings=mllm.llm.config.max_position_embeddings,
    )


def check_compatible(unet: UNet2DConditionModel, vae: AutoencoderKL, edit_config: EditHeadConfig, source: str) -> None:
    latent = vae.config.latent_channels
    if unet.config.in_channels != 2 * latent:
        raise CheckpointError(
            f"{source}: the UNet takes {unet.config.in_channels} input channels, an InstructPix2Pix UNet needs "
            f"{2 * latent} (noisy latent + image latent)"
        )
    if unet.config.cross_attention_dim != edit_config.output_size:
        raise CheckpointError(
            f"{source}: the edit head writes {edit_config.output_size}-wide conditioning, the UNet reads "
            f"{unet.config.cross_attention_dim}"
        )

