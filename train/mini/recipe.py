"""The recipe that made the shipped mgie-mini, from nothing, stage after stage.

    python -m train.mini.recipe --out runs/mgie-mini.safetensors [--work runs/mgie-mini] [--device cuda] [--scale 0.01]

Each stage writes its result into ``--work`` and is skipped when that result is there, so a killed run started
again goes on where it stopped (the joint stages also from their newest checkpoint). ``--scale`` shrinks every
stage's steps, for a quick try of the whole chain. The stages, with the steps and rates that made the shipped
model (docs/mgie-mini.md gives the time each took):

1. ``vae``: a KL autoencoder on world pictures (the real MGIE reuses Stable Diffusion's);
2. ``decoder``: its decoder fine-tuned alone, the encoder kept;
3. ``ip2p``: the UNet learns to edit from brief instructions, as InstructPix2Pix (MGIE starts from that UNet);
4. ``joint``: MGIE's objective end to end (train/objective.py), the vision tower training too, in four ever
   longer cosine schedules (the model was built in four runs, each resumed with more steps);
5. ``leg``: more joint steps from that model, with a fresh optimizer at a lower rate;
6. ``perception``: a vision tower that sees each object's shape, colour, size and place (perception.py);
7. ``tower-leg``: that tower grafted in, frozen as MGIE freezes CLIP; the LLM learns to read it on the
   instruction loss alone, then joint steps;
8. ``words-1``, ``words-2``: the LLM alone on the ambiguous instructions it derived worst, its visual
   imagination held so that the UNet still fits (words.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from mgie_core.errors import MGIEError
from mgie_core.formats import load_bundle, save_bundle
from mgie_core.formats.aligned import save_aligned
from mgie_core.formats.weights import read_state_dict
from mgie_core.model.mgie import MGIEModel
from mgie_core.runtime.devices import resolve_device

from . import world
from .joint import adapt_mllm, train_joint
from .model import VAE, build_mini
from .perception import accuracy, graft, load_tower, new_tower, save_tower, train_perception
from .twin import train_ip2p
from .vae import calibrate_scaling, decoder_state, finetune_decoder, train_vae
from .words import train_words

logger = logging.getLogger("mgie.mini")
# What the shipped model recommends: guidance chosen on validation scenes (the paper's 7.5 is MGIE-7B's; a small
# UNet over-shoots at it) and its working size, the world's 64 px pictures.
RECOMMENDED_SAMPLING = {"guidance_scale": 2.0, "image_guidance_scale": 1.5, "max_side": world.SIZE}


@dataclass(frozen=True)
class WordsLeg:
    kinds: tuple[str, ...]  # the ambiguous kinds the leg's stream favours
    share: float  # how much of the stream they are
    steps: int = 2000
    lr: float = 1e-4
    keep: float = 1.0  # weight of the imagination's drift


@dataclass(frozen=True)
class Recipe:
    """Steps, batch sizes and peak learning rates of every stage. Joint steps count along one stream of edits:
    the legs go on from where the stage before them stopped."""

    seed: int = 0
    batch_size: int = 32
    vae_steps: int = 2000
    vae_lr: float = 3e-3
    decoder_steps: int = 2000
    decoder_batch_size: int = 16
    decoder_lr: float = 1e-3
    ip2p_steps: int = 2000
    lr: float = 5e-4  # the InstructPix2Pix and joint stages
    joint_steps: tuple[int, ...] = (6400, 9600, 12800, 15200)
    leg_steps: int = 17600
    leg_lr: float = 2e-4  # both legs
    perception_steps: int = 3000
    perception_batch_size: int = 64
    perception_lr: float = 1e-3
    patch_size: int = 8
    adapt_steps: int = 3000
    adapt_lr: float = 3e-4
    tower_leg_steps: int = 19600
    words: tuple[WordsLeg, ...] = (WordsLeg(("smallest", "odd_one_out", "leftmost"), 0.5),
                                   WordsLeg(("smallest", "odd_one_out"), 0.6))
    words_seed: int = 5

    def scaled(self, factor: float) -> Recipe:
        """Every stage's steps times ``factor`` (at least one each; the joint stream stays in order)."""
        def n(steps: int) -> int:
            return max(1, round(steps * factor))

        stream, last = [], 0
        for steps in (*self.joint_steps, self.leg_steps, self.tower_leg_steps):
            last = max(last + 1, n(steps))
            stream.append(last)
        return dataclasses.replace(
            self, vae_steps=n(self.vae_steps), decoder_steps=n(self.decoder_steps), ip2p_steps=n(self.ip2p_steps),
            joint_steps=tuple(stream[:-2]), leg_steps=stream[-2], tower_leg_steps=stream[-1],
            perception_steps=n(self.perception_steps), adapt_steps=n(self.adapt_steps),
            words=tuple(dataclasses.replace(w, steps=n(w.steps)) for w in self.words))

    def to_dict(self) -> dict:
        """As the bundle records it (JSON: tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class Build:
    """Where a build keeps its stage results, and what it runs on."""

    recipe: Recipe
    work: Path
    device: torch.device

    @property
    def log(self) -> Path:
        return self.work / "log.jsonl"

    def bundle(self, name: str) -> MGIEModel:
        return load_bundle(self.work / f"{name}.safetensors").to(self.device, torch.float32)

    def save(self, model: MGIEModel, name: str, last: bool = False) -> Path:
        """A stage's model as an fp16 bundle (as every version was kept), with the record of the build (and of
        its perception tower, once grafted)."""
        tower = {k: v for k, v in model.info.get("extra", {}).items() if k == "vision_tower"}
        model.info["extra"] = {"trained_by": "python -m train.mini.recipe", "world": "train/mini/world.py",
                               "recipe": self.recipe.to_dict(), "minutes": self.minutes(), **tower}
        if last:
            model.info["sampling"] = dict(RECOMMENDED_SAMPLING)
        return save_bundle(model, self.work / f"{name}.safetensors", dtype="fp16")

    def minutes(self) -> dict[str, float]:
        path = self.work / "minutes.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def record(self, stage: str, minutes: float) -> None:
        (self.work / "minutes.json").write_text(json.dumps({**self.minutes(), stage: round(minutes, 1)}, indent=1))

    def fresh_model(self) -> MGIEModel:
        return build_mini(self.recipe.seed).to(self.device)

    def trained_vae(self, model: MGIEModel) -> MGIEModel:
        """``model`` with the VAE stage's weights, scaled so that its latents have unit variance."""
        model.vae.load_state_dict(read_state_dict(self.work / "vae.safetensors"))
        calibrate_scaling(model.vae.eval().requires_grad_(False), self.recipe.seed)
        return model


