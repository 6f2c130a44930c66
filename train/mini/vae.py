"""mgie-mini's VAE: trained from scratch on world pictures, scaled, then its decoder fine-tuned alone.

The real MGIE reuses Stable Diffusion's pretrained VAE; mgie-mini has to make its own, a KL autoencoder with
4x downsampling. Trained on sampled latents, encoder and decoder together, it leaves a decoder that pulls
colours back to the world's palette (a "cooler" picture loses most of its tint). The decoder is then
fine-tuned alone on the encoder's mode latents, the encoder kept: every latent the UNet learns to produce
stays what it was. It is how Stability improved SD's VAE without retraining any UNet (sd-vae-ft-mse).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from mgie_core.errors import InputError

from .schedule import log_row
from .stream import edit_at, edits_at, pictures

DECODER_STREAM = 5  # the decoder's pictures: not the VAE stage's (seed + 1) nor the scaling's (seed + 2)


def train_vae(vae: AutoencoderKL, steps: int, batch_size: int, seed: int, log: Path, lr: float = 3e-3) -> None:
    """Encoder and decoder on sampled latents of ``batch_size`` pictures a step (the input and target pictures of
    half as many edits): L1 + MSE and a tiny KL, the learning rate on a cosine down to a tenth."""
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    began = time.time()
    for step in range(steps):
        x = pictures([edit_at(seed + 1, step * batch_size + i) for i in range(batch_size // 2)]).to(vae.device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=torch.Generator().manual_seed(step))).sample
        loss = ((recon - x).abs() + (recon - x) ** 2).mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step + 1) / steps)))
        if (step + 1) % 50 == 0 or step + 1 == steps:
            log_row(log, {"phase": "vae", "step": step + 1, "l1_of_255": F.l1_loss(recon, x).item() * 127.5,
                          "seconds": time.time() - began})
    vae.eval().requires_grad_(False)


@torch.no_grad()
def calibrate_scaling(vae: AutoencoderKL, seed: int, count: int = 256) -> float:
    """Set the VAE's ``scaling_factor`` so diffusion latents have unit variance, as SD's 0.18215 does for its VAE."""
    x = pictures([edit_at(seed + 2, i) for i in range(count // 2)]).to(vae.device)
    factor = 1.0 / vae.encode(x).latent_dist.mode().std().item()
    vae.register_to_config(scaling_factor=factor)
    return factor


def decoder_parameters(vae: AutoencoderKL) -> list[torch.nn.Parameter]:
    return [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]


def finetune_decoder(vae: AutoencoderKL, steps: int, batch_size: int = 16, lr: float = 1e-3,
                     seed: int = DECODER_STREAM, log: Path | None = None) -> float:
    """Train ``vae``'s decoder in place on ``batch_size`` edits a step (their input and target pictures): L1 + MSE
    to the picture, a cosine learning rate down to a tenth; the encoder and ``quant_conv`` are untouched.
    Returns the last step's round-trip L1 in /255."""
    vae.requires_grad_(False).eval()
    params = decoder_parameters(vae)
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    vae.decoder.train()
    began, l1 = time.time(), float("nan")
    for step in range(steps):
        x = pictures(edits_at(seed, step, batch_size)).to(vae.device, vae.dtype)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.mode()
        recon = vae.decode(latents).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        l1 = F.l1_loss(recon, x).item() * 127.5
        if log is not None and ((step + 1) % 100 == 0 or step + 1 == steps):
            log_row(log, {"phase": "decoder", "step": step + 1, "l1_of_255": l1, "seconds": time.time() - began})
    vae.eval().requires_grad_(False)
    return l1


def same_encoder(a: AutoencoderKL, b: AutoencoderKL) -> bool:
    """Whether two VAEs encode alike (equal up to fp16 storage): a decoder only fits the encoder it learned from."""
    left, right = a.state_dict(), b.state_dict()
    keys = [k for k in left if k.startswith(("encoder.", "quant_conv."))]
    return all(k in right and torch.allclose(left[k].float(), right[k].float(), rtol=2e-3, atol=2e-4) for k in keys)


def decoder_state(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    return {k: v for k, v in vae.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))}


def swap_decoder(vae: AutoencoderKL, source: AutoencoderKL) -> None:
    """Give ``vae`` the decoder of ``source``; refused when their encoders differ."""
    if not same_encoder(vae, source):
        raise InputError("the two VAE encoders differ: a decoder only fits the encoder it was trained on")
    vae.load_state_dict(decoder_state(source), strict=False)
