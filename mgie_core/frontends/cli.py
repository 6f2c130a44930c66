"""Command line: ``python -m mgie_core edit|convert|merge|assemble|check ...``.

The edit's settings are flags made from their one declaration (:class:`mgie_core.config.EditSettings`); where
the parts live is ``--memory`` and ``--compile``, made into one :class:`mgie_core.runtime.placement.Placement`. Everything
that can be checked is checked before the model loads: settings, seed, the pictures, the mask, the output
location, the LoRA files. Errors a user can cause print one line (``error: ...``) and exit with status 2; output
files are written through a temporary file and renamed, so a failed run never leaves a partial file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import fields

from ..config import AUTO, EditSettings
from ..errors import MGIEError, SettingError
from ..formats.assemble.command import add_assemble_command
from ..runtime.devices import DTYPES
from ..runtime.placement import MEMORY
from .check import add_check_command

logger = logging.getLogger("mgie_core")

MODEL_HELP = "Apple's MGIE root folder or an MGIE .safetensors bundle (default: the embedded mgie-mini)"
FLAGS = {f.name: f.metadata["flag"] or "--" + f.name.replace("_", "-") for f in fields(EditSettings)}


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
    add_assemble_command(sub)  # mgie_core/formats/assemble/command.py
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
    for declared in fields(EditSettings):
        _add_setting(edit, declared)
    edit.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                      help="apply a LoRA made by train/finetune.py (repeatable; strength defaults to 1)")
    edit.add_argument("--device", default=AUTO, help="cpu, cuda, cuda:1, mps ... (default: cuda if there is one)")
    edit.add_argument("--dtype", choices=(AUTO, *DTYPES), default=AUTO,
                      help="precision (default: fp16 on CUDA, fp32 elsewhere)")
    edit.add_argument("--memory", choices=list(MEMORY), default="auto",
                      help="the GPU's size in GB, as Load MGIE's memory choice: 24 every part on the GPU; 16 staged "
                           "(the LLM and the UNet take turns on it); 8 staged with an int8 LLM (the CPU runs int8 "
                           "too); 6 staged with a 4-bit LLM (CUDA only); auto picks the fastest that fits "
                           "(default: %(default)s)")
    edit.add_argument("--compile", action="store_true",
                      help="torch.compile decoding and denoising (CUDA graphs on a GPU); the first edit at each size "
                           "compiles, the next ones are faster (every part resident: memory 24 or auto)")
    edit.add_argument("--vision-tower", help="CLIP folder (default: found from the LLaVA config; Apple's folders only)")
    edit.add_argument("--save-intermediates", metavar="FILE.npz",
                      help="also save token ids, visual tokens, (null) imagination and the expressive instruction "
                           "(default: not saved)")
    edit.add_argument("--quiet", action="store_true", help="no progress bars and no log lines (default: shown)")


def _add_setting(parser: argparse.ArgumentParser, declared) -> None:
    meta = declared.metadata
    kwargs = {"default": declared.default, "help": meta["help"] + " (default: %(default)s)"}
    if meta["choices"]:
        kwargs["choices"] = meta["choices"]
    else:
        kwargs["type"] = _number(int if declared.type == "int" else float, meta["auto"])
        kwargs["metavar"] = "N"
    parser.add_argument(FLAGS[declared.name], dest=declared.name, **kwargs)


def _number(kind: type, auto: bool):
    def parse(text: str):
        if auto and text == AUTO:
            return kind(0)
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}"
                                             f"{' (or auto)' if auto else ''}") from None
    return parse


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="FILE.safetensors, or a folder for one file per part")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp16", help="stored precision (default: %(default)s)")
    parser.add_argument("--vision-tower", help="CLIP folder (default: found from the LLaVA config; Apple's folders only)")


def settings_from(args: argparse.Namespace) -> EditSettings:
    """The edit's settings, checked; an out-of-range value is reported by its flag."""
    try:
        return EditSettings(**{f.name: getattr(args, f.name) for f in fields(EditSettings)})
    except SettingError as err:
        raise err.named(FLAGS) from None


def run_convert(args: argparse.Namespace) -> int:
    from ..formats import save_bundle
    from ..formats.lora import check_lora_args
    from .edit_cli import load_with_loras

    loras = check_lora_args(getattr(args, "lora", []))
    path = save_bundle(load_with_loras(args.model, loras, args.vision_tower), args.out, dtype=args.dtype)
    print(path)
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

            return run_edit_command(args, settings_from(args))
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
