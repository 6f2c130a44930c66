"""Train mgie-mini from scratch and write it as an MGIE bundle (the project's embedded default model).

    python -m train.mini.build --out runs/mgie-mini-6400.safetensors              # 6,400 joint steps (v9)
    python -m train.mini.build --resume --steps 9600 --out runs/mgie-mini.safetensors  # on to v10
    python -m train.mini.decoder --model runs/mgie-mini.safetensors --out runs/mgie-mini-v11.safetensors  # v11
    python -m train.mini.build --resume --steps 12800 --out runs/mini-v12-raw.safetensors  # on again, then v11's decoder: v12
    python -m train.mini.build --resume --steps 15200 --out runs/mini-v13-raw.safetensors  # and again: v13
    python -m train.mini.build --init runs/mgie-mini-v13.safetensors --start-step 15200 --steps 17600 \
        --lr 2e-4 --work runs/mini-v14 --out runs/mgie-mini-v14.safetensors  # a leg from a bundle: v14
    python -m train.mini.perception --out runs/perception-8.safetensors  # a vision tower that sees shape
    python -m train.mini.build --init runs/mgie-mini-v14.safetensors --vision-tower runs/perception-8.safetensors \
        --start-step 17600 --steps 19600 --lr 2e-4 --work runs/mini-v16 --out runs/mgie-mini-v16.safetensors  # v16
    python -m train.mini.perception --position --out runs/perception-8pos.safetensors  # sees where, too
    python -m train.mini.build --init runs/mgie-mini-v14.safetensors --vision-tower runs/perception-8pos.safetensors \
        --start-step 17600 --steps 19600 --lr 2e-4 --work runs/mini-v17 --out runs/mgie-mini-v17.safetensors  # v17
    python -m train.mini.perception --position --steps 2000 --out runs/fast/perception.safetensors  # 50 min, not shipped:
    python -m train.mini.build --vision-tower runs/fast/perception.safetensors --vae-steps 2000 --vae-lr 1e-3 \
        --vae-object-weight 5 --ip2p-steps 1500 --adapt-steps 1000 --steps 1500 --out runs/mgie-mini-fast.safetensors

1. tokenizer: SentencePiece BPE on the world's vocabulary and the prompt template;
2. VAE: a KL autoencoder (4x downsampling) on world pictures (the real MGIE reuses SD's pretrained VAE);
3. InstructPix2Pix: the UNet learns to edit from a small text encoder of the brief instruction (the real
   MGIE starts from InstructPix2Pix's UNet); the text encoder is then dropped;
4. MGIE's objective end to end (train/objective.py: instruction CE + 0.5 x diffusion loss, reference
   conditioning dropout) on freshly drawn edits, training the vision tower, projector, LLM, edit head
   and UNet together; the [IMG] embeddings the edit head adds are tied to the token table, as in
   Apple's training;
5. the bundle, fp16 (v11 then had its VAE decoder fine-tuned alone, train/mini/decoder.py; v13 is v10
   trained on to 15,200 joint steps, with that decoder; v14 is v13 and a leg to 17,600; v16 is v14
   with a perception tower, train/mini/perception.py, and a leg to 19,600; v17 is the same leg with
   a tower that also learnt where each object is, --position; the shipped v18 is v17 after two words
   legs, train/mini/words.py, which train its LLM alone).

Checkpoints go to ``--work`` every few hundred steps; ``--resume`` continues a killed run. ``--init BUNDLE``
trains on from a saved model instead of a work folder (a fresh optimizer; a warmup, then a cosine from ``--lr``
down to a tenth of it over the leg's steps ``--start-step`` .. ``--steps`` of the stream; its VAE is kept).
``--vision-tower FILE`` first puts a perception tower (train/mini/perception.py) into the MLLM, frozen from then
on as MGIE freezes CLIP, and trains the projector and LLM on the instruction loss alone for ``--adapt-steps`` so
that they read it, before the joint steps: of a leg (v16), or of a build from scratch (after its InstructPix2Pix
stage, as MGIE starts from a trained LLaVA and InstructPix2Pix). ``--unet-lr`` gives the UNet its own peak rate
in the InstructPix2Pix and joint stages (the rest keep ``--lr``); ``--device cuda`` builds on a GPU, every random
draw still on the CPU (the 50-minute recipe above took about 11 minutes on an H200, bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler

from mgie_core.devices import resolve_device
from mgie_core.errors import InputError
from mgie_core.formats.aligned import save_aligned
from mgie_core.formats.bundle import save_bundle
from mgie_core.formats.weights import read_state_dict
from mgie_core.model import MGIEModel
from train.objective import Batch, Sample, collate, instruction_loss, mgie_loss
from train.state import load_checkpoint, save_checkpoint

from . import world
from .model import build_mini

logger = logging.getLogger("mgie.mini")
# The guidance the bundle recommends (text / image), chosen on validation scenes (README, mgie-mini): the CLI
# and MGIEPipeline use it unless told otherwise. The paper's 7.5 is MGIE-7B's; a small UNet over-shoots at it.
RECOMMENDED_SAMPLING = {"guidance_scale": 2.0, "image_guidance_scale": 1.5}


def edit_at(seed: int, index: int) -> world.Edit:
    """Training edit number ``index`` of an endless, reproducible stream (families in turn)."""
    rng = random.Random(seed * 1_000_003 + index)
    return world.make_edit(rng, world.FAMILIES[index % len(world.FAMILIES)])


def edits_at(seed: int, step: int, batch_size: int) -> list[world.Edit]:
    """The edits of training batch ``step`` (the joint stage and the twin draw the same ones)."""
    return [edit_at(seed, step * batch_size + i) for i in range(batch_size)]


def batch_at(model: MGIEModel, seed: int, step: int, batch_size: int) -> Batch:
    """Training batch ``step`` of the stream, collated for ``model``'s tokenizer (teacher forcing), on the CPU."""
    return batch_of(model, edits_at(seed, step, batch_size))


