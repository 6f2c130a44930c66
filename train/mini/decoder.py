"""Fine-tune mgie-mini's VAE decoder alone, the encoder frozen: a better picture from the same latents.

    python -m train.mini.decoder --model runs/mgie-mini.safetensors --out runs/mgie-mini-v11.safetensors \
        [--steps 2000] [--twin runs/ip2p-twin-v10.safetensors --twin-out runs/ip2p-twin-v11.safetensors]
    python -m train.mini.decoder --model runs/mini-v12-raw.safetensors --decoder-from runs/mgie-mini-v11.safetensors \
        --out runs/mgie-mini-v12.safetensors   # a decoder already fine-tuned for this encoder, no training

The build's VAE stage trains encoder and decoder together on *sampled* latents, and leaves a decoder that
pulls colours back to the world's palette: through its round trip a "cooler" or "warmer" ground truth
loses most of its tint, so no denoiser could pass the edit check there (README: the ceiling column).
Here the encoder, and so every latent the UNet was trained to produce, stays as it is; only the decoder
(and its ``post_quant_conv``) learns again, on the encoder's mode latents of the stream's pictures,
before and after each edit. It is how Stability improved SD's VAE without retraining any UNet
(sd-vae-ft-mse: decoder fine-tuned, encoder kept). ``--twin`` gives the InstructPix2Pix twin, trained
on the same encoder, the same new decoder, so the two editors still decode alike.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from mgie_core import load_model
from mgie_core.errors import InputError
from mgie_core.formats.bundle import save_bundle

from .build import edits_at, pictures
from .twin import load_twin, save_twin

logger = logging.getLogger("mgie.decoder")
STREAM_SEED = 5  # the build uses 0 (joint), 1 (VAE), 2 (scaling), 3 (InstructPix2Pix): pictures of its own


def decoder_parameters(vae: AutoencoderKL) -> list[torch.nn.Parameter]:
    return [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]


def finetune_decoder(vae: AutoencoderKL, steps: int, batch_size: int = 16, lr: float = 1e-3, seed: int = STREAM_SEED,
                     log_every: int = 100) -> list[dict]:
    """Train ``vae``'s decoder in place (L1 + MSE to the picture, cosine learning rate down to 0.1);
    the encoder and ``quant_conv`` are untouched. Returns the logged rows (step, L1 in /255, seconds)."""
    vae.requires_grad_(False).eval()
    params = decoder_parameters(vae)
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    vae.decoder.train()
    rows, began = [], time.time()
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
        if (step + 1) % log_every == 0 or step + 1 == steps:
            rows.append({"step": step + 1, "l1_of_255": F.l1_loss(recon, x).item() * 127.5, "seconds": time.time() - began})
            logger.info("step %d  L1 %.2f/255  %.0f s", *rows[-1].values())
    vae.eval().requires_grad_(False)
    return rows


def same_encoder(a: AutoencoderKL, b: AutoencoderKL) -> bool:
    """Whether two VAEs encode alike (equal up to fp16 storage): a decoder only fits the encoder it learned from."""
    left, right = a.state_dict(), b.state_dict()
    keys = [k for k in left if k.startswith(("encoder.", "quant_conv."))]
    return all(k in right and torch.allclose(left[k].float(), right[k].float(), rtol=2e-3, atol=2e-4) for k in keys)


def swap_decoder(vae: AutoencoderKL, source: AutoencoderKL) -> None:
    """Give ``vae`` the decoder of ``source``; refused when their encoders differ."""
    if not same_encoder(vae, source):
        raise InputError("the two VAE encoders differ: a decoder only fits the encoder it was trained on "
                         "(give a twin or bundle trained with this model's VAE)")
    state = {k: v for k, v in source.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))}
    vae.load_state_dict(state, strict=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="the mgie-mini bundle whose decoder to fine-tune (default: the embedded one)")
    parser.add_argument("--out", required=True, help="the bundle to write (fp16)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16, help="edits per step (each gives two pictures)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--decoder-from", help="take the decoder of this bundle (same VAE encoder) instead of training "
                        "one: a model trained on keeps the decoder fine-tuned for its encoder")
    parser.add_argument("--twin", help="an InstructPix2Pix twin trained on the same VAE: give it the new decoder too")
    parser.add_argument("--twin-out", help="where to write that twin (required with --twin)")
    args = parser.parse_args(argv)
    if bool(args.twin) != bool(args.twin_out):
        parser.error("--twin and --twin-out go together")
    logging.basicConfig(level=logging.INFO, format="[mgie-mini decoder] %(message)s")
    model = load_model(args.model)
    twin = load_twin(args.twin) if args.twin else None
    vae = model.vae.float()
    if twin is not None and not same_encoder(twin.vae, vae):
        parser.error(f"{args.twin}: its VAE encoder is not {args.model or 'the embedded model'}'s, so the new decoder "
                     "would not fit it")
    source = load_model(args.decoder_from) if args.decoder_from else None
    if source is not None and not same_encoder(source.vae, vae):
        parser.error(f"{args.decoder_from}: its VAE encoder is not {args.model or 'the embedded model'}'s, so its "
                     "decoder would not fit")
    began = time.time()
    extra = model.info.setdefault("extra", {})
    if source is not None:
        swap_decoder(vae, source.vae.float())
        taken = source.info.get("extra", {})
        extra.update({k: taken[k] for k in ("decoder_steps", "decoder_minutes", "decoder_l1_of_255") if k in taken})
        extra["decoder_from"] = Path(args.decoder_from).name
    else:
        rows = finetune_decoder(vae, args.steps, args.batch_size, args.lr)
        extra.update({"decoder_steps": args.steps, "decoder_minutes": round((time.time() - began) / 60, 1),
                      "decoder_l1_of_255": round(rows[-1]["l1_of_255"], 2) if rows else None})
    model.weights_changed()
    save_bundle(model, args.out, dtype="fp16")
    if twin is not None:
        swap_decoder(twin.vae, vae)
        save_twin(twin, Path(args.twin_out))
    logger.info("wrote %s%s after %.1f minutes", args.out, f" and {args.twin_out}" if twin else "",
                (time.time() - began) / 60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
