"""MGIE's objective end to end on the edit world, and the instruction loss alone for a new vision tower.

The joint stage trains the MLLM (its vision tower too, unless a frozen perception tower replaced it, as MGIE
freezes CLIP), the edit head and the UNet together on train/objective.py's loss; the ``[IMG]`` embeddings the
edit head adds are tied to the token table while training, as in Apple's training. What ships is an
exponential moving average of the weights: diffusion samples from it are much cleaner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from mgie_core.errors import InputError
from mgie_core.model.mgie import MGIEModel
from train.objective import instruction_loss, mgie_loss
from train.state import load_checkpoint, save_checkpoint

from .schedule import log_row, update_ema, warmup_cosine
from .stream import batch_at

logger = logging.getLogger("mgie.mini")


def joint_parameters(model: MGIEModel, train_vision_tower: bool = True) -> dict[str, torch.nn.Parameter]:
    """What the joint objective trains, by name: the MLLM (its vision tower only if ``train_vision_tower``), the
    edit head (its stored ``emb`` aside: tied to the [IMG] rows while training) and the UNet."""
    model.mllm.train_vision_tower = train_vision_tower
    named = {}
    for part in ("mllm", "edit_head", "unet"):
        for name, param in model.modules()[part].named_parameters():
            if part == "edit_head" and name == "emb":
                continue
            if part == "mllm" and name.startswith("vision_tower.") and not train_vision_tower:
                param.requires_grad_(False)
                continue
            param.requires_grad_(True)
            named[f"{part}.{name}"] = param
    return named


def train_joint(model: MGIEModel, steps: int, batch_size: int, lr: float, seed: int, work: Path, log: Path,
                start: int = 0, train_vision_tower: bool = True, save_every: int = 250, ema_decay: float = 0.999) -> None:
    """Joint steps up to ``steps`` of stream ``seed``, checkpointed in ``work`` and taken up from its newest
    checkpoint: a stage run again with a larger ``steps`` continues on a longer cosine (:func:`warmup_cosine`).
    ``start`` > 0 is a *leg* from saved weights: a fresh optimizer and averaging, and a schedule of its own from
    stream step ``start``. The model is left holding the averaged weights, in eval mode."""
    params = joint_parameters(model, train_vision_tower)
    optimizer = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.01)
    factor = warmup_cosine(steps - start, warmup=100) if start else warmup_cosine(steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    ema = {k: v.detach().clone() for k, v in params.items()}
    start = _resume(work, params, ema, optimizer, schedule, start)
    ddpm = DDPMScheduler.from_config(model.scheduler_config)
    for module in (model.mllm, model.edit_head, model.unet):
        module.train()
    began = time.time()
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
        if (step + 1) % 25 == 0 or step + 1 == steps:
            log_row(log, {"phase": "joint", "step": step + 1, "loss_ins": losses.instruction.item(),
                          "loss_edit": losses.edit.item(), "lr": schedule.get_last_lr()[0],
                          "steps_per_s": (step + 1 - start) / (time.time() - began)})
        if (step + 1) % save_every == 0 or step + 1 == steps:
            state = {k: v.detach().clone() for k, v in params.items()} | {f"ema.{k}": v.clone() for k, v in ema.items()}
            save_checkpoint(work, step + 1, state, optimizer.state_dict(), schedule.state_dict(), {"steps": steps})
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(ema[name])
    tie_emb(model)
    finish(model)


def _resume(work: Path, params: dict, ema: dict, optimizer, schedule, start: int) -> int:
    """The stream step to go on from: the newest checkpoint's in ``work`` (weights, averages, optimizer and
    schedule restored), else ``start``."""
    found = sorted((work / "checkpoints").glob("step-*"))
    if not found:
        return start
    step, state, optimizer_state, schedule_state = load_checkpoint(found[-1])
    if step < start:
        raise InputError(f"{found[-1]} is step {step}, before this leg's start {start}; give the leg its own work folder")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])
            ema[name].copy_(state.get(f"ema.{name}", state[name]))
    optimizer.load_state_dict(optimizer_state)
    schedule.load_state_dict(schedule_state)
    logger.info("resumed joint training at step %d", step)
    return step


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


def instruction_steps(model: MGIEModel, params: list, optimizer, schedule, steps: int, batch_size: int,
                      seed: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``steps`` optimizer steps of the instruction loss alone on batches 0.. of stream ``seed``; yields each
    step's number (from 1) and loss."""
    for step in range(steps):
        loss, _ = instruction_loss(model, batch_at(model, seed, step, batch_size).to(model.mllm.device))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        yield step + 1, loss


def adapt_mllm(model: MGIEModel, steps: int, batch_size: int, lr: float, seed: int, log: Path) -> None:
    """The instruction loss alone on the projector and the LLM, the vision tower frozen: after a new tower is
    grafted, the LLM learns to read it before the joint objective asks the UNet to follow it (LLaVA's
    feature-alignment stage does this for a new projector)."""
    params, optimizer, schedule = reader_training(model, steps, lr)
    began = time.time()
    for step, loss in instruction_steps(model, params, optimizer, schedule, steps, batch_size, seed):
        if step % 25 == 0 or step == steps:
            log_row(log, {"phase": "adapt", "step": step, "loss_ins": loss.item(), "seconds": time.time() - began})
    finish(model)


def tie_emb(model: MGIEModel) -> None:
    """The stored ``emb`` is the trained [IMG] rows (what Apple's release ships as mllm.pt's ``emb``)."""
    with torch.no_grad():
        model.edit_head.emb.copy_(model.mllm.llm.embed_tokens.weight[list(model.spec.visual_token_ids)][None])


def finish(model: MGIEModel) -> None:
    """After a stage: every module frozen in eval mode, and the fingerprint computed afresh from the new weights."""
    model.weights_changed()
    for module in model.modules().values():
        module.eval().requires_grad_(False)
    model.mllm.train_vision_tower = False
