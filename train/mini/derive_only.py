"""How fast mgie-mini's MLLM learns to derive on its own: a fresh MLLM trained on the instruction
cross-entropy alone (no diffusion, no UNet), its derivation measured on validation scenes.

    python -m train.mini.derive_only [--patch-size 8] [--vision-lr-scale 4] [--steps 3000] [--eval-every 1000]

An experiment for the next model's recipe, not a build stage: a CE step costs about a quarter of a
joint one, so a question about perception (the vision tower's patch size, say) is answered in
minutes instead of hours. It trains on the build's stream (another seed) and prints
``train.mini.derivation``'s breakdown (default: 500 scenes of its validation seed).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from . import world
from .build import instruction_steps, warmup_cosine
from .derivation import VALIDATION_SEED, breakdown, derive_texts, format_breakdown
from .model import VISION, build_mini

STREAM_SEED = 1234  # not the build's (0): an experiment's batches are its own


def train_derivation(model, steps: int, batch_size: int, lr: float, every: int = 0, scenes: list | None = None,
                     vision_lr_scale: float = 1.0):
    """Train ``model.mllm`` (vision tower, projector, LLM) on L_ins, the vision tower at ``vision_lr_scale``
    times ``lr``; every ``every`` steps and at the end, yield (step, that step's loss, the derivation
    breakdown on ``scenes``)."""
    mllm = model.mllm
    params = list(mllm.parameters())
    vision = {id(p) for p in mllm.vision_tower.parameters()}
    groups = [{"params": [p for p in params if id(p) not in vision], "lr": lr},
              {"params": [p for p in params if id(p) in vision], "lr": lr * vision_lr_scale}]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps))
    mllm.train().requires_grad_(True)
    mllm.train_vision_tower = True
    for step, loss in instruction_steps(model, params, optimizer, schedule, steps, batch_size, STREAM_SEED):
        if scenes and ((every and step % every == 0) or step == steps):
            mllm.eval().requires_grad_(False)
            mllm.train_vision_tower = False
            yield step, loss.item(), breakdown(scenes, derive_texts(model, scenes))
            mllm.train().requires_grad_(True)
            mllm.train_vision_tower = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch-size", type=int, default=VISION["patch_size"], choices=(4, 8, 16, 32),
                        help="the vision tower's patches of the 64x64 picture (16: the from-scratch build's; "
                             "the shipped model's perception tower has 8)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--vision-lr-scale", type=float, default=1.0, help="the vision tower's learning rate, times --lr")
    parser.add_argument("--count", type=int, default=500, help="validation scenes")
    parser.add_argument("--eval-every", type=int, default=0, help="also measure every this many steps")
    parser.add_argument("--json", help="write every measurement here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    model = build_mini(0, patch_size=args.patch_size)
    scenes = world.edits(VALIDATION_SEED, args.count)
    began, found = time.time(), []
    for step, loss, table in train_derivation(model, args.steps, args.batch_size, args.lr, args.eval_every, scenes,
                                              args.vision_lr_scale):
        print(f"step {step} (patch {args.patch_size}, vision lr x{args.vision_lr_scale:g}, "
              f"{(time.time() - began) / 60:.1f} min), loss {loss:.4f}")
        print(format_breakdown(table), flush=True)
        found.append({"step": step, "patch_size": args.patch_size, "vision_lr_scale": args.vision_lr_scale, "loss": loss,
                      "derivation": table})
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
