"""A *words leg*: the MLLM trained on the instruction loss where its derivation is weakest, with its visual
imagination held to the starting model's, so the UNet it was trained with still fits.

    python -m train.mini.words --init mgie_core/assets/mgie-mini.safetensors --steps 2000 \
        --out runs/mgie-mini-words.safetensors [--kinds smallest odd_one_out leftmost] [--share 0.5]

Where v17's derived words are right, it edits the ambiguous scenes better than its InstructPix2Pix twin
(docs/mgie-mini.md); where they are wrong, its UNet follows them. A joint leg would have to re-align the
UNet with whatever the LLM's hidden states become. Here nothing after the LLM moves: the projector and
LLM learn from

    L = L_ins + keep * ||imagination - imagination_0||^2 / var(imagination_0)

on a stream where ``--share`` of the edits are ambiguous ones of ``--kinds`` (the rest the build's
families in turn). Both imaginations come from the *true* expressive instruction, teacher-forced, through
the frozen edit head: imagination_0 is what the starting model's UNet was trained to follow for those
words, so a scene whose words become right is edited as the starting model edits scenes it derives
right. The VAE, UNet, edit head (its stored ``emb`` too) and vision tower are the starting model's,
byte for byte.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mgie_core.errors import CheckpointError, InputError
from mgie_core.formats.bundle import load_bundle, save_bundle
from mgie_core.model import MGIEModel
from train.objective import conversation_states, instruction_loss, select_from_labels

from . import world
from .build import _log, batch_of, reader_training
from .derivation import VALIDATION_SEED, breakdown, derive_texts, format_breakdown

logger = logging.getLogger("mgie.mini")
REASONING = ("biggest", "smallest", "odd_one_out", "leftmost")  # the ambiguous kinds that pick an object
STREAM_SEED = 5  # not the build's batches: a leg's edits are its own


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
                share: float, seed: int, log: Path | None = None, every: int = 0, scenes: list | None = None):
    """Train ``model``'s projector and LLM (in place) as the module says; every ``every`` steps and at the end
    yield (step, L_ins, imagination drift, the derivation breakdown on ``scenes`` or None)."""
    teacher = dataclasses.replace(model, mllm=copy.deepcopy(model.mllm).eval().requires_grad_(False))
    student = model.mllm
    for part in (model.edit_head, model.unet, model.vae, student.vision_tower):
        part.eval().requires_grad_(False)
    params, optimizer, schedule = reader_training(model, steps, lr)
    student.train_vision_tower = False
    began = time.time()
    for step in range(1, steps + 1):
        edits = [focused_edit_at(seed, (step - 1) * batch_size + i, kinds, share) for i in range(batch_size)]
        batch = batch_of(model, edits).to(student.device)
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
        if log is not None and (step % 25 == 0 or step == steps):
            _log(log, {"phase": "words", "step": step, "loss_ins": loss_ins.item(), "drift": drift.item(),
                       "seconds": time.time() - began})
        if (every and step % every == 0) or step == steps:
            table = None
            if scenes:
                student.eval()
                table = breakdown(scenes, derive_texts(model, scenes))  # the pipeline freezes what it runs
                student.train()
                for param in params:
                    param.requires_grad_(True)
                student.vision_tower.eval()
            yield step, loss_ins.item(), drift.item(), table
    model.weights_changed()
    student.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", required=True, help="the MGIE bundle to start from (e.g. the shipped mgie-mini)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--keep", type=float, default=1.0,
                        help="weight of the imagination's drift from the starting model's (relative MSE)")
    parser.add_argument("--kinds", nargs="+", default=["smallest", "odd_one_out", "leftmost"], choices=REASONING)
    parser.add_argument("--share", type=float, default=0.5, help="share of the stream that is ambiguous --kinds")
    parser.add_argument("--seed", type=int, default=STREAM_SEED)
    parser.add_argument("--eval-every", type=int, default=0,
                        help="also print derivation on 500 ambiguous validation scenes every this many steps")
    parser.add_argument("--work", default="runs/mini-words", help="the leg's log goes here")
    args = parser.parse_args(argv)
    if args.steps < 1 or not 0 <= args.share <= 1:
        parser.error("--steps must be at least 1 and --share between 0 and 1")
    logging.basicConfig(level=logging.INFO, format="[mgie-mini] %(message)s")
    try:
        model = load_bundle(args.init).to("cpu", torch.float32)
    except (InputError, CheckpointError) as error:
        parser.error(str(error))
    init_fingerprint = model.fingerprint()  # of the weights the leg starts from
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    scenes = world.edits(VALIDATION_SEED, 500, ("ambiguous",))
    began = time.time()
    for step, loss_ins, drift, table in train_words(model, args.steps, args.batch_size, args.lr, args.keep,
                                                    tuple(args.kinds), args.share, args.seed, work / "log.jsonl",
                                                    args.eval_every, scenes if args.eval_every else None):
        logger.info("step %d: loss_ins %.4f, drift %.4f, %.1f min", step, loss_ins, drift, (time.time() - began) / 60)
        if table:
            print(format_breakdown(table), flush=True)
    minutes = (time.time() - began) / 60
    extra = dict(model.info.get("extra", {}))
    legs = list(extra.get("legs", []))
    legs.append({"words": Path(args.init).name, "init_fingerprint": init_fingerprint,
                 "trained_by": "python -m train.mini.words", "steps": args.steps, "lr": args.lr, "keep": args.keep,
                 "kinds": list(args.kinds), "share": args.share, "batch_size": args.batch_size, "seed": args.seed,
                 "minutes": round(minutes, 1)})
    model.info["extra"] = extra | {"legs": legs}
    out = save_bundle(model, args.out, dtype="fp16")
    logger.info("wrote %s (%.1f MB) after %.1f minutes", out, out.stat().st_size / 1e6, minutes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
