"""``python -m mgie_core edit``: the command's inputs made into an :class:`~mgie_core.runner.Edit` (or a plan of
many), checked before the model loads, run by the one runner, and shown: each expressive instruction "understood
as", a bar per stage, every picture of a chain written."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import NO_LIMIT, EditSettings
from ..errors import InputError
from ..files import atomic_write, check_writable, remove_temporaries
from ..formats.lora import LoraFile, check_lora_args
from ..images import load_image, load_mask, save_image_atomic
from ..runner import Edit, EditResult, StageProgress, run_edit
from ..runtime.devices import leave_process_group
from ..runtime.placement import PlacedModel, Placement, resolve_placement
from ..stages.chain import parse_chain

logger = logging.getLogger("mgie_core")


def run_edit_command(args: argparse.Namespace, settings: EditSettings) -> int:
    from .batch import is_many

    if args.manifest or (args.image and is_many(args.image)):
        return run_many(args, settings)
    return run_one(args, settings)


# -- one picture, one instruction or a chain ------------------------------------------------------------------
def run_one(args: argparse.Namespace, settings: EditSettings) -> int:
    if not args.image:
        raise InputError("give --image (a file, a folder or a glob) or --manifest EDITS.jsonl")
    chain = instructions_of(args)
    out = Path(args.out)
    check_writable(out, "--out")
    if out.suffix.lower() not in Image.registered_extensions():
        raise InputError(f"--out {out}: unknown image extension {out.suffix!r}; use .png, .jpg or .webp")
    image = load_image(args.image)
    mask = load_mask(args.mask) if args.mask else None
    edit = Edit.of(image, chain, [args.expressive], settings.seed, mask, chained=True)
    outputs = chain_outputs(out, len(chain))
    for path in outputs:
        check_writable(path, "--out", needed=3 * image.width * image.height + 2**20)
    if args.save_intermediates:
        if not args.save_intermediates.endswith(".npz"):
            raise InputError(f"--save-intermediates {args.save_intermediates}: the file name must end with .npz")
        check_writable(Path(args.save_intermediates), "--save-intermediates")
    placed = place_model(args, Placement.make(args.device, args.dtype, args.memory, args.compile))
    sample_config = settings.sample_config(placed.model.recommended_sampling)
    say_settings(settings, sample_config, placed.model.recommended_sampling)
    for path in outputs:
        remove_temporaries(path.parent, path.name)

    def show(index: int, result: EditResult) -> None:
        say_understood(chain[index], result.expressive_instructions[0], index if len(chain) > 1 else None,
                       placed.model)
        picture = result.images[0]
        if args.keep_size and picture.size != image.size:
            picture = picture.resize(image.size, Image.Resampling.LANCZOS)
        save_image_atomic(picture, outputs[index])
        logger.info("wrote %s", outputs[index])

    say_size(placed, image.size, sample_config.max_side, args.keep_size)
    results = run_edit(placed, edit, settings.derive_config(), sample_config, None if args.quiet else StageBars(), show)
    if args.save_intermediates:
        save_intermediates(results[-1], args.save_intermediates)
    return 0


def instructions_of(args: argparse.Namespace) -> list[str]:
    """The chain of ``--instruction`` (given several times: each edits the previous result)."""
    if not any((text or "").strip() for text in args.instruction or []):
        raise InputError('--instruction is empty: describe the edit, e.g. "make it look like winter"')
    return parse_chain(args.instruction)


def chain_outputs(out: Path, count: int) -> list[Path]:
    """Where each picture of a chain goes: OUT-1.png .. OUT-(n-1).png, and OUT for the last."""
    return [out.with_name(f"{out.stem}-{k}{out.suffix}") for k in range(1, count)] + [out]


# -- many pictures ------------------------------------------------------------------------------------------
def run_many(args: argparse.Namespace, settings: EditSettings) -> int:
    """Edit a folder, a glob or a manifest into the --out folder; under ``accelerate launch``, with every process."""
    from accelerate import PartialState

    from .batch import check_no_other_edits, plan_images, plan_manifest, read_records, run

    out_dir = Path(args.out)
    if out_dir.suffix.lower() in Image.registered_extensions():
        raise InputError(f"--out {out_dir}: editing several images writes into a folder; give a folder name")
    check_writable(out_dir, "--out", folder=True)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be a positive integer, got {args.batch_size}")
    instruction = one_instruction(args) if args.instruction or not args.manifest else None
    if args.manifest:
        if args.mask:
            raise InputError("--mask goes with --image; a manifest gives each line its own \"mask\"")
        plan = plan_manifest(Path(args.manifest), out_dir, settings.seed, instruction)
    else:
        plan = plan_images(args.image, instruction, out_dir, settings.seed, args.expressive,
                           Path(args.mask) if args.mask else None)
    if not args.overwrite:  # the settings are compared too, once the model's recommendations are known
        check_no_other_edits(plan.items, out_dir, read_records(out_dir))
    placement = Placement.make(args.device, args.dtype, args.memory, args.compile)
    state = PartialState(cpu=placement.device.type == "cpu")  # several processes under accelerate launch
    if not state.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    if state.num_processes > 1:
        placement = Placement.make(state.device, args.dtype, args.memory, args.compile)
    placed = place_model(args, placement)
    sample_config = settings.sample_config(placed.model.recommended_sampling)
    say_settings(settings, sample_config, placed.model.recommended_sampling)
    bars = BatchBars(len(plan.items)) if not args.quiet and state.is_main_process else None
    summary = run(placed, plan, out_dir, args.batch_size, settings.derive_config(), sample_config, args.overwrite,
                  state, bars)
    if bars:
        bars.close(summary.done + summary.skipped)
    if state.is_main_process:
        print(summary.text())
    leave_process_group()
    return 1 if summary.failures else 0


def one_instruction(args: argparse.Namespace) -> str:
    chain = instructions_of(args)
    if len(chain) > 1:
        raise InputError("several --instruction (a chain) work on one --image file; for a folder, run one command "
                         "per instruction, each on the previous command's --out folder")
    return chain[0]


# -- the model -----------------------------------------------------------------------------------------------
def place_model(args: argparse.Namespace, placement) -> PlacedModel:
    """Check the LoRA files, then load the model, merge them, and place it (``auto`` decided from its shapes)."""
    loras = check_lora_args(args.lora)
    model = load_with_loras(args.model, loras, args.vision_tower)
    placed = PlacedModel(model, resolve_placement(placement, model))
    logger.info("placement: %s", placed.placement.describe())
    return placed


def load_with_loras(model: str | None, loras: Sequence[tuple[LoraFile, float]], vision_tower: str | None = None):
    """Load a model and merge LoRAs into it (each delta computed in fp32, rounded once)."""
    from ..formats import apply_lora, load_model

    loaded = load_model(model, vision_tower=vision_tower)
    for lora, strength in loras:
        apply_lora(loaded, lora, strength)
    return loaded


# -- what the command shows ---------------------------------------------------------------------------------
MINI_EDITS = ("mgie-mini only recolours, removes or adds flat shapes, or makes the scene brighter, darker, warmer, "
              "cooler or night")


def say_understood(instruction: str, expressive: str, index: int | None = None, model=None) -> None:
    """The brief instruction beside what MGIE made of it, so that a request it did not understand shows at once."""
    number = f"{index + 1}. " if index is not None else ""
    mini = f" ({MINI_EDITS})" if model is not None and is_mini(model) else ""
    print(f'{number}"{instruction}" understood as "{expressive}"{mini}')


def is_mini(model) -> bool:
    """A model of the edit world mgie-mini was trained on."""
    return "world" in model.info.get("extra", {})


def say_settings(settings: EditSettings, config, recommended: dict) -> None:
    """Which guidance and size the edit uses, and whose they are (set, the model's, or the paper's)."""
    def source(name: str) -> str:
        if getattr(settings, name) != 0:
            return "as set"
        return "the model's" if name in recommended else "the paper's"

    side = "any size" if config.max_side == NO_LIMIT else f"up to {config.max_side} px"
    logger.info("%s, %d steps; guidance %g (text) / %g (image), %s; images %s, %s", config.scheduler,
                config.num_inference_steps, config.guidance_scale, config.image_guidance_scale,
                source("guidance_scale"), side, source("max_side"))


def say_size(placed: PlacedModel, size: tuple[int, int], max_side: int, keep_size: bool) -> None:
    from ..images import vae_size

    edited = vae_size(*size, placed.model.vae_scale_factor, max_side)
    if edited != tuple(size):
        back = f"; --keep-size returns {size[0]}x{size[1]}" if not keep_size else f", returned at {size[0]}x{size[1]}"
        logger.info("the picture is %dx%d; this model edits it at %dx%d%s", *size, *edited, back)


class StageBars:
    """A progress bar per stage of the edit in progress (tokens while deriving, steps while denoising)."""

    def __init__(self, position: int = 0):
        self.position = position

    def __call__(self, stage: str, index: int):
        from tqdm.auto import tqdm

        unit = "token" if stage == "derive" else "step"
        bar = tqdm(total=1, desc=f"[mgie] {'derive' if stage == 'derive' else 'denoise'}", unit=unit, leave=False,
                   file=sys.stderr, position=self.position)

        def show(step: int, total: int) -> None:
            bar.total, bar.n = total, step
            bar.refresh()
            if step >= total:
                bar.close()

        return show


class BatchBars:
    """Pictures done over the whole run, and under it the stages of the batch in progress."""

    def __init__(self, total: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="[mgie] pictures", unit="picture", file=sys.stderr)
        self.stages = StageBars(position=1)

    def __call__(self, done: int, total: int) -> StageProgress:
        self.bar.n = done
        self.bar.refresh()
        return self.stages

    def close(self, done: int) -> None:
        self.bar.n = done
        self.bar.close()


def save_intermediates(result: EditResult, path: str | Path) -> Path:
    """Write the stage outputs of the first edit to an ``.npz`` file (atomically)."""
    d, im = result.derivation, result.imagination
    arrays = {
        "token_ids": d.token_ids[0].numpy().astype(np.int64),
        "prompt_length": np.int64(d.prompt_lengths[0]),
        "visual_tokens": d.visual_tokens[0].float().cpu().numpy(),  # (K, H)
        "imagination": im.imagination[0].float().cpu().numpy(),  # (Q, D)
        "null_imagination": im.null_imagination[0].float().cpu().numpy(),  # (Q, D)
        "expressive_instruction": np.array(d.expressive_instructions[0]),
    }
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)
    return Path(path)
