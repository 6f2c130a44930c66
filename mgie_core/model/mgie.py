"""The MGIE model: a LLaVA-style multimodal LLM, the edit head, and an InstructPix2Pix UNet + VAE.

``MGIEModel`` only holds the parts; the stages (``derive``, ``imagine``, ``sample``) use them.
Every size and token id comes from the checkpoint (``ModelSpec``), never from constants.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaModel

from ..images import ClipImageConfig
from .edit_head import EditHead
from .tokenizer import LegacyLlamaTokenizer

logger = logging.getLogger(__name__)

IM_PATCH, IM_START, IM_END = "<im_patch>", "<im_start>", "<im_end>"


def visual_token_names(count: int) -> list[str]:
    return [f"[IMG{i}]" for i in range(count)]


@dataclass(frozen=True)
class ModelSpec:
    """Token ids and counts the algorithm needs, all read from the checkpoint."""

    im_patch_token_id: int
    im_start_token_id: int | None
    im_end_token_id: int | None
    visual_token_ids: tuple[int, ...]
    eos_token_id: int
    num_image_patches: int
    max_position_embeddings: int

    @property
    def num_visual_tokens(self) -> int:
        return len(self.visual_token_ids)

    @property
    def use_im_start_end(self) -> bool:
        return self.im_start_token_id is not None


class MultimodalLLM(nn.Module):
    """LLaVA v1: CLIP vision tower -> ``mm_projector`` -> LLaMA decoder -> ``lm_head``."""

    def __init__(self, llm_config: LlamaConfig, vision_config: CLIPVisionConfig, vision_select_layer: int = -2):
        super().__init__()
        self.vision_select_layer = vision_select_layer
        self.train_vision_tower = False
        self.vision_tower = CLIPVisionModel(vision_config)
        self.mm_projector = nn.Linear(vision_config.hidden_size, llm_config.hidden_size)
        self.llm = LlamaModel(llm_config)
        self.lm_head = nn.Linear(llm_config.hidden_size, llm_config.vocab_size, bias=False)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) CLIP pixels -> (B, N, H) projected patch features (CLS dropped, docs/algorithm.md §2.4)."""
        # The vision tower is frozen in MGIE, as in LLaVA; only a model trained from scratch trains it.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_vision_tower):
            out = self.vision_tower(pixel_values.to(self.device, self.vision_tower.dtype), output_hidden_states=True)
            patches = out.hidden_states[self.vision_select_layer][:, 1:]  # (B, N, C)
        return self.mm_projector(patches.to(self.mm_projector.weight.dtype))  # (B, N, H)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token scores from final-norm hidden states, in ``lm_head``'s precision (a 4-bit LLM computes in bf16)."""
        return self.lm_head(hidden.to(self.lm_head.weight.dtype))

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor, im_patch_id: int) -> torch.Tensor:
        """Token embeddings (B, T, H) with the image features written over the ``<im_patch>`` positions."""
        embeds = self.llm.embed_tokens(input_ids)  # (B, T, H)
        mask = (input_ids == im_patch_id).unsqueeze(-1)  # (B, T, 1)
        return embeds.masked_scatter(mask, image_features.to(embeds.dtype))


@dataclass
class MGIEModel:
    """Everything inference and training need, on whatever devices the caller put it."""

    tokenizer: LegacyLlamaTokenizer
    mllm: MultimodalLLM
    edit_head: EditHead
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler_config: dict[str, Any]
    clip_image_config: ClipImageConfig
    spec: ModelSpec
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def modules(self) -> dict[str, nn.Module]:
        return {"mllm": self.mllm, "edit_head": self.edit_head, "unet": self.unet, "vae": self.vae}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MGIEModel:
        """Move every module (in place) and return self."""
        for module in self.modules().values():
            move(module, device, dtype)
        return self

    def eval(self) -> MGIEModel:
        for module in self.modules().values():
            module.eval().requires_grad_(False)
        return self

    @property
    def recommended_sampling(self) -> dict[str, float | int]:
        """The settings its trainers recommend for this model (a bundle's ``sampling`` metadata): guidance and
        working size (``max_side``). mgie-mini's are 2 / 1.5, chosen on validation scenes, and 64 px. Empty for
        Apple's MGIE: the paper's 7.5 / 1.5 and a 1024 px limit are the defaults."""
        return dict(self.info.get("sampling", {}))

    @property
    def world(self) -> dict[str, Any] | None:
        """The description of the closed world a model was trained on (mgie-mini's flat shapes), or None."""
        return self.info.get("extra", {}).get("world")

    def fingerprint(self) -> str:
        """A short id of the base weights, to tie LoRA files to the model they were trained on.

        Computed once from the weights as loaded (shapes, tokenizer, a few tensors rounded to fp16,
        so fp16 and fp32 copies agree) and carried by bundles in their metadata, so a conversion to
        any dtype keeps the id of its source.
        """
        if "fingerprint" not in self.info:
            self.info["fingerprint"] = compute_fingerprint(self)
        return self.info["fingerprint"]

    @property
    def has_lora(self) -> bool:
        """A LoRA is merged into the weights (its name and strength follow a "+" in the fingerprint)."""
        return "+" in self.info.get("fingerprint", "")

    def weights_changed(self) -> None:
        """Training changed the weights: the next :meth:`fingerprint` is computed from them, not the one carried
        over from the file they were loaded from (a LoRA trained on that file must not pass as this model's)."""
        self.info.pop("fingerprint", None)


def compute_fingerprint(model: MGIEModel) -> str:
    digest = hashlib.sha256(model.tokenizer.sp_model_proto)
    for name, module in sorted(model.modules().items()):
        state = module.state_dict()
        for key in sorted(k for k in state if "lora_" not in k):
            digest.update(f"{name}.{key}:{tuple(state[key].shape)}".encode())
        for key in sorted(state)[:: max(1, len(state) // 8)]:
            probe = state[key].detach().flatten()[:256]
            if probe.is_floating_point():
                digest.update(probe.to("cpu", torch.float16).numpy().tobytes())
    return digest.hexdigest()[:16]


def move(module: nn.Module, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """``nn.Module.to`` without diffusers' override, which warns on every dtype cast of its models."""
    return nn.Module.to(module, device=device, dtype=dtype)


def llama_config_from(cfg: dict[str, Any], vocab_size: int) -> LlamaConfig:
    """A LlamaConfig from a LLaVA ``config.json`` (transformers 4.28 field names)."""
    heads = int(cfg["num_attention_heads"])
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
        max_position_embeddings=int(cfg.get("max_position_embeddings") or cfg.get("max_sequence_length") or 2048),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        hidden_act=cfg.get("hidden_act", "silu"),
        pad_token_id=cfg.get("pad_token_id"),
        bos_token_id=cfg.get("bos_token_id", 1),
        eos_token_id=cfg.get("eos_token_id", 2),
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    return config


def clip_vision_config_from(cfg: dict[str, Any]) -> CLIPVisionConfig:
    """The vision half of a CLIP ``config.json`` (a full CLIPModel or a CLIPVisionModel folder)."""
    vision = dict(cfg.get("vision_config") or cfg) if cfg.get("model_type") == "clip" else dict(cfg)
    vision.pop("model_type", None)
    config = CLIPVisionConfig(**{k: v for k, v in vision.items() if not k.startswith("_")})
    config._attn_implementation = "sdpa"
    return config
