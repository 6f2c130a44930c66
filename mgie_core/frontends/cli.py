"""Command line: ``python -m mgie_core edit|convert|merge|assemble|check ...``.

The edit's settings and where the parts live (``--memory``, ``--dtype``, ``--compile`` ...) are flags made from
their one declaration (:class:`mgie_core.config.EditSettings`, :class:`mgie_core.config.PlacementSettings`).
Everything that can be checked is checked before the model loads (:func:`mgie_core.frontends.plan.check_inputs`):
settings, seeds, the pictures, the masks, every output name, the LoRA files. Errors a user can cause print one line
(``error: ...``) and exit with status 2; output files are written through a temporary file and renamed, so a failed
run never leaves a partial file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..config import SETTINGS, EditSettings, PlacementSettings
from ..errors import MGIEError
from ..runtime.devices import DTYPES
from .assemble_cli import add_assemble_command
from .check import add_check_command
from .flags import add_settings, settings_from

logger = logging.getLogger("mgie_core")

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
    add_assemble_command(sub)  # mgie_core/frontends/assemble_cli.py
    add_check_command(sub)  # mgie_core/frontends/check.py
    return parser


def _add_edit(edit: argparse.ArgumentParser) -> None:
    edit.add_argument("--model", help=MODEL_HELP)
    edit.add_argument("--image", help="input picture (PNG, JPEG, WebP, BMP, TIFF); a folder or a glob pattern edits "
                                      "every picture in it (default: none; give it or --manifest)")
    edit.add_argument("--instruction", action="append",
                      help='brief instruction, e.g. "make it look like winter"; given several times, a chain: each '
                           "instruction edits the previous result, and each result is written (OUT-1.png, OUT-2.png, "
                           "... and OUT as the last) (default: none; a manifest's lines may give their own)")
    edit.add_argument("--mask", help="where to edit: a picture with an alpha channel (as ComfyUI's mask editor "
                                     "paints it) is edited where it is transparent; a picture without one where it "
                                     "is white. With a folder of pictures, a folder of masks of the same names (default: "
                                     "none, the whole picture)")
    edit.add_argument("--out", required=True, help="output picture (.png, .jpg, .webp), or the output folder when "
                                                   "editing several pictures")
    edit.add_argument("--keep-size", action="store_true",
                      help="return the input's size (the edit runs at the model's working size, then is resized "
                           "back with Lanczos); default: the size the model edited at")
    edit.add_argument("--manifest", metavar="EDITS.jsonl",
                      help='edit every line: {"image", "instruction", optional "expressive", "seed", "mask", "out"}; '
                           "paths relative to the manifest and to --out (default: none)")
    edit.add_argument("--batch-size", type=int, default=8,
                      help="edits derived and denoised together when editing several pictures (default: %(default)s)")
    edit.add_argument("--overwrite", action="store_true",
                      help="edit again the pictures whose output exists (default: skip them, so a killed run resumes)")
    edit.add_argument("--expressive", help="your own expressive instruction; replaces the derived one (default: derive it)")
    add_settings(edit, EditSettings)
    edit.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                      help="apply a LoRA made by train/finetune.py (repeatable); STRENGTH: "
                           + SETTINGS["lora_strength"].metadata["help"] + f" (default: {SETTINGS['lora_strength'].default:g})")
    add_settings(edit, PlacementSettings, exclude=("lora_strength",))
    edit.add_argument("--vision-tower", help="CLIP folder (default: found from the LLaVA config; Apple's folders only)")
    edit.add_argument("--save-intermediates", metavar="FILE.npz",
                      help="also save token ids, visual tokens, (null) imagination and the expressive instruction "
                           "(default: not saved)")
    edit.add_argument("--quiet", action="store_true", help="no progress bars and no log lines (default: shown)")


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="FILE.safetensors, or a folder for one file per part")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp16", help="stored precision (default: %(default)s)")
    parser.add_argument("--vision-tower", help="CLIP folder (default: found from the LLaVA config; Apple's folders only)")


def run_convert(args: argparse.Namespace) -> int:
    """convert (and merge: convert with LoRAs): the model, each LoRA merged at its strength, as one bundle."""
    from ..formats import apply_lora, load_model, save_bundle
    from ..formats.lora import check_lora_args

    loras = check_lora_args(getattr(args, "lora", []))
    model = load_model(args.model, vision_tower=args.vision_tower)
    for lora, strength in loras:
        apply_lora(model, lora, strength)
    print(save_bundle(model, args.out, dtype=args.dtype))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="[mgie] %(message)s")
    try:
        if hasattr(args, "run"):  # commands declared in their own modules (assemble, check)
            return args.run(args)
        if args.command == "edit":
            from .edit_cli import run_edit_command

            return run_edit_command(args, settings_from(args), settings_from(args, PlacementSettings))
        return run_convert(args)  # merge = convert with LoRAs
    except MGIEError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    except OSError as err:  # the disk filled up or went away while writing: the temporary file is gone
        sys.stderr.write(f"error: cannot write {err.filename or 'the output'}: {err.strerror or err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; no file was left half-written (run the same command again to go on)\n")
        return 130