def batch_of(model: MGIEModel, edits: list[world.Edit]) -> Batch:
    """``edits`` as a training batch for ``model``'s tokenizer (teacher forcing), on the CPU."""
    samples = [Sample(*world.images(e), e.instruction, e.expressive) for e in edits]
    return collate(samples, model, world.SIZE, world.SIZE)


def pictures(batch: list[world.Edit]) -> torch.Tensor:
    arrays = [np.asarray(im, np.float32) / 127.5 - 1 for e in batch for im in world.images(e)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (2B, 3, 64, 64) in [-1, 1]


def object_weights(x: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, 1, H, W) per-pixel loss weights: ``weight`` where a picture differs from its top-left pixel (the
    world's flat background), 1 elsewhere. Objects are a few percent of a picture; at equal weight a short
    VAE stage learns the background and blurs them away."""
    away = (x - x[:, :, :1, :1]).abs().amax(1, keepdim=True) > 0.05
    return 1 + (weight - 1) * away.to(x.dtype)


def train_vae(model: MGIEModel, steps: int, batch_size: int, seed: int, log: Path, lr: float = 3e-3,
              object_weight: float = 1.0) -> None:
    """Encoder and decoder on sampled latents: L1 + MSE (weighted by :func:`object_weights`) and a tiny KL."""
    vae = model.vae.train()
    device = vae.device
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    began = time.time()
    for step in range(steps):
        x = pictures([edit_at(seed + 1, step * batch_size + i) for i in range(batch_size // 2)]).to(device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=torch.Generator().manual_seed(step))).sample
        w = object_weights(x, object_weight)
        error = (recon - x).abs() + (recon - x) ** 2
        loss = (w * error).mean() / w.mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step + 1) / steps)))
        if (step + 1) % 50 == 0 or step + 1 == steps:
            _log(log, {"phase": "vae", "step": step + 1, "l1_of_255": F.l1_loss(recon, x).item() * 127.5,
                       "seconds": time.time() - began})
    vae.eval().requires_grad_(False)


@torch.no_grad()
def calibrate_scaling(vae: AutoencoderKL, seed: int, count: int = 256) -> float:
    """Set the VAE's ``scaling_factor`` so diffusion latents have unit variance, as SD's 0.18215 does for its VAE."""
    x = pictures([edit_at(seed + 2, i) for i in range(count // 2)]).to(vae.device)
    factor = 1.0 / vae.encode(x).latent_dist.mode().std().item()
    vae.register_to_config(scaling_factor=factor)
    return factor


def train_ip2p(model: MGIEModel, steps: int, batch_size: int, lr: float, seed: int, log: Path) -> None:
    """Pretrain ``model.unet`` as InstructPix2Pix (brief instruction -> edit) on its own stretch of the stream."""
    from .twin import Twin, train_twin  # twin.py builds on this module

    twin = Twin(model.tokenizer, model.vae, unet=model.unet).to(model.unet.device)
    train_twin(twin, steps, batch_size, lr, seed + 3, log, phase="ip2p")


def joint_parameters(model: MGIEModel, train_vision_tower: bool = True) -> dict[str, torch.nn.Parameter]:
    """What the joint objective trains: the MLLM (its vision tower too, unless it is a frozen perception
    tower, as MGIE freezes CLIP), the edit head and the UNet."""
    model.mllm.train_vision_tower = train_vision_tower
    named = {}
    for part in ("mllm", "edit_head", "unet"):
        for name, param in model.modules()[part].named_parameters():
            if part == "edit_head" and name == "emb":
                continue  # tied to the [IMG] rows of the token table while training
            if part == "mllm" and name.startswith("vision_tower.") and not train_vision_tower:
                param.requires_grad_(False)
                continue
            param.requires_grad_(True)
            named[f"{part}.{name}"] = param
    return named


def warmup_cosine(steps: int, start: int = 0, warmup: int | None = None):
    """The learning-rate factor at scheduler step s of a run begun at stream step ``start``: a short warmup,
    then a cosine down to 0.1 at ``steps`` (a run resumed with more steps takes it up where that schedule stands).
    A leg from saved weights with a fresh optimizer (``--init``) is its own ``steps``-long schedule from 0 with
    ``warmup=100``: fresh Adam moments make full-size first steps."""
    warmup = warmup or min(200, steps // 10 + 1)

    def factor(s: int) -> float:
        s += start
        return min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))

    return factor


def joint_groups(params: dict[str, torch.nn.Parameter], lr: float, unet_lr: float | None = None) -> list[dict]:
    """AdamW's parameter groups for the joint objective: the MLLM and edit head at ``lr``, then the UNet at
    ``unet_lr`` (``lr`` when not given). One schedule scales both, so their ratio holds throughout."""
    unet = [p for name, p in params.items() if name.startswith("unet.")]
    rest = [p for name, p in params.items() if not name.startswith("unet.")]
    return [{"params": rest, "lr": lr}, {"params": unet, "lr": unet_lr or lr}]


def train_joint(model: MGIEModel, steps: int, batch_size: int, lr: float, seed: int, work: Path, log: Path,
                resume: bool, save_every: int = 250, ema_decay: float = 0.999, start: int = 0,
                train_vision_tower: bool = True, unet_lr: float | None = None) -> None:
    """Joint steps ``start`` .. ``steps`` of the stream. ``start`` > 0 is a leg from saved weights (``--init``):
    its learning rate is a schedule of the leg's own, warmed up again (:func:`warmup_cosine`). ``unet_lr`` gives
    the UNet a peak rate of its own (:func:`joint_groups`)."""
    params = joint_parameters(model, train_vision_tower)
    optimizer = torch.optim.AdamW(joint_groups(params, lr, unet_lr), weight_decay=0.01)
    factor = warmup_cosine(steps - start, warmup=100) if start else warmup_cosine(steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    # An exponential moving average of the weights is what ships: diffusion samples from it are much cleaner.
    ema = {k: v.detach().clone() for k, v in params.items()}
    if resume:
        start = _resume_joint(work, params, ema, optimizer, schedule, start)
    ddpm = DDPMScheduler.from_config(model.scheduler_config)
    for module in (model.mllm, model.edit_head, model.unet):
        module.train()
    began, seen = time.time(), 0
    for step in range(start, steps):
        batch = batch_at(model, seed, step, batch_size).to(model.mllm.device)
        # Mode target latents: this VAE's posterior spread (~0.25 of unit-variance latents, SD's is ~100x
        # smaller) would be noise the UNet cannot predict.
        losses = mgie_loss(model, batch, ddpm, torch.Generator().manual_seed(seed * 7 + step), tie_emb_to_rows=True,
                           sample_target_latent=False)
        optimizer.zero_grad()
        losses.total.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        optimizer.step()
        schedule.step()
        update_ema(list(ema.values()), list(params.values()), step, ema_decay)
        seen += 1
        if (step + 1) % 25 == 0 or step + 1 == steps:
            _log(log, {"phase": "joint", "step": step + 1, "loss_ins": losses.instruction.item(),
                       "loss_edit": losses.edit.item(), "lr": schedule.get_last_lr()[0],
                       "lr_unet": schedule.get_last_lr()[-1],
                       "steps_per_s": seen / (time.time() - began)})
        if (step + 1) % save_every == 0 or step + 1 == steps:
            state = {k: v.detach().clone() for k, v in params.items()} | {f"ema.{k}": v.clone() for k, v in ema.items()}
            save_checkpoint(work, step + 1, state, optimizer.state_dict(), schedule.state_dict(), {"steps": steps})
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(ema[name])
    tie_emb(model)
    model.weights_changed()
    for module in model.modules().values():
        module.eval().requires_grad_(False)
    model.mllm.train_vision_tower = False


@torch.no_grad()
def update_ema(averaged: list[torch.Tensor], current: list[torch.Tensor], step: int, decay: float) -> None:
    """Move each averaged tensor towards its current one after stream step ``step``, keeping min(decay, (1 + step) /
    (10 + step)) of it: the usual warmup, so the first weights are not averaged in for long."""
    kept = min(decay, (1 + step) / (10 + step))
    for mean, now in zip(averaged, current, strict=True):
        mean.lerp_(now, 1 - kept)


def _resume_joint(work: Path, params: dict, ema: dict, optimizer, schedule, start: int = 0) -> int:
    found = sorted((work / "checkpoints").glob("step-*"))
    if not found:
        return start
    step, state, optimizer_state, schedule_state = load_checkpoint(found[-1])
    if step < start:
        raise InputError(f"{found[-1]} is step {step}, before this leg's --start-step {start}; "
                         "give the leg its own --work folder")
    start = step
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])
            ema[name].copy_(state.get(f"ema.{name}", state[name]))
    if len(optimizer_state["param_groups"]) == 1 < len(optimizer.param_groups):
        _split_group(optimizer_state, schedule_state, len(optimizer.param_groups[0]["params"]))
    optimizer.load_state_dict(optimizer_state)
    schedule.load_state_dict(schedule_state)
    logger.info("resumed joint training at step %d", start)
    return start


def _split_group(optimizer_state: dict, schedule_state: dict, first: int) -> None:
    """A work folder from before ``--unet-lr`` kept one AdamW group; its parameters are in the same order as the two
    groups of :func:`joint_groups` (the UNet's last), so it splits in two at ``first``, both at the rate it had."""
    group = optimizer_state["param_groups"][0]
    optimizer_state["param_groups"] = [group | {"params": group["params"][:first]},
                                       group | {"params": group["params"][first:]}]
    for key in ("base_lrs", "_last_lr"):
        schedule_state[key] = schedule_state[key] * 2


def adapt_mllm(model: MGIEModel, steps: int, batch_size: int, lr: float, seed: int, log: Path) -> None:
    """The instruction loss alone on the projector and the LLM, the vision tower frozen: after a new tower is
    grafted, the LLM learns to read it before the joint objective asks the UNet to follow it (LLaVA's
    feature-alignment stage does this for a new projector)."""
    mllm = model.mllm
    params, optimizer, schedule = reader_training(model, steps, lr)
    began = time.time()
    for step, loss in instruction_steps(model, params, optimizer, schedule, steps, batch_size, seed):
        if step % 25 == 0 or step == steps:
            _log(log, {"phase": "adapt", "step": step, "loss_ins": loss.item(), "seconds": time.time() - began})
    model.weights_changed()
    mllm.eval().requires_grad_(False)


def reader_training(model: MGIEModel, steps: int, lr: float) -> tuple[list, torch.optim.Optimizer, object]:
    """The projector and LLM set to train, the vision tower frozen (in eval mode), with AdamW and a schedule
    warmed up over 100 steps, then a cosine over ``steps``: what the adapt steps and a words leg train.
    Returns (parameters, optimizer, schedule)."""
    mllm = model.mllm
    params = [p for name, p in mllm.named_parameters() if not name.startswith("vision_tower.")]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, warmup=100))
    mllm.train()
    mllm.vision_tower.eval()
    return params, optimizer, schedule


def instruction_steps(model: MGIEModel, params: list, optimizer, schedule, steps: int, batch_size: int, seed: int):
    """``steps`` optimizer steps of the instruction loss alone on batches 0.. of stream ``seed``; yields each
    step's number (from 1) and loss, so a caller can log or measure between them."""
    for step in range(steps):
        loss, _ = instruction_loss(model, batch_at(model, seed, step, batch_size).to(model.mllm.device))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        yield step + 1, loss


def tie_emb(model: MGIEModel) -> None:
    """The stored ``emb`` is the trained [IMG] rows (what Apple's release ships as mllm.pt's ``emb``)."""
    with torch.no_grad():
        model.edit_head.emb.copy_(model.mllm.llm.embed_tokens.weight[list(model.spec.visual_token_ids)][None])


def parsed_device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """``--device`` checked up front: an absent GPU is argparse's one-line usage error, as in the CLI."""
    try:
        return resolve_device(name)
    except InputError as error:
        parser.error(str(error))


def _log(path: Path, row: dict) -> None:
    logger.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="mgie_core/assets/mgie-mini.safetensors")
    parser.add_argument("--work", default="runs/mgie-mini")
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--vae-lr", type=float, default=3e-3)
    parser.add_argument("--vae-object-weight", type=float, default=1.0,
                        help="weight of pixels off the background in the VAE's loss (the shipped VAE: 1; the "
                             "one-hour build from scratch: 5; docs/mgie-mini.md)")
    parser.add_argument("--ip2p-steps", type=int, default=2000, help="InstructPix2Pix steps of the UNet first")
    parser.add_argument("--steps", type=int, default=6400,
                        help="steps of MGIE's joint objective (v10 went on with --resume --steps 9600, v12 to 12800, "
                             "v13 to 15200; v14 is a leg to 17600, --init; v16 and v17 legs to 19600 "
                             "with --vision-tower)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--unet-lr", type=float,
                        help="the UNet's peak learning rate, in the InstructPix2Pix stage and the joint stage "
                             "(default: --lr); when it is given, --lr is the MLLM's and the edit head's alone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --work")
    parser.add_argument("--init", help="an MGIE bundle (e.g. the shipped mgie-mini) to train on from: no VAE or "
                                       "InstructPix2Pix stage; needs --start-step")
    parser.add_argument("--start-step", type=int, default=0,
                        help="with --init: the joint steps that model was trained for (the leg draws the stream's "
                             "batches from there on)")
    parser.add_argument("--vision-tower", help="a perception tower (python -m train.mini.perception) to put in the "
                                               "model's MLLM, frozen: before a leg (--init) or a build from scratch")
    parser.add_argument("--adapt-steps", type=int, default=3000,
                        help="with --vision-tower: steps of the instruction loss alone (projector and LLM) first")
    parser.add_argument("--adapt-lr", type=float, default=3e-4)
    parser.add_argument("--device", default="cpu",
                        help="cpu (the shipped model's recipe) or cuda; every random draw stays on the CPU either way")
    args = parser.parse_args(argv)
    if args.init and not 0 < args.start_step < args.steps:
        parser.error("--init needs --start-step N, the joint steps that model was trained for (0 < N < --steps)")
    if args.start_step and not args.init:
        parser.error("--start-step goes with --init (a build from scratch starts at step 0)")
    device = parsed_device(parser, args.device)
    logging.basicConfig(level=logging.INFO, format="[mgie-mini] %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.jsonl"
    began = time.time()
    if args.init:
        return train_leg(args, device, work, log, began)

    model = build_mini(args.seed).to(device)
    graft = _graft(model, args.vision_tower) if args.vision_tower else {}  # frozen from the start, as MGIE's CLIP
    vae_file = work / "vae.safetensors"
    if args.resume and vae_file.is_file():
        model.vae.load_state_dict(read_state_dict(vae_file))
        model.vae.eval().requires_grad_(False)
    else:
        train_vae(model, args.vae_steps, 32, args.seed, log, args.vae_lr, args.vae_object_weight)  # 32 pictures
        save_aligned(model.vae.state_dict(), vae_file)
    logger.info("VAE scaling factor %.4f", calibrate_scaling(model.vae, args.seed))
    ip2p_file = work / "ip2p-unet.safetensors"
    if args.resume and ip2p_file.is_file():
        model.unet.load_state_dict(read_state_dict(ip2p_file))
    elif args.ip2p_steps:
        train_ip2p(model, args.ip2p_steps, args.batch_size, args.unet_lr or args.lr, args.seed, log)
        save_aligned(model.unet.state_dict(), ip2p_file)
    if args.vision_tower:
        graft |= _adapt(model, args, work, log)
    train_joint(model, args.steps, args.batch_size, args.lr, args.seed, work, log, args.resume,
                train_vision_tower=not args.vision_tower, unet_lr=args.unet_lr)
    minutes = (time.time() - began) / 60
    model.info["extra"] = {"trained_by": "python -m train.mini.build", "steps": args.steps, "vae_steps": args.vae_steps,
                           "vae_lr": args.vae_lr, "vae_object_weight": args.vae_object_weight,
                           "ip2p_steps": args.ip2p_steps, "lr": args.lr, "unet_lr": args.unet_lr or args.lr,
                           "batch_size": args.batch_size, "seed": args.seed,
                           "minutes": round(minutes, 1), "device": args.device,
                           "world": "train/mini/world.py", **graft}
    model.info["sampling"] = RECOMMENDED_SAMPLING
    out = save_bundle(model, args.out, dtype="fp16")
    logger.info("wrote %s (%.1f MB) after %.1f minutes", out, out.stat().st_size / 1e6, minutes)
    return 0


def train_leg(args: argparse.Namespace, device: torch.device, work: Path, log: Path, began: float) -> int:
    """``--init``: joint steps ``--start-step`` .. ``--steps`` from a saved bundle, written as a new bundle that
    keeps the old one's VAE, tokenizer and record, and adds this leg to it."""
    from mgie_core.formats.bundle import load_bundle

    model = load_bundle(args.init).to(device, torch.float32)
    fingerprint = model.fingerprint()  # of the weights the leg starts from
    graft = _graft(model, args.vision_tower) | _adapt(model, args, work, log) if args.vision_tower else {}
    train_joint(model, args.steps, args.batch_size, args.lr, args.seed, work, log, args.resume, start=args.start_step,
                train_vision_tower=not args.vision_tower, unet_lr=args.unet_lr)
    minutes = (time.time() - began) / 60
    extra = dict(model.info.get("extra", {}))
    legs = list(extra.get("legs", []))
    legs.append({"init": Path(args.init).name, "init_fingerprint": fingerprint,
                 "start_step": args.start_step, "steps": args.steps, "lr": args.lr,
                 "unet_lr": args.unet_lr or args.lr, "batch_size": args.batch_size,
                 "seed": args.seed, "minutes": round(minutes, 1), "device": args.device, **graft})
    extra.update({"trained_by": "python -m train.mini.build", "steps": args.steps, "legs": legs})
    model.info["extra"] = extra
    model.info["sampling"] = model.info.get("sampling", RECOMMENDED_SAMPLING)
    out = save_bundle(model, args.out, dtype="fp16")
    logger.info("wrote %s (%.1f MB) after %.1f minutes", out, out.stat().st_size / 1e6, minutes)
    return 0


def _graft(model: MGIEModel, path: str) -> dict:
    """``--vision-tower``: put the perception tower into the MLLM, frozen. Returns what the bundle records."""
    from .perception import graft, load_tower

    tower, config, record = load_tower(path)
    graft(model, tower, config)
    return {"vision_tower": Path(path).name, "vision_tower_record": record}


def _adapt(model: MGIEModel, args: argparse.Namespace, work: Path, log: Path) -> dict:
    """``--adapt-steps`` of the instruction loss alone on a grafted tower (kept in the work folder, so
    ``--resume`` does not repeat them). Returns what the bundle records."""
    from mgie_core.formats.bundle import load_bundle

    adapted = work / "adapted.safetensors"
    if args.resume and adapted.is_file():
        model.mllm.load_state_dict(load_bundle(adapted).mllm.state_dict())
    elif args.adapt_steps:
        adapt_mllm(model, args.adapt_steps, args.batch_size, args.adapt_lr, args.seed + 4, log)
        save_bundle(model, adapted, dtype="fp32")
    return {"adapt_steps": args.adapt_steps, "adapt_lr": args.adapt_lr}


if __name__ == "__main__":
    raise SystemExit(main())
