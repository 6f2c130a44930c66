"""A *words leg*: the MLLM trained on the instruction loss where its derivation is weakest, with its visual
imagination held to the starting model's, so the UNet it was trained with still fits.

Where its derived words are right, mgie-mini edits the ambiguous scenes better than its InstructPix2Pix
twin; where they are wrong, its UNet follows them. A joint leg would have to re-align the UNet with whatever
the LLM's hidden states become. Here nothing after the LLM moves: the projector and LLM learn from

    L = L_ins + keep * ||imagination - imagination_0||^2 / var(imagination_0)

on a stream where ``share`` of the edits are ambiguous ones of ``kinds`` (the rest the build's families in
turn). Both imaginations come from the *true* expressive instruction, teacher-forced, through the frozen edit
head: imagination_0 is what the starting model's UNet was trained to follow for those words. The VAE, UNet,
edit head (its stored ``emb`` too) and vision tower stay the starting model's, byte for byte.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mgie_core.model.mgie import MGIEModel
from train.objective import conversation_states, instruction_loss, select_from_labels

from . import world
from .joint import finish, reader_training
from .schedule import log_row
from .stream import batch_of

REASONING = ("biggest", "smallest", "odd_one_out", "leftmost")  # the ambiguous kinds that pick an object


def focused_edit_at(seed: int, index: int, kinds: tuple[str, ...], share: float) -> world.Edit:
    """Edit ``index`` of a reproducible stream: with probability ``share`` an ambiguous edit of one of
    ``kinds``, otherwise the build's families in turn (so the other families are not forgotten)."""
    rng = random.Random(seed * 1_000_003 + index)
    if rng.random() < share:
        return world.make_ambiguous(rng, rng.choice(kinds))
    return world.make_edit(rng, world.FAMILIES[index % len(world.FAMILIES)])


def imagination(model: MGIEModel, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The edit head's visual imagination (B, Q, D) from teacher-forced hidden states, with its stored emb."""
    spec = model.spec
    visual = select_from_labels(hidden, labels, spec.visual_token_ids[0], spec.num_visual_tokens)
    return model.edit_head(visual, model.edit_head.emb.to(visual.dtype))


def train_words(model: MGIEModel, steps: int, batch_size: int, lr: float, keep: float, kinds: tuple[str, ...],
                share: float, seed: int, log: Path) -> None:
    """Train ``model``'s projector and LLM in place, as the module says."""
    teacher = dataclasses.replace(model, mllm=copy.deepcopy(model.mllm).eval().requires_grad_(False))
    for part in (model.edit_head, model.unet, model.vae, model.mllm.vision_tower):
        part.eval().requires_grad_(False)
    params, optimizer, schedule = reader_training(model, steps, lr)
    model.mllm.train_vision_tower = False
    began = time.time()
    for step in range(1, steps + 1):
        edits = [focused_edit_at(seed, (step - 1) * batch_size + i, kinds, share) for i in range(batch_size)]
        batch = batch_of(model, edits).to(model.mllm.device)
        loss_ins, hidden = instruction_loss(model, batch)
        with torch.no_grad():
            goal = imagination(teacher, conversation_states(teacher, batch), batch.labels)
        drift = F.mse_loss(imagination(model, hidden, batch.labels), goal) / goal.var()
        loss = loss_ins + keep * drift
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % 25 == 0 or step == steps:
            log_row(log, {"phase": "words", "step": step, "loss_ins": loss_ins.item(), "drift": drift.item(),
                          "seconds": time.time() - began})
    finish(model)
