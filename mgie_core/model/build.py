"""Building an MGIE model from what shapes it: the one factory every source of a model goes through.

Apple's folders and bundles describe a model by its configs and state dicts (:mod:`mgie_core.formats`); the
benchmarks' random models, mgie-mini's fresh start and the tests' tiny checkpoints by configs alone. Each hands
:class:`ModelConfigs` and a tokenizer to :func:`build_model`, which builds the modules (empty, on the meta device,
when weights follow; initialised at random otherwise), assigns the weights, checks that the parts fit together and
reads the token ids the algorithm needs from the tokenizer and the configs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel

from ..errors import CheckpointError
from ..images import ClipImageConfig
from .edit_head import EditHead, EditHeadConfig
from .mgie import (
    IM_END,
    IM_PATCH,
    IM_START,
    MGIEModel,
    ModelSpec,
    MultimodalLLM,
    clip_vision_config_from,
    llama_config_from,
    visual_token_names,
)
from .tokenizer import LegacyLlamaTokenizer

StateDict = dict[str, torch.Tensor]
PARTS = ("mllm", "edit_head", "unet", "vae")


@dataclass(frozen=True)
class ModelConfigs:
    """Everything that shapes an MGIE model, as its files hold it."""

    llava: dict[str, Any]  # LLaVA's config.json: the LLaMA sizes and the mm_* fields
    clip: dict[str, Any]  # CLIP's config.json (a full CLIPModel's, or its vision half)
    edit_head: EditHeadConfig
    unet: dict[str, Any]  # diffusers UNet2DConditionModel config (InstructPix2Pix: 8 input channels)
    vae: dict[str, Any]  # diffusers AutoencoderKL config
    scheduler: dict[str, Any] = field(default_factory=dict)  # diffusers scheduler config
    clip_image: ClipImageConfig = field(default_factory=ClipImageConfig)


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


@contextmanager
def _random_on(device: torch.device | str | None, dtype: torch.dtype | None) -> Iterator[None]:
    """Initialise new modules directly on ``device`` in ``dtype`` (a 7B model fits no CPU-side fp32 copy)."""
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        with torch.device(device) if device is not None else nullcontext():
            yield
    finally:
        torch.set_default_dtype(previous)


def build_model(tokenizer: LegacyLlamaTokenizer, configs: ModelConfigs, states: Mapping[str, StateDict] | None = None,
                *, vocab_size: int | None = None, empty: bool = False, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None, source: str = "", info: dict[str, Any] | None = None,
                where: Mapping[str, str] | None = None) -> MGIEModel:
    """An :class:`MGIEModel` shaped by ``configs``.

    ``states``: each part's weights (``mllm``, ``edit_head``, ``unet``, ``vae``), assigned to empty modules and
    checked key by key (``where`` names each part's file in errors). Without them, ``empty`` leaves the modules on
    the meta device (to check tensors against, as ``assemble`` does), else they are initialised at random on
    ``device`` in ``dtype``, in a fixed order (the LLM, the edit head, the UNet, the VAE), so a seed gives the same
    model. ``vocab_size``: the LLM's rows (default: the tokenizer's)."""
    vocab = tokenizer.vocab_size if vocab_size is None else vocab_size
    try:
        llm_config, vision_config = llama_config_from(configs.llava, vocab), clip_vision_config_from(configs.clip)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: model config is incomplete or invalid ({err})") from None
    building = empty_modules() if states is not None or empty else _random_on(device, dtype)
    try:
        with building:
            mllm = MultimodalLLM(llm_config, vision_config, int(configs.llava.get("mm_vision_select_layer", -2)))
            edit_head = EditHead(configs.edit_head)
            unet = UNet2DConditionModel.from_config(_public(configs.unet))
            vae = AutoencoderKL.from_config(_public(configs.vae))
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{source}: the UNet or VAE config is invalid ({err})") from None
    modules = {"mllm": mllm, "edit_head": edit_head, "unet": unet, "vae": vae}
    if states is not None:
        from ..formats.keys import vae_keys
        from ..formats.weights import load_into

        for part in PARTS:
            state = vae_keys(states[part]) if part == "vae" else states[part]
            load_into(modules[part], state, (where or {}).get(part, source))
    check_compatible(unet, vae, configs.edit_head, source)
    model = MGIEModel(tokenizer=tokenizer, mllm=mllm, edit_head=edit_head, unet=unet, vae=vae,
                      scheduler_config=dict(configs.scheduler), clip_image_config=configs.clip_image,
                      spec=make_spec(tokenizer, configs.llava, mllm, configs.edit_head), source=source,
                      info={"llava_config": configs.llava, "clip_config": configs.clip, **(info or {})})
    return model if states is None and not empty else model.eval()  # a random model may be trained


def vision_tower_keys(clip: Mapping[str, Any]) -> list[str]:
    """The state-dict keys of the vision tower a CLIP config makes (to name a CLIP file's tensors by)."""
    from transformers import CLIPVisionModel

    with empty_modules():
        return list(CLIPVisionModel(clip_vision_config_from(dict(clip))).state_dict())


def _public(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def make_spec(tokenizer: LegacyLlamaTokenizer, llava_cfg: Mapping[str, Any], mllm: MultimodalLLM,
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
