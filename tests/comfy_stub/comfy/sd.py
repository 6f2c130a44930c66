"""Stub of ``comfy.sd.VAE``: ComfyUI's defaults and its encode/decode around ``first_stage_model``."""

import logging

import torch

from . import model_management


class VAE:
    def __init__(self, sd=None, device=None, config=None, dtype=None, metadata=None):
        self.downscale_ratio = self.upscale_ratio = 8
        self.latent_channels = 4
        self.process_input = lambda image: image * 2.0 - 1.0
        self.process_output = lambda image: image.add_(1.0).div_(2.0).clamp_(0.0, 1.0)
        self.working_dtypes = [torch.bfloat16, torch.float32]
        if not sd:
            logging.warning("WARNING: No VAE weights detected, VAE not initalized.")
            self.first_stage_model = None
            return
        raise NotImplementedError("the stub builds no VAE from weights")

    def encode(self, pixel_samples):
        """(B, H, W, C) in [0, 1] -> raw latents, as ComfyUI's VAE.encode."""
        model_management.load_models_gpu([self.patcher])
        pixels = self.process_input(pixel_samples[..., :3].movedim(-1, 1)).to(self.vae_dtype).to(self.device)
        return self.first_stage_model.encode(pixels).to(self.output_device).float()

    def decode(self, samples):
        """Raw latents -> (B, H, W, C) in [0, 1], as ComfyUI's VAE.decode."""
        model_management.load_models_gpu([self.patcher])
        pixels = self.first_stage_model.decode(samples.to(self.vae_dtype).to(self.device)).to(self.output_device).float()
        return self.process_output(pixels).movedim(1, -1)