# -- the stages, in order: each makes work/<name>.safetensors from what the stages before it made ---------
def vae_stage(b: Build) -> None:
    r, model = b.recipe, b.fresh_model()
    train_vae(model.vae, r.vae_steps, r.batch_size, r.seed, b.log, r.vae_lr)
    save_aligned(model.vae.state_dict(), b.work / "vae.safetensors")


def decoder_stage(b: Build) -> None:
    vae = AutoencoderKL(**VAE)
    vae.load_state_dict(read_state_dict(b.work / "vae.safetensors"))
    vae = vae.half().float().to(b.device)  # the decoder was fine-tuned on the VAE as a bundle stored it, fp16
    r = b.recipe
    finetune_decoder(vae, r.decoder_steps, r.decoder_batch_size, r.decoder_lr, log=b.log)
    save_aligned(decoder_state(vae), b.work / "decoder.safetensors")


def ip2p_stage(b: Build) -> None:
    r, model = b.recipe, b.fresh_model()
    b.trained_vae(model)
    train_ip2p(model, r.ip2p_steps, r.batch_size, r.lr, r.seed, b.log)
    save_aligned(model.unet.state_dict(), b.work / "ip2p.safetensors")


def joint_stage(b: Build) -> None:
    r, model = b.recipe, b.trained_vae(b.fresh_model())
    model.unet.load_state_dict(read_state_dict(b.work / "ip2p.safetensors"))
    for steps in r.joint_steps:  # each longer cosine takes up the one before from its last checkpoint
        train_joint(model, steps, r.batch_size, r.lr, r.seed, b.work / "joint", b.log)
    model.vae.load_state_dict(read_state_dict(b.work / "decoder.safetensors"), strict=False)
    b.save(model, "joint")


