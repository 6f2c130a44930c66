"""Command line: ``python -m mgie_core edit|convert|merge|assemble|check ...``.

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
from PIL import Image

from .assemble.command import add_assemble_command
from .check import add_check_command
from .config import (
    DEFAULT_SEED,
    SAMPLING_PRESETS,
    VAE_TILING,
    DeriveConfig,
    SampleConfig,
    preset_settings,
    sample_config_for,
)
from .devices import AUTO, DTYPES, leave_process_group, resolve_device
from .errors import InputError, MGIEError, SettingError
from .files import atomic_write
from .images import load_image, save_image_atomic, tensor_to_pil
from .quant import LLM_QUANTS, check_llm_quant
from .sample import TILE_ABOVE
from .schedulers import SCHEDULER_NAMES
from .steps import parse_steps

logger = logging.getLogger("mgie_core")

# Config fields -> the flags that set them, so that an out-of-range value is reported by its flag.
FLAGS = {"num_inference_steps": "--steps", "guidance_scale": "--guidance-scale",
         "image_guidance_scale": "--image-guidance-scale", "scheduler": "--scheduler", "max_side": "--max-side",
         "max_new_tokens": "--max-new-tokens", "vae_tiling": "--vae-tiling"}
MODEL_HELP = "Apple's MGIE root folder or an MGIE .safetensors bundle (default: the embedded mgie-mini)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mgie_core", description="MGIE instruction-based image editing.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_edit(sub.add_parser("edit", help="edit an image by an instruction"))
    convert = sub.add_parser("convert", help="pack a model into one memory-mappable safetensors bundle")
    convert.add_argument("--model", required=True, help="Apple's MGIE root folder (or a bundle)")
    _add_output_args(convert)
    merge = sub.add_parser("merge", help="merge LoRA files into a model and write a bundle")
    merge.add_argument("--model", help=MODEL_HELP)
    merge.add_argument("--lora", action="append", required=True, metavar="FILE[:STRENGTH]",
                       help="a LoRA made by train/finetune.py (repeatable; strength defaults to 1)")
    _add_output_args(merge)
    add_assemble_command(sub)  # mgie_core/assemble/command.py
    add_check_command(sub)  # mgie_core/check.py
    return parser


def _add_edit(edit: argparse.ArgumentParser) -> None:
    d, s = DeriveConfig(), SampleConfig()
    edit.add_argument("--model", help=MODEL_HELP)
    edit.add_argument("--image", help="input image file (PNG, JPEG, WebP, BMP, TIFF); a folder or a glob pattern edits "
                                      "every picture in it (default: none; give it or --manifest)")
    edit.add_argument("--instruction", action="append",
                      help='brief instruction, e.g. "make it look like winter"; given several times, a multi-step '
                           "edit: each instruction edits the previous result (default: none; a manifest's lines may "
                           "give their own)")
    edit.add_argument("--out", required=True, help="output image file (.png, .jpg, .webp), or the output folder when "
                                                   "editing several images")
    edit.add_argument("--manifest", metavar="EDITS.jsonl",
                      help='edit every line: {"image", "instruction", optional "expressive", "seed", "mask" (white '
                           'where to edit), "out"}; paths relative to the manifest and to --out (default: none)')
    edit.add_argument("--batch-size", type=int, default=8,
                      help="edits derived and denoised together when editing several images (default: %(default)s)")
    edit.add_argument("--overwrite", action="store_true",
                      help="edit again the images whose output exists (default: skip them, so a killed run resumes)")
    edit.add_argument("--seed", type=int, default=DEFAULT_SEED, help="noise seed (default: %(default)s, Apple's demo)")
    edit.add_argument("--preset", choices=SAMPLING_PRESETS, help="paper: euler_ancestral, 100 steps (the default); "
                      "fast: dpmpp_2m_karras, 25 steps, as good on mgie-mini's test scenes (--steps and --scheduler "
                      "override it)")
    edit.add_argument("--steps", type=int, help=f"denoising steps (default: {s.num_inference_steps}, or the preset's)")
    edit.add_argument("--guidance-scale", type=float,
                      help="how strongly the edit follows the visual imagination (default: what the model "
                           f"recommends: mgie-mini 2; Apple's MGIE the paper's {s.guidance_scale})")
    edit.add_argument("--image-guidance-scale", type=float,
                      help="how strongly the result stays close to the input image (default: what the model "
                           f"recommends, else the paper's {s.image_guidance_scale})")
    edit.add_argument("--scheduler", choices=SCHEDULER_NAMES,
                      help=f"sampler (default: {s.scheduler}, as MGIE was released, or the preset's)")
    edit.add_argument("--max-side", type=int,
                      help="scale the image down so its longer side is at most this, 0 for no limit (default: the "
                           f"model's working size: mgie-mini 64; Apple's MGIE {s.max_side})")
    edit.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                      help="token budget of the expressive instruction (default: %(default)s, the paper's)")
    edit.add_argument("--expressive", help="your own expressive instruction; replaces the derived one (default: derive it)")
    edit.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                      help="apply a LoRA made by train/finetune.py (repeatable; strength defaults to 1)")
    edit.add_argument("--device", default=AUTO, help="cpu, cuda, cuda:1, mps ... (default: cuda if there is one, else cpu)")
    edit.add_argument("--dtype", choices=(AUTO, *DTYPES), default=AUTO,
                      help="precision (default: fp16 on CUDA, fp32 elsewhere)")
    edit.add_argument("--llm-quant", choices=LLM_QUANTS, default="none",
                      help="the LLM's linear layers in int8 (an 8 GB card with --low-vram; CPU too) or 4 bits (6 GB; "
                           "CUDA only); default: %(default)s, as loaded")
    edit.add_argument("--low-vram", action="store_true",
                      help="staged residency: the LLM leaves the GPU before denoising, the UNet and VAE wait off it "
                           "while the LLM decodes")
    edit.add_argument("--compile", action="store_true",
                      help="torch.compile decoding and denoising (CUDA graphs on a GPU); the first edit at each size "
                           "compiles, the next ones are faster (not with --low-vram)")
    edit.add_argument("--vae-tiling", choices=VAE_TILING, default=s.vae_tiling,
                      help=f"encode and decode in tiles: auto does it above {TILE_ABOVE} px (default: %(default)s)")
    edit.add_argument("--vision-tower", help="CLIP folder (default: found from the LLaVA config; Apple's folders only)")
    edit.add_argument("--save-intermediates", metavar="FILE.npz",
                      help="also save token ids, visual tokens, (null) imagination and the expressive instruction "
                           "(default: not saved)")
    edit.add_argument("--quiet", action="store_true", help="no progress bars and no log lines")


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="FILE.safetensors, or a folder for one file per part")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp16", help="stored precision (default: %(default)s)")
    parser.add_argument("--vision-tower", help="CLIP folder (default: found from the LLaVA config; Apple's folders only)")


def check_settings(args: argparse.Namespace) -> dict:
    """The sampling settings (None: the model's), checked before gigabytes load."""
    settings = preset_settings(args.preset, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                               image_guidance_scale=args.image_guidance_scale, scheduler=args.scheduler,
                               max_side=args.max_side, vae_tiling=args.vae_tiling)
    sample_config_for({}, **settings)
    DeriveConfig(max_new_tokens=args.max_new_tokens)
    return settings


def check_edit_args(args: argparse.Namespace) -> tuple[Image.Image, list[str], Path, dict]:
    """What is cheap to check, checked before gigabytes load: the image, the instructions, the output name and
    the settings. Returns the image, the steps, the output path and the sampling settings (None: the model's)."""
    if not args.image:
        raise InputError("give --image (a file, a folder or a glob) or --manifest EDITS.jsonl")
    image = load_image(args.image)
    steps = check_steps(args)
    out = Path(args.out)
    if out.suffix.lower() not in Image.registered_extensions():
        raise InputError(f"--out {out}: unknown image extension {out.suffix!r}; use .png, .jpg or .webp")
    if args.save_intermediates and not args.save_intermediates.endswith(".npz"):
        raise InputError(f"--save-intermediates {args.save_intermediates}: the file name must end with .npz")
    return image, steps, out, check_settings(args)


def check_steps(args: argparse.Namespace) -> list[str]:
    """The instruction of each step (``--instruction`` given several times: a multi-step edit)."""
    if not any((text or "").strip() for text in args.instruction or []):
        raise InputError('--instruction is empty: describe the edit, e.g. "make it look like winter"')
    steps = parse_steps(args.instruction)
    if len(steps) > 1 and args.expressive:
        raise InputError("--expressive replaces the derived instruction of a one-step edit; a multi-step edit "
                         "(several --instruction) derives each step's own")
    return steps


def check_instruction(args: argparse.Namespace) -> str:
    """The one instruction of a folder or manifest edit (multi-step edits take a single --image)."""
    steps = check_steps(args)
    if len(steps) > 1:
        raise InputError("several --instruction (a multi-step edit) work on one --image file; for a folder, run "
                         "one command per step, each on the previous command's --out folder")
    return steps[0]


def make_pipeline(args: argparse.Namespace, settings: dict, device) -> tuple:
    """The model (with its LoRAs) on ``device`` as a pipeline, and the sampling settings it recommends where the
    user gave none."""
    from .pipeline import MGIEPipeline

    check_llm_quant(args.llm_quant, device)  # before gigabytes load
    if args.compile and args.low_vram:
        raise InputError("--compile and --low-vram do not go together: compiled graphs keep the parts on the GPU, "
                         "--low-vram moves them at every edit; use --compile on a card that holds MGIE whole")
    model = load_with_loras(args.model, args.lora, args.vision_tower)
    sample_config = sample_config_for(model.recommended_sampling, **settings)
    _log_settings(sample_config, model.recommended_sampling)
    pipe = MGIEPipeline(model, device=device, dtype=args.dtype, llm_quant=args.llm_quant, low_vram=args.low_vram,
                        compile=args.compile)
    return pipe, sample_config


def run_edit(args: argparse.Namespace) -> int:
    from .batch import is_many
    from .pipeline import EditResult

    if args.manifest or (args.image and is_many(args.image)):
        return run_many(args)
    image, steps, out, settings = check_edit_args(args)
    pipe, sample_config = make_pipeline(args, settings, resolve_device(args.device))
    current = image
    for number, instruction in enumerate(steps, start=1):
        # derive -> imagine -> sample, each stage with its own progress bar; a next step edits this result
        images = list(current) if number > 1 else [current]
        derivation = pipe.derive(images, [instruction], DeriveConfig(max_new_tokens=args.max_new_tokens),
                                 [args.expressive], callback=None if args.quiet else _progress_bar("derive", "token"))
        expressive = derivation.expressive_instructions[0]
        print(f"{number}. {expressive}" if len(steps) > 1 else expressive)
        imagination = pipe.imagine(derivation)
        output = pipe.sample(current, imagination, sample_config, seed=args.seed,
                             callback=None if args.quiet else _progress_bar("denoise", "step"))
        current = output.images  # (1, 3, H, W): the next step edits the sampler's float pixels
    result = EditResult(tensor_to_pil(output.images), derivation, imagination, output)
    if args.save_intermediates:
        save_intermediates(result, args.save_intermediates)
    save_image_atomic(result.images[0], out)
    logger.info("wrote %s", out)
    return 0


def run_many(args: argparse.Namespace) -> int:
    """Edit a folder, a glob or a manifest into the --out folder; under ``accelerate launch``, with every process."""
    from accelerate import PartialState

    from .batch import plan_images, plan_manifest, run

    out_dir, settings = Path(args.out), check_settings(args)
    if out_dir.suffix.lower() in Image.registered_extensions():
        raise InputError(f"--out {out_dir}: editing several images writes into a folder; give a folder name")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.manifest:
        plan = plan_manifest(Path(args.manifest), out_dir, args.seed, check_instruction(args) if args.instruction else None)
    else:
        plan = plan_images(args.image, check_instruction(args), out_dir, args.seed, args.expressive)
    device = resolve_device(args.device)
    state = PartialState(cpu=device.type == "cpu")  # several processes under accelerate launch
    if not state.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    pipe, sample_config = make_pipeline(args, settings, state.device if state.num_processes > 1 else device)
    summary = run(pipe, plan, out_dir, args.batch_size, DeriveConfig(max_new_tokens=args.max_new_tokens), sample_config,
                  args.overwrite, state, progress=not args.quiet)
    if state.is_main_process:
        print(summary.text())
    leave_process_group()
    return 1 if summary.failures else 0


def _log_settings(config: SampleConfig, recommended: dict) -> None:
    source = {k: "the model's" if k in recommended else "default" for k in ("guidance_scale", "max_side")}
    logger.info("guidance %g (text) / %g (image), %s; images up to %s px, %s", config.guidance_scale,
                config.image_guidance_scale, source["guidance_scale"], config.max_side or "any", source["max_side"])


def load_with_loras(model: str | None, loras: Sequence[str], vision_tower: str | None = None):
    """Load a model and merge ``FILE[:STRENGTH]`` LoRAs into it (each delta computed in fp32, rounded once)."""
    from .formats import apply_lora, load_model
    from .formats.lora import parse_lora_arg

    loaded = load_model(model, vision_tower=vision_tower)
    for spec in loras:
        path, strength = parse_lora_arg(spec)
        apply_lora(loaded, path, strength)
    return loaded


def run_convert(args: argparse.Namespace) -> int:
    from .formats import save_bundle

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


def _progress_bar(stage: str, unit: str):
    """A progress bar for one stage (tqdm ships with transformers); it closes when the stage is done."""
    from tqdm.auto import tqdm

    bar = tqdm(total=1, desc=f"[mgie] {stage}", unit=unit, leave=False, file=sys.stderr)

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
        if hasattr(args, "run"):  # commands declared in their own modules (assemble, check)
            return args.run(args)
        return run_edit(args) if args.command == "edit" else run_convert(args)  # merge = convert with LoRAs
    except SettingError as err:
        sys.stderr.write(f"\nerror: {err.named(FLAGS)}\n")
        return 2
    except MGIEError as err:
        sys.stderr.write(f"\nerror: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted; no file was left half-written (run the same command again to go on)\n")
        return 130
