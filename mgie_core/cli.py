"""Command line: ``python -m mgie_core edit|convert ...``.

Errors a user can cause print one line (``error: ...``) and exit with status 2; output files are
written through a temporary file and renamed, so a failed run never leaves a partial file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import DEFAULT_SEED, DeriveConfig, SampleConfig, sample_config_for
from .errors import InputError, MGIEError
from .files import atomic_write
from .images import load_image, save_image_atomic
from .schedulers import SCHEDULER_NAMES

logger = logging.getLogger("mgie_core")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mgie_core", description="MGIE instruction-based image editing.")
    sub = parser.add_subparsers(dest="command", required=True)

    edit = sub.add_parser("edit", help="edit an image by an instruction")
    edit.add_argument("--model", help="Apple's MGIE root folder or an MGIE bundle (default: the embedded mgie-mini)")
    edit.add_argument("--image", required=True, help="input image file")
    edit.add_argument("--instruction", required=True, help='brief instruction, e.g. "make it look like winter"')
    edit.add_argument("--out", required=True, help="output image file (.png, .jpg, .webp)")
    edit.add_argument("--seed", type=int, default=DEFAULT_SEED)
    edit.add_argument("--steps", type=int, default=SampleConfig.num_inference_steps, help="denoising steps")
    edit.add_argument("--guidance-scale", type=float,
                      help="how strongly the edit follows the visual imagination (default: what the model "
                           f"recommends, mgie-mini 2; else the paper's {SampleConfig.guidance_scale})")
    edit.add_argument("--image-guidance-scale", type=float,
                      help="how strongly the result stays close to the input image (default: what the model "
                           f"recommends; else the paper's {SampleConfig.image_guidance_scale})")
    edit.add_argument("--scheduler", choices=SCHEDULER_NAMES, default=SampleConfig.scheduler)
    edit.add_argument("--max-side", type=int, default=SampleConfig.max_side,
                      help="scale the image down so its longer side is at most this (0: no limit)")
    edit.add_argument("--max-new-tokens", type=int, default=DeriveConfig.max_new_tokens)
    edit.add_argument("--expressive", help="your own expressive instruction; replaces the derived one")
    _add_model_args(edit)
    edit.add_argument("--save-intermediates", metavar="FILE.npz",
                      help="save token ids, visual tokens, (null) imagination and the expressive instruction")
    edit.add_argument("--quiet", action="store_true", help="no progress output")

    convert = sub.add_parser("convert", help="pack a model into one memory-mappable safetensors bundle")
    convert.add_argument("--model", required=True, help="Apple's MGIE root folder (or a bundle)")
    convert.add_argument("--out", required=True, help="FILE.safetensors, or a folder for one file per part")
    convert.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    convert.add_argument("--vision-tower", help="CLIP folder, if not found from the LLaVA config")

    merge = sub.add_parser("merge", help="merge LoRA files into a model and write a bundle")
    merge.add_argument("--model", help="Apple's MGIE root folder or a bundle (default: the embedded mgie-mini)")
    merge.add_argument("--lora", action="append", required=True, metavar="FILE[:STRENGTH]")
    merge.add_argument("--out", required=True, help="FILE.safetensors, or a folder for one file per part")
    merge.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    merge.add_argument("--vision-tower", help="CLIP folder, if not found from the LLaVA config")
    return parser


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                        help="apply a LoRA made by train/finetune.py (repeatable; strength defaults to 1)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="default: fp16 on CUDA, fp32 otherwise")
    parser.add_argument("--vision-tower", help="CLIP folder, if not found from the LLaVA config")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:0, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but this torch build sees no CUDA GPU; use --device cpu")
    return device


def run_edit(args: argparse.Namespace) -> int:
    from .pipeline import MGIEPipeline

    # Check what is cheap to check before loading gigabytes.
    image = load_image(args.image)
    if not args.instruction.strip():
        raise InputError('--instruction is empty: describe the edit, e.g. "make it look like winter"')
    out = Path(args.out)
    if out.suffix.lower() not in Image.registered_extensions():
        raise InputError(f"--out {out}: unknown image extension {out.suffix!r}; use .png, .jpg or .webp")
    if args.save_intermediates and not args.save_intermediates.endswith(".npz"):
        raise InputError(f"--save-intermediates {args.save_intermediates}: the file name must end with .npz")
    derive_config = DeriveConfig(max_new_tokens=args.max_new_tokens)
    settings = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                    image_guidance_scale=args.image_guidance_scale, scheduler=args.scheduler, max_side=args.max_side)
    sample_config_for({}, **settings)  # a bad value fails here, before the model loads
    device = resolve_device(args.device)

    model = load_with_loras(args.model, args.lora, args.vision_tower)
    sample_config = sample_config_for(model.recommended_sampling, **settings)
    logger.info("guidance %g (text) / %g (image)", sample_config.guidance_scale, sample_config.image_guidance_scale)
    pipe = MGIEPipeline(model, device=device, dtype=args.dtype)
    progress = None if args.quiet else _progress_printer()
    result = pipe(image, args.instruction, derive_config, sample_config, seed=args.seed,
                  expressive=args.expressive, callback=progress)
    if args.save_intermediates:
        save_intermediates(result, args.save_intermediates)
    save_image_atomic(result.images[0], out)
    print(result.expressive_instructions[0])
    logger.info("wrote %s", out)
    return 0


def load_with_loras(model: str | None, loras: Sequence[str], vision_tower: str | None = None):
    """Load a model and merge ``FILE[:STRENGTH]`` LoRAs into it (each delta computed in fp32, rounded once)."""
    from .loader import load_model
    from .lora import apply_lora, parse_lora_arg

    loaded = load_model(model, vision_tower=vision_tower)
    for spec in loras:
        path, strength = parse_lora_arg(spec)
        apply_lora(loaded, path, strength)
    return loaded


def run_convert(args: argparse.Namespace) -> int:
    from .bundle import save_bundle

    model = load_with_loras(args.model, getattr(args, "lora", []), args.vision_tower)
    path = save_bundle(model, args.out, dtype=args.dtype)
    print(path)
    return 0


def save_intermediates(result, path: str | Path) -> Path:
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


def _progress_printer():
    """One progress bar over derivation tokens and denoising steps (tqdm ships with transformers)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=1, desc="[mgie] edit", unit="step", leave=False, file=sys.stderr)

    def show(step: int, total: int) -> None:
        bar.total = total
        bar.n = step
        bar.refresh()
        if step >= total:
            bar.close()

    return show


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="[mgie] %(message)s")
    try:
        return run_edit(args) if args.command == "edit" else run_convert(args)  # merge = convert with LoRAs
    except MGIEError as err:
        sys.stderr.write(f"\nerror: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted; nothing was written\n")
        return 130
