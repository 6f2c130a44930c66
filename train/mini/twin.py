"""The InstructPix2Pix twin of mgie-mini: the same UNet and VAE, conditioned on a small text encoder
of the *brief* instruction, no MLLM. Trained on the same edit stream with the same steps and batch,
it is the paper's baseline in miniature. ``--text expressive`` trains it on the expressive
instructions instead (the paper's "ExpI" ablation: the MLLM's words, fed to a text encoder, no
visual tokens); at test time it reads what MGIE-mini derives.

    python -m train.mini.twin --vae runs/mini/vae.safetensors --out runs/ip2p-twin.safetensors
    python -m train.mini.twin --vae mgie_core/assets/mgie-mini.safetensors --steps 21600 --out ...  # v17's VAE, budget
    python -m train.mini.twin --init runs/ip2p-twin.safetensors --start-step 8400 --steps 11600 --out ...  # train on
"""

from __future__ import annotations

import argparse
import copy
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

from mgie_core.errors import CheckpointError, MGIEError
from mgie_core.formats.aligned import save_aligned
from mgie_core.formats.bundle import is_bundle
from mgie_core.formats.loader import load_model
from mgie_core.formats.weights import read_state_dict
from mgie_core.tokenizer import LegacyLlamaTokenizer
from train.objective import diffusion_goal, dropout_masks

from .build import calibrate_scaling, edits_at, parsed_device, pictures, update_ema, warmup_cosine
from .model import UNET, VAE, scheduler_config, train_tokenizer

logger = logging.getLogger("mgie.twin")
TEXT_LENGTH = 24  # tokens; the world's longest instruction is 18 (with <s>)


class Twin(nn.Module):
    def __init__(self, tokenizer: LegacyLlamaTokenizer, vae: AutoencoderKL, text: str = "instruction",
                 unet: UNet2DConditionModel | None = None):
        super().__init__()
        self.tokenizer, self.scheduler_config, self.text = tokenizer, scheduler_config(), text
        self.text_config = CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=UNET["cross_attention_dim"],
                                          intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                          max_position_embeddings=TEXT_LENGTH, bos_token_id=1, eos_token_id=2,
                                          pad_token_id=0)
        self.text_encoder = CLIPTextModel(self.text_config)
        self.unet = unet if unet is not None else UNet2DConditionModel(**UNET)
        self.vae = vae

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(B, TEXT_LENGTH, D) conditioning of instructions ("" gives the null conditioning)."""
        ids = [self.tokenizer.encode(t)[:TEXT_LENGTH] for t in texts]  # cuts only a derived text gone astray
        ids = torch.tensor([row + [0] * (TEXT_LENGTH - len(row)) for row in ids], device=self.text_encoder.device)
        return self.text_encoder(input_ids=ids).last_hidden_state


def snr_weights(ddpm: DDPMScheduler, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for a v-prediction UNet (Hang et al., 2023), one per timestep: min(SNR, gamma) /
    (SNR + 1), scaled to average 1 over the timesteps so the learning rate means what it meant unweighted."""
    snr = ddpm.alphas_cumprod / (1 - ddpm.alphas_cumprod)
    weight = snr.clamp(max=gamma) / (snr + 1)
    return weight / weight.mean()


