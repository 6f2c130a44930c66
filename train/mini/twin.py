"""InstructPix2Pix training on the edit world: the recipe's first UNet stage, and mgie-mini's twin baseline.

The twin is the paper's baseline in miniature: mgie-mini's UNet and VAE conditioned on a small text encoder
of the *brief* instruction, no MLLM, trained on the same edit stream with the same batch. Trained for as many
UNet steps as the shipped model's (21,600), on its VAE, it is what the model card compares mgie-mini with.

    python -m train.mini.twin --out runs/ip2p-twin.safetensors [--vae BUNDLE] [--max-steps 21600]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors import safe_open
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from mgie_core.errors import MGIEError
from mgie_core.formats import load_model
from mgie_core.formats.aligned import save_aligned
from mgie_core.formats.weights import read_state_dict
from mgie_core.model.mgie import MGIEModel
from mgie_core.model.tokenizer import LegacyLlamaTokenizer
from mgie_core.runtime.devices import resolve_device
from train.objective import diffusion_goal, dropout_masks

from .model import UNET, VAE, scheduler_config, train_tokenizer
from .schedule import log_row, warmup_cosine
from .stream import edits_at, pictures

logger = logging.getLogger("mgie.mini")
TEXT_LENGTH = 24  # tokens; the world's longest instruction is 18 (with <s>)
FORMAT = "mgie-mini-ip2p-twin"


class Twin(nn.Module):
    """A UNet conditioned on a small CLIP text encoder of the brief instruction."""

    def __init__(self, tokenizer: LegacyLlamaTokenizer, vae: AutoencoderKL, unet: UNet2DConditionModel | None = None):
        super().__init__()
        self.tokenizer, self.scheduler_config = tokenizer, scheduler_config()
        self.text_config = CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=UNET["cross_attention_dim"],
                                          intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                          max_position_embeddings=TEXT_LENGTH, bos_token_id=1, eos_token_id=2,
                                          pad_token_id=0)
        self.text_encoder = CLIPTextModel(self.text_config)
        self.unet = unet if unet is not None else UNet2DConditionModel(**UNET)
        self.vae = vae

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(B, TEXT_LENGTH, D) conditioning of instructions ("" gives the null conditioning)."""
        ids = [self.tokenizer.encode(t)[:TEXT_LENGTH] for t in texts]
        ids = torch.tensor([row + [0] * (TEXT_LENGTH - len(row)) for row in ids], device=self.text_encoder.device)
        return self.text_encoder(input_ids=ids).last_hidden_state


def train_twin(twin: Twin, steps: int, batch_size: int, lr: float, seed: int, log: Path, phase: str = "twin") -> None:
    """``steps`` InstructPix2Pix steps on stream ``seed``: the diffusion loss of mgie-mini's joint stage (the same
    target rule and conditioning dropout), conditioned on the text encoder instead of the visual imagination."""
    params = list(twin.text_encoder.parameters()) + list(twin.unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps))
    ddpm = DDPMScheduler.from_config(twin.scheduler_config)
    device = twin.unet.device  # random draws stay on the CPU: the same stream on any device
    twin.text_encoder.train(), twin.unet.train(), twin.vae.eval().requires_grad_(False)
    began = time.time()
    for step in range(steps):
        edits = edits_at(seed, step, batch_size)
        pixels = pictures(edits).to(device)  # (2B, 3, 64, 64): input, target, input, target, ...
        generator = torch.Generator().manual_seed(seed * 7 + step)
        with torch.no_grad():
            source = twin.vae.encode(pixels[0::2]).latent_dist.mode()
            target = twin.vae.encode(pixels[1::2]).latent_dist.mode() * twin.vae.config.scaling_factor
        noise = torch.randn(target.shape, generator=generator).to(device)
        t = torch.randint(0, ddpm.config.num_train_timesteps, (batch_size,), generator=generator).to(device)
        drop_text, keep_image = (m.to(device) for m in dropout_masks(batch_size, 0.05, generator))
        cond = torch.where(drop_text[:, None, None], twin.encode([""] * batch_size),
                           twin.encode([e.instruction for e in edits]))
        source = source * keep_image[:, None, None, None].float()
        pred = twin.unet(torch.cat([ddpm.add_noise(target, noise, t), source], dim=1), t, cond).sample
        loss = F.mse_loss(pred, diffusion_goal(ddpm, target, noise, t))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % 25 == 0 or step + 1 == steps:
            log_row(log, {"phase": phase, "step": step + 1, "loss_edit": loss.item(), "lr": schedule.get_last_lr()[0],
                          "steps_per_s": (step + 1) / (time.time() - began)})
    twin.eval().requires_grad_(False)


def train_ip2p(model: MGIEModel, steps: int, batch_size: int, lr: float, seed: int, log: Path) -> None:
    """The recipe's InstructPix2Pix stage: ``model.unet`` learns to edit from brief instructions first (the real
    MGIE starts from InstructPix2Pix's UNet); the text encoder that taught it is then dropped."""
    twin = Twin(model.tokenizer, model.vae, unet=model.unet).to(model.unet.device)
    train_twin(twin, steps, batch_size, lr, seed + 3, log, phase="ip2p")


def save_twin(twin: Twin, path: Path) -> Path:
    tensors = {f"text_encoder.{k}": v for k, v in twin.text_encoder.state_dict().items()}
    tensors.update({f"unet.{k}": v for k, v in twin.unet.state_dict().items()})
    tensors.update({f"vae.{k}": v for k, v in twin.vae.state_dict().items()})
    tensors["tokenizer.sp_model"] = torch.frombuffer(bytearray(twin.tokenizer.sp_model_proto), dtype=torch.uint8)
    meta = {"format": FORMAT, "added_tokens": json.dumps(twin.tokenizer.added_tokens),
            "scaling_factor": str(twin.vae.config.scaling_factor)}
    return save_aligned({k: v.contiguous() for k, v in tensors.items()}, path, meta)


def load_twin(path: str | Path) -> Twin:
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    state = read_state_dict(path)
    tokenizer = LegacyLlamaTokenizer(state.pop("tokenizer.sp_model").numpy().tobytes(), json.loads(meta["added_tokens"]))
    twin = Twin(tokenizer, AutoencoderKL(**VAE))
    twin.load_state_dict(state)
    twin.vae.register_to_config(scaling_factor=float(meta["scaling_factor"]))
    return twin.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", help="the mgie-mini bundle whose VAE the twin trains on and decodes with "
                                      "(default: the embedded mgie-mini)")
    parser.add_argument("--out", default="runs/ip2p-twin.safetensors", help="default: %(default)s")
    parser.add_argument("--max-steps", type=int, default=21600,
                        help="default: %(default)s, the shipped model's UNet steps (2,000 InstructPix2Pix + 19,600 joint)")
    parser.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=5e-4, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--device", default="cpu", help="cpu or cuda; random draws stay on the CPU (default: cpu)")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        vae = load_model(args.vae).vae.float()  # its scaling factor kept: the twin sees the latents the model saw
    except MGIEError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="[ip2p-twin] %(message)s")
    torch.manual_seed(args.seed)
    twin = Twin(train_tokenizer(), vae).to(device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    began = time.time()
    train_twin(twin, args.max_steps, args.batch_size, args.lr, args.seed, out.with_suffix(".log.jsonl"))
    save_twin(twin, out)
    logger.info("wrote %s after %.1f minutes", out, (time.time() - began) / 60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
