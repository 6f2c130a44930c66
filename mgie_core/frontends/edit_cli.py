"""``python -m mgie_core edit``: the command's inputs made into a plan (:mod:`.plan`), checked before the model
loads, run by the one runner, and shown: each expressive instruction "understood as", progress, every picture of a
chain written."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import NO_LIMIT, EditSettings, PlacementSettings
from ..errors import InputError
from ..files import atomic_write, check_writable, remove_temporaries
from ..formats.lora import LoraFile, check_lora_args
from ..images import load_image, load_mask, save_image_atomic, vae_size
from ..runner import Edit, EditResult, run_edit
from ..runtime.devices import leave_process_group
from ..runtime.placement import PlacedModel, Placement, resolve_placement
from ..stages.chain import parse_chain
from .plan import Plan, check_inputs, check_item, is_many, plan_images, plan_manifest, plan_one
from .progress import BatchBars, StageBars

logger = logging.getLogger("mgie_core")


def run_edit_command(args: argparse.Namespace, settings: EditSettings, placement: PlacementSettings) -> int:
    if args.manifest or (args.image and is_many(args.image)):
        return run_many(args, settings, placement)
    return run_one(args, settings, placement)


# -- one picture, one instruction or a chain ------------------------------------------------------------------
def run_one(args: argparse.Namespace, settings: EditSettings, placement: PlacementSettings) -> int:
    if not args.image:
        raise InputError("give --image (a file, a folder or a glob) or --manifest EDITS.jsonl")
    chain = instructions_of(args)
    item = plan_one(args.image, chain, Path(args.out), settings.seed, args.expressive, args.mask).items[0]
    say_notices(check_item(item, args.overwrite, "--out"))  # before the model loads, as everything below
    if args.save_intermediates:
        if not args.save_intermediates.endswith(".npz"):
            raise InputError(f"--save-intermediates {args.save_intermediates}: the file name must end with .npz")
        check_writable(Path(args.save_intermediates), "--save-intermediates")
    loras = check_lora_args(args.lora)
    image = load_image(item.image)
    edit = Edit.of(image, chain, [args.expressive], settings.seed, load_mask(item.mask) if item.mask else None,
                   chained=True)
    placed = place_model(args, Placement.make(placement), loras)
    sample_config = settings.sample_config(placed.model.recommended_sampling)
    say_settings(settings, sample_config, placed.model.recommended_sampling)
    for path in item.outs:
        remove_temporaries(path.parent, path.name)

    def show(index: int, result: EditResult) -> None:
        say_understood(chain[index], result.expressive_instructions[0], index if len(chain) > 1 else None,
                       placed.model)
        picture = result.images[0]
        if args.keep_size and picture.size != image.size:
            picture = picture.resize(image.size, Image.Resampling.LANCZOS)
        save_image_atomic(picture, item.outs[index])
        logger.info("wrote %s", item.outs[index])

    say_size(placed, image.size, sample_config.max_side, args.keep_size)
    bars = None if args.quiet else StageBars()
    results = run_edit(placed, edit, settings.derive_config(), sample_config, bars, show)
    if args.save_intermediates:
        save_intermediates(results[-1], args.save_intermediates)
    return 0


def instructions_of(args: argparse.Namespace) -> list[str]:
    """The chain of ``--instruction`` (given several times: each edits the previous result)."""
    if not any((text or "").strip() for text in args.instruction or []):
        raise InputError('--instruction is empty: describe the edit, e.g. "make it look like winter"')
    return parse_chain(args.instruction)


# -- many pictures ------------------------------------------------------------------------------------------
def run_many(args: argparse.Namespace, settings: EditSettings, placement: PlacementSettings) -> int:
    """Edit a folder, a glob or a manifest into the --out folder; under ``accelerate launch``, with every process."""
    from accelerate import PartialState

    from .batch import run
    from .records import check_no_other_edits, read_records

    plan, out_dir = plan_many(args, settings)
    check_inputs(plan, args.overwrite)
    say_notices(plan.notices)
    if not plan.items and not plan.refused:
        return 0  # an empty manifest: said so, nothing to load
    if not args.overwrite:  # the settings are compared too, once the model's recommendations are known
        check_no_other_edits(plan.items, out_dir, read_records(out_dir))
    loras = check_lora_args(args.lora)
    state = PartialState(cpu=Placement.make(placement).device.type == "cpu")  # processes under accelerate launch
    if not state.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    device = state.device if state.num_processes > 1 else None
    placed = place_model(args, Placement.make(placement, device), loras)
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


def plan_many(args: argparse.Namespace, settings: EditSettings) -> tuple[Plan, Path]:
    """The plan of a folder, a glob or a manifest, and the output folder (checked)."""
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
        return plan_manifest(Path(args.manifest), out_dir, settings.seed, instruction), out_dir
    masks = Path(args.mask) if args.mask else None
    return plan_images(args.image, instruction, out_dir, settings.seed, args.expressive, masks), out_dir


def one_instruction(args: argparse.Namespace) -> str:
    chain = instructions_of(args)
    if len(chain) > 1:
        raise InputError("several --instruction (a chain) work on one --image file; for a folder, run one command "
                         "per instruction, each on the previous command's --out folder")
    return chain[0]


# -- the model -----------------------------------------------------------------------------------------------
def place_model(args: argparse.Namespace, placement, loras: Sequence[tuple[LoraFile, float]]) -> PlacedModel:
    """Load the model and carry the placement out (``auto`` decided from its shapes), the LoRAs merged after the
    LLM is quantized (:func:`mgie_core.runtime.placement.prepare_weights`)."""
    from ..formats import load_model

    model = load_model(args.model, vision_tower=args.vision_tower)
    placed = PlacedModel(model, resolve_placement(placement, model), loras=loras)
    logger.info("placement: %s", placed.placement.describe())
    return placed


# -- what the command shows ---------------------------------------------------------------------------------
MINI_EDITS = ("mgie-mini only recolours, removes or adds flat shapes, or makes the scene brighter, darker, warmer, "
              "cooler or night")


def say_understood(instruction: str, expressive: str, index: int | None = None, model=None) -> None:
    """The brief instruction beside what MGIE made of it, so that a request it did not understand shows at once."""
    number = f"{index + 1}. " if index is not None else ""
    mini = f" ({MINI_EDITS})" if model is not None and model.world is not None else ""
    print(f'{number}"{instruction}" understood as "{expressive}"{mini}')


def say_notices(notices: Sequence[str]) -> None:
    for notice in notices:
        logger.warning("%s", notice)


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
    edited = vae_size(*size, placed.model.vae_scale_factor, max_side)
    if edited != tuple(size):
        back = f"; --keep-size returns {size[0]}x{size[1]}" if not keep_size else f", returned at {size[0]}x{size[1]}"
        logger.info("the picture is %dx%d; this model edits it at %dx%d%s", *size, *edited, back)


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

