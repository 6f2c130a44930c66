"""Training pairs for the Train MGIE LoRA node: a folder in fine-tuning's layout (under ComfyUI's input/ or given
whole), or pictures built in the graph, written as such a folder in ComfyUI's temp/. Either way every pair is read
and checked by mgie_core.formats.pairs, the reader train/finetune.py uses, before any training."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

import folder_paths
import numpy as np
import torch
from PIL import Image

from ..mgie_core import InputError
from ..mgie_core.files import atomic_write
from ..mgie_core.formats.pairs import read_triplets
from ..mgie_core.images import save_image_atomic
from ..mgie_core.stages.chain import parse_chain

SHIPPED = Path(__file__).resolve().parents[1] / "images"  # the pack's own example pairs (sepia-pairs)
PAIRS_TOOLTIP = ("A folder of pairs, inside ComfyUI/input or a whole path: input/NAME.png, target/NAME.png (the same "
                 "NAME, any picture type) and NAME.txt (the brief instruction), or a .jsonl manifest of "
                 '{"input", "target", "instruction"} lines. sepia-pairs, the pack\'s example, is found where it '
                 "ships. Leave it empty to give pictures built in the graph.")


@dataclass(frozen=True)
class TrainingPairs:
    """Checked pairs: the folder or manifest that train/finetune.py reads (--data), and how many."""

    data: Path
    count: int

    def describe(self) -> str:
        return f"{self.count} pairs, from {self.data}."


def resolve_pairs(folder: str) -> Path:
    """``folder`` in ComfyUI's input/ directory, or as a whole path, or one of the pack's shipped examples."""
    given = folder.strip()
    if not given:
        raise InputError("no training pairs: give a folder (inside ComfyUI/input, or a whole path), or connect input "
                         "and target pictures built in the graph")
    inside = Path(folder_paths.get_input_directory()) / given
    for path in (inside, Path(given).expanduser(), SHIPPED / given):
        if path.exists():
            return path
    raise InputError(f"training pairs not found: {given} is neither in {folder_paths.get_input_directory()} nor a whole "
                     "path that exists")


def pairs_from_folder(folder: str) -> TrainingPairs:
    return checked(resolve_pairs(folder))


def checked(data: Path) -> TrainingPairs:
    """Every pair read and checked; any bad one refuses them all, each named in a line of its own."""
    report = read_triplets(data)
    if report.skipped:
        raise InputError(f"{len(report.skipped)} of the pairs in {data} cannot train; fix or remove them:\n"
                         + "\n".join(report.skipped))
    return TrainingPairs(data, len(report.triplets))


def pairs_from_images(inputs: torch.Tensor | None, targets: torch.Tensor | None, instructions: str) -> TrainingPairs:
    """Pairs built in the graph: IMAGE batches (B, H, W, C) of inputs and of their targets, and one instruction a line
    (or one for all), written as fine-tuning's folder layout in ComfyUI's temp/, named by their content."""
    if inputs is None or targets is None:
        raise InputError("pairs built in the graph need both input_images and target_images")
    if inputs.shape[0] != targets.shape[0]:
        raise InputError(f"{inputs.shape[0]} input pictures and {targets.shape[0]} targets: give one target each")
    texts = parse_chain(instructions) if instructions.strip() else []
    if len(texts) not in (1, inputs.shape[0]):
        raise InputError(f"{len(texts)} instructions for {inputs.shape[0]} pairs: give one per line for each pair, or "
                         "one for all")
    texts = texts * inputs.shape[0] if len(texts) == 1 else texts
    digest = hashlib.sha256()
    for tensor in (inputs, targets):
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    digest.update("\n".join(texts).encode())
    folder = Path(folder_paths.get_temp_directory()) / f"mgie-pairs-{digest.hexdigest()[:16]}"
    for index, (before, after, text) in enumerate(zip(inputs, targets, texts)):
        name = f"pair-{index:04d}"
        save_image_atomic(_picture(before), folder / "input" / f"{name}.png")
        save_image_atomic(_picture(after), folder / "target" / f"{name}.png")
        with atomic_write(folder / f"{name}.txt") as handle:
            handle.write(text.encode("utf-8"))
    return checked(folder)


def _picture(image: torch.Tensor) -> Image.Image:
    pixels = (image[..., :3].detach().float().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def fingerprint(folder: str) -> str:
    """What the folder holds now (names, sizes, times): a changed folder is read, and trained on, again."""
    try:
        path = resolve_pairs(folder)
    except InputError:
        return ""
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    return hashlib.sha256(repr([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]).encode()).hexdigest()


def run_folder() -> Path:
    """A fresh folder for one training run, in ComfyUI's temp/ (emptied when ComfyUI starts)."""
    return Path(folder_paths.get_temp_directory()) / f"mgie-run-{uuid.uuid4().hex[:12]}"
