"""MGIE's UNet and VAE as ComfyUI's own MODEL and VAE, for stock samplers, guiders and VAE nodes.

MODEL is ComfyUI's InstructPix2Pix model (``SD15_instructpix2pix``) built with ComfyUI's own key map and
model classes over MGIE's UNet parameters: the same Parameter objects, so there is one copy of the
weights and moving either model moves both. VAE is ComfyUI's ``VAE`` whose first stage is MGIE's own
VAE module. (A ComfyUI LoRA patched into MODEL replaces MODEL's patched weights only: MGIE Sampler
keeps the unpatched ones.)
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import comfy.latent_formats
import comfy.model_base
import comfy.model_detection
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.utils
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from ..mgie_core import CheckpointError

# diffusers' beta schedules under ComfyUI's names ("linear" there is diffusers' scaled_linear)
BETA_SCHEDULES = {"scaled_linear": "linear", "linear": "sqrt_linear", "squaredcos_cap_v2": "cosine"}
PREDICTIONS = {"epsilon": "EPS", "v_prediction": "V_PREDICTION"}
NO_EQUIVALENT = "use MGIE Sampler, which runs every MGIE UNet"


def ldm_layout(config: Any) -> dict:
    """The block layout ComfyUI's diffusers key map needs, read from a diffusers UNet config."""
    _check_unet(config)
    levels, layers = len(config.block_out_channels), config.layers_per_block
    depths = config.transformer_layers_per_block
    depths = list(depths) if isinstance(depths, (list, tuple)) else [depths] * levels

    def depth(kind: str, level: int) -> int:
        return depths[level] if kind.startswith("CrossAttn") else 0

    down = [depth(kind, level) for level, kind in enumerate(config.down_block_types) for _ in range(layers)]
    up = [depth(kind, levels - 1 - level) for level, kind in enumerate(config.up_block_types) for _ in range(layers + 1)]
    return {"num_res_blocks": [layers] * levels,
            "channel_mult": [c // config.block_out_channels[0] for c in config.block_out_channels],
            "transformer_depth": down, "transformer_depth_output": up[::-1], "transformer_depth_middle": depths[-1]}


def _check_unet(config: Any) -> None:
    """Refuse, in one line, a UNet that ComfyUI's SD1.5 model cannot express."""
    problems = [name for name, bad in (
        ("layers_per_block", not isinstance(config.layers_per_block, int)),
        ("attention_head_dim", not isinstance(config.attention_head_dim, int)),
        ("norm_num_groups", config.norm_num_groups != 32),
        ("mid_block_type", config.mid_block_type != "UNetMidBlock2DCrossAttn"),
        ("class_embed_type", config.class_embed_type is not None),
        ("addition_embed_type", config.addition_embed_type is not None),
        ("time_cond_proj_dim", config.time_cond_proj_dim is not None),
        ("upcast_attention", bool(config.upcast_attention)),
    ) if bad]
    if problems:
        raise CheckpointError(f"this MGIE UNet has no ComfyUI MODEL equivalent ({', '.join(problems)}); {NO_EQUIVALENT}")


def sampling_settings(scheduler_config: dict) -> dict:
    """ComfyUI's noise schedule settings for the checkpoint's scheduler config (the one MGIE Sampler uses)."""
    schedule = scheduler_config.get("beta_schedule", "scaled_linear")
    if schedule not in BETA_SCHEDULES or scheduler_config.get("trained_betas") is not None:
        raise CheckpointError(f"the UNet's noise schedule {schedule!r} has no ComfyUI equivalent; {NO_EQUIVALENT}")
    return {"beta_schedule": BETA_SCHEDULES[schedule], "linear_start": scheduler_config.get("beta_start", 0.00085),
            "linear_end": scheduler_config.get("beta_end", 0.012),
            "timesteps": scheduler_config.get("num_train_timesteps", 1000),
            "zsnr": bool(scheduler_config.get("rescale_betas_zero_snr", False))}


def model_type(scheduler_config: dict) -> Any:
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise CheckpointError(f"the UNet predicts {prediction!r}, which ComfyUI's SD1.5 model does not; {NO_EQUIVALENT}")
    return getattr(comfy.model_base.ModelType, PREDICTIONS[prediction])


def comfy_model(unet: UNet2DConditionModel, scheduler_config: dict, latent_scale: float) -> Any:
    """MGIE's UNet as ComfyUI's InstructPix2Pix MODEL (a ModelPatcher), over the same tensors."""
    names = comfy.utils.unet_to_diffusers(ldm_layout(unet.config))  # diffusers name -> ComfyUI name
    state = dict(unet.named_parameters())  # the Parameter objects themselves: both models move together
    unmapped = [key for key in unet.state_dict() if key not in names or key not in state]
    if unmapped:
        raise CheckpointError(f"{len(unmapped)} MGIE UNet weights (e.g. {unmapped[0]}) have no place in ComfyUI's "
                              f"SD1.5 UNet; {NO_EQUIVALENT}")
    weights = {names[key]: parameter.requires_grad_(False) for key, parameter in state.items()}
    unet_config = comfy.model_detection.detect_unet_config(weights, "")
    model_config = comfy.supported_models.SD15_instructpix2pix(unet_config)
    model_config.unet_config.update(num_heads=unet.config.attention_head_dim, num_head_channels=-1)
    model_config.latent_format = comfy.latent_formats.SD15(scale_factor=latent_scale)
    model_config.sampling_settings = sampling_settings(scheduler_config)
    load_device = mm.get_torch_device()
    manual_cast = mm.unet_manual_cast(unet.dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet.dtype, manual_cast)
    model = comfy.model_base.SD15_instructpix2pix(model_config, model_type=model_type(scheduler_config))
    model.diffusion_model.load_state_dict(weights, strict=True, assign=True)  # MGIE's parameters, not a copy
    return comfy.model_patcher.ModelPatcher(model.eval(), load_device=load_device, offload_device=mm.unet_offload_device())


class FirstStage(nn.Module):
    """MGIE's diffusers VAE with the calls ComfyUI's VAE makes: pixels in [-1, 1] <-> raw (unscaled) latents."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode()  # the mode, as MGIE Sampler encodes

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.vae.dtype)).sample


def comfy_vae(vae: AutoencoderKL) -> comfy.sd.VAE:
    """ComfyUI's VAE over MGIE's VAE module: VAE Encode/Decode, their tiled versions and InstructPix2Pix
    conditioning use MGIE's own weights."""
    out = comfy.sd.VAE.__new__(comfy.sd.VAE)
    with _quiet():  # an empty state dict sets this ComfyUI version's defaults and builds nothing
        comfy.sd.VAE.__init__(out, sd={})
    out.first_stage_model = FirstStage(vae).eval()
    out.downscale_ratio = out.upscale_ratio = 2 ** (len(vae.config.block_out_channels) - 1)
    out.latent_channels = vae.config.latent_channels
    out.working_dtypes = [vae.dtype]
    out.vae_dtype = vae.dtype
    out.device = mm.vae_device()
    out.output_device = mm.intermediate_device()
    out.patcher = comfy.model_patcher.ModelPatcher(out.first_stage_model, load_device=out.device,
                                                   offload_device=mm.vae_offload_device())
    return out


@contextlib.contextmanager
def _quiet():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