def leg_stage(b: Build) -> None:
    r, model = b.recipe, b.bundle("joint")
    train_joint(model, r.leg_steps, r.batch_size, r.leg_lr, r.seed, b.work / "leg", b.log, start=r.joint_steps[-1])
    b.save(model, "leg")


def perception_stage(b: Build) -> None:
    r = b.recipe
    tower = new_tower(r.patch_size, r.seed).to(b.device)
    readout = train_perception(tower, r.perception_steps, r.perception_batch_size, r.perception_lr, r.seed,
                               b.log, position=True)
    record = {"steps": r.perception_steps, "accuracy": accuracy(tower, readout)}
    save_tower(tower.to("cpu"), r.patch_size, b.work / "perception.safetensors", record)


def tower_leg_stage(b: Build) -> None:
    r, model = b.recipe, b.bundle("leg")
    tower, config, record = load_tower(b.work / "perception.safetensors")
    graft(model, tower, config)
    model.info["extra"] = {"vision_tower": record}
    adapted = b.work / "tower-leg" / "adapted.safetensors"  # kept, so that a resumed build does not adapt again
    if adapted.is_file():
        model.mllm.load_state_dict(load_bundle(adapted).mllm.state_dict())
    else:
        adapt_mllm(model, r.adapt_steps, r.batch_size, r.adapt_lr, r.seed + 4, b.log)
        save_bundle(model, adapted, dtype="fp32")
    train_joint(model, r.tower_leg_steps, r.batch_size, r.leg_lr, r.seed, b.work / "tower-leg", b.log,
                start=r.leg_steps, train_vision_tower=False)
    b.save(model, "tower-leg")


def words_stage(index: int) -> Callable[[Build], None]:
    def stage(b: Build) -> None:
        leg, previous = b.recipe.words[index], "tower-leg" if index == 0 else f"words-{index}"
        model = b.bundle(previous)
        train_words(model, leg.steps, b.recipe.batch_size, leg.lr, leg.keep, leg.kinds, leg.share,
                    b.recipe.words_seed, b.log)
        b.save(model, f"words-{index + 1}", last=index + 1 == len(b.recipe.words))

    return stage


def stages(recipe: Recipe) -> dict[str, Callable[[Build], None]]:
    """Stage name -> what runs it; a stage's result is ``work/<name>.safetensors``."""
    return {"vae": vae_stage, "decoder": decoder_stage, "ip2p": ip2p_stage, "joint": joint_stage, "leg": leg_stage,
            "perception": perception_stage, "tower-leg": tower_leg_stage,
            **{f"words-{i + 1}": words_stage(i) for i in range(len(recipe.words))}}


def build(recipe: Recipe, work: Path, out: Path, device: str = "cpu") -> Path:
    """Run every stage whose result is not in ``work`` yet, then copy the last one to ``out``."""
    b = Build(recipe, Path(work), resolve_device(device))
    b.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    plan = stages(recipe)
    for name, run in plan.items():
        if (b.work / f"{name}.safetensors").is_file():
            logger.info("stage %s: done before, kept", name)
            continue
        logger.info("stage %s", name)
        began = time.time()
        run(b)
        b.record(name, (time.time() - began) / 60)
    model = load_bundle(b.work / f"{list(plan)[-1]}.safetensors")
    model.info["extra"]["minutes"] = b.minutes()  # every stage's, the last one's too
    out = save_bundle(model, out, dtype="fp16")
    logger.info("wrote %s (%.1f MB); minutes per stage: %s", out, out.stat().st_size / 1e6, b.minutes())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the bundle to write (the shipped model is "
                                                     "mgie_core/assets/mgie-mini.safetensors: do not overwrite it)")
    parser.add_argument("--work", default="runs/mgie-mini", help="stage results and checkpoints (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda; every random draw stays on the CPU (default: cpu)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every stage's steps by this, for a quick try (default: 1, the shipped recipe)")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 1:
        parser.error(f"--scale must be in (0, 1], got {args.scale}")
    logging.basicConfig(level=logging.INFO, format="[mgie-mini] %(message)s")
    recipe = Recipe() if args.scale == 1 else Recipe().scaled(args.scale)
    try:
        build(recipe, Path(args.work), Path(args.out), args.device)
    except MGIEError as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