def train_twin(twin: Twin, steps: int, batch_size: int, lr: float, seed: int, log: Path, phase: str = "twin",
               start: int = 0, ema: float = 0.0, snr_gamma: float = 0.0) -> Twin | None:
    """Steps ``start`` .. ``steps`` of the stream; a ``start`` past 0 continues a twin trained that far, its learning
    rate taken up where a ``steps``-long schedule stands (as ``build --resume --steps`` does for mgie-mini).
    ``snr_gamma`` weighs each sample's loss by min-SNR-gamma; ``ema`` (a decay, e.g. 0.998) also keeps an exponential
    moving average of the text encoder and UNet, returned as a second twin (None without it)."""
    params = list(twin.text_encoder.parameters()) + list(twin.unet.parameters())
    shadow = copy.deepcopy(twin).requires_grad_(False) if ema else None
    averaged = list(shadow.text_encoder.parameters()) + list(shadow.unet.parameters()) if shadow is not None else []
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, start))
    ddpm = DDPMScheduler.from_config(twin.scheduler_config)
    device = twin.unet.device  # random draws stay on the CPU: the same stream on any device
    weights = snr_weights(ddpm, snr_gamma).to(device) if snr_gamma else None
    twin.text_encoder.train(), twin.unet.train(), twin.vae.eval().requires_grad_(False)
    began = time.time()
    for step in range(start, steps):
        edits = edits_at(seed, step, batch_size)
        pixels = pictures(edits).to(device)  # (2B, 3, 64, 64): input, target, input, target, ...
        generator = torch.Generator().manual_seed(seed * 7 + step)
        with torch.no_grad():
            source = twin.vae.encode(pixels[0::2]).latent_dist.mode()
            target = twin.vae.encode(pixels[1::2]).latent_dist.mode() * twin.vae.config.scaling_factor  # as mgie-mini
        noise = torch.randn(target.shape, generator=generator).to(device)
        t = torch.randint(0, ddpm.config.num_train_timesteps, (batch_size,), generator=generator).to(device)
        drop_text, keep_image = (m.to(device) for m in dropout_masks(batch_size, 0.05, generator))
        texts = [getattr(e, twin.text) for e in edits]
        cond = torch.where(drop_text[:, None, None], twin.encode([""] * batch_size), twin.encode(texts))
        source = source * keep_image[:, None, None, None].float()
        pred = twin.unet(torch.cat([ddpm.add_noise(target, noise, t), source], dim=1), t, cond).sample
        goal = diffusion_goal(ddpm, target, noise, t)  # the same target rule as mgie-mini
        if weights is not None:
            loss = (F.mse_loss(pred, goal, reduction="none").mean((1, 2, 3)) * weights[t]).mean()
        else:
            loss = F.mse_loss(pred, goal)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if shadow is not None:
            update_ema(averaged, params, step, ema)  # as the joint stage averages mgie-mini's weights
        if (step + 1) % 25 == 0 or step + 1 == steps:
            row = {"phase": phase, "step": step + 1, "loss_edit": loss.item(), "lr": schedule.get_last_lr()[0],
                   "steps_per_s": (step + 1 - start) / (time.time() - began)}
            logger.info(" ".join(f"{k}={v}" for k, v in row.items()))
            with open(log, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    twin.eval().requires_grad_(False)
    return shadow.eval() if shadow is not None else None


def save_twin(twin: Twin, path: Path) -> Path:
    tensors = {f"text_encoder.{k}": v for k, v in twin.text_encoder.state_dict().items()}
    tensors.update({f"unet.{k}": v for k, v in twin.unet.state_dict().items()})
    tensors.update({f"vae.{k}": v for k, v in twin.vae.state_dict().items()})
    tensors["tokenizer.sp_model"] = torch.frombuffer(bytearray(twin.tokenizer.sp_model_proto), dtype=torch.uint8)
    meta = {"format": "mgie-mini-ip2p-twin", "added_tokens": json.dumps(twin.tokenizer.added_tokens),
            "scaling_factor": str(twin.vae.config.scaling_factor), "text": twin.text}
    return save_aligned({k: v.contiguous() for k, v in tensors.items()}, path, meta)


def load_twin(path: str | Path) -> Twin:
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    state = read_state_dict(path)
    tokenizer = LegacyLlamaTokenizer(state.pop("tokenizer.sp_model").numpy().tobytes(), json.loads(meta["added_tokens"]))
    twin = Twin(tokenizer, AutoencoderKL(**VAE), meta.get("text", "instruction"))
    twin.load_state_dict(state)
    twin.vae.register_to_config(scaling_factor=float(meta["scaling_factor"]))
    return twin.eval().requires_grad_(False)


def starting_vae(path: str | Path, seed: int) -> AutoencoderKL:
    """The VAE a new twin trains on and decodes with: an mgie-mini bundle's (its scaling factor kept, so the
    twin sees the latents that model saw), or a build's ``work/vae.safetensors`` (scaled as the build scales it)."""
    if is_bundle(path):  # False for a missing or unreadable file: read_state_dict below says which
        return load_model(path).vae.float()
    vae = AutoencoderKL(**VAE)
    state = read_state_dict(path)
    if set(state) != set(vae.state_dict()):
        raise CheckpointError(f"{path} is neither an mgie-mini bundle nor a VAE file of train.mini.build "
                              f"(<work>/vae.safetensors): its tensors are not mgie-mini's VAE's ({len(state)} tensors)")
    vae.load_state_dict(state)
    calibrate_scaling(vae, seed)
    return vae


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", help="the trained mgie-mini VAE (runs/.../vae.safetensors) or an mgie-mini bundle "
                                      "(its VAE); not with --init")
    parser.add_argument("--out", default="runs/ip2p-twin.safetensors")
    parser.add_argument("--steps", type=int, default=8400,
                        help="default: a default build's UNet steps (2,000 InstructPix2Pix + 6,400 joint); "
                             "v13's are 17,200 (its joint stage ran 6,400 + 3,200 + 3,200 + 2,400), v17's and the shipped v18's "
                             "21,600 (2,000 + 19,600 joint; v18's words legs train the LLM alone)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text", choices=("instruction", "expressive"), default="instruction",
                        help="condition on the brief instruction (InstructPix2Pix) or the expressive one (ExpI)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (random draws stay on the CPU either way)")
    parser.add_argument("--snr-gamma", type=float, default=0.0,
                        help="weigh each sample's loss by min-SNR-gamma (e.g. 5; 0: unweighted, as every shipped twin)")
    parser.add_argument("--ema", type=float, default=0.0,
                        help="also write an EMA of the weights with this decay (e.g. 0.998) to OUT's name + '-ema'")
    parser.add_argument("--init", help="a twin to continue (its VAE and text mode are kept); --start-step says how far it got")
    parser.add_argument("--start-step", type=int, default=0, help="with --init: the steps it was trained for")
    args = parser.parse_args(argv)
    if bool(args.vae) == bool(args.init):
        parser.error("give --vae (a new twin) or --init (a twin to continue), one of them")
    if not 0 <= args.ema < 1:
        parser.error(f"--ema is a decay between 0 and 1 (e.g. 0.998), or 0 for none; got {args.ema}")
    if args.snr_gamma < 0:
        parser.error(f"--snr-gamma is a positive SNR cap (e.g. 5), or 0 for unweighted; got {args.snr_gamma}")
    if args.init and not 0 < args.start_step < args.steps:
        parser.error("--init needs --start-step N, the steps that twin was trained for (0 < N < --steps)")
    device = parsed_device(parser, args.device)
    logging.basicConfig(level=logging.INFO, format="[ip2p-twin] %(message)s")
    torch.manual_seed(args.seed)
    if args.init:
        twin = load_twin(args.init).requires_grad_(True).to(device)
    else:
        try:
            vae = starting_vae(args.vae, args.seed)
        except MGIEError as err:
            parser.error(str(err))
        twin = Twin(train_tokenizer(), vae, args.text).to(device)
    began = time.time()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # its log is written beside it from step 25 on
    shadow = train_twin(twin, args.steps, args.batch_size, args.lr, args.seed, out.with_suffix(".log.jsonl"),
                        start=args.start_step, ema=args.ema, snr_gamma=args.snr_gamma)
    save_twin(twin, out)
    if shadow is not None:
        logger.info("wrote its EMA to %s", save_twin(shadow, out.with_name(out.stem + "-ema" + out.suffix)))
    logger.info("wrote %s after %.1f minutes", out, (time.time() - began) / 60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
