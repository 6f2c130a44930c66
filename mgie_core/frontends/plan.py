"""What a run will edit, planned and checked before the model loads.

A plan is a list of items, each one picture with its instruction (or, for one picture, a chain of them), seed,
optional mask and output file(s): one item for ``--image FILE``, one per picture of a folder or a glob, one per line
of a manifest. :func:`check_inputs` is the one check every item passes before any model loads, whatever made the
plan: it opens the picture and the mask, checks the seed and the instructions, and tries every output name where
it will be written (its length and characters, the folder's permissions, an output that would replace an input or
another item's output). A bad item is refused with its line or file name, and the others go on.

A manifest is untrusted: its image, mask and out paths must stay inside their folders.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DEFAULT_SEED
from ..errors import InputError
from ..files import check_writable
from ..images import PICTURE_SUFFIXES, check_output_name, load_mask, read_picture
from ..runner import check_seed
from ..stages.prompt import check_text

MANIFEST_FIELDS = {"image", "instruction", "expressive", "seed", "mask", "out"}


@dataclass(frozen=True)
class Item:
    """One picture's edit. ``where`` names it in messages (the manifest line, or the input file); ``chain`` holds
    its instruction, or a chain of them (each edits the previous result), with one output each in ``outs``."""

    where: str
    image: Path
    chain: tuple[str, ...]
    outs: tuple[Path, ...]
    expressive: str | None = None
    seed: int = DEFAULT_SEED
    mask: Path | None = None

    @property
    def instruction(self) -> str:
        return self.chain[0]

    @property
    def out(self) -> Path:
        return self.outs[-1]


@dataclass
class Plan:
    """The items of a run, those refused before any work (each "where: what is wrong"), and what to say first
    (notices: an empty mask, an animated picture)."""

    items: list[Item] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def plan_one(image: str, chain: list[str], out: Path, seed: int, expressive: str | None = None,
             mask: str | None = None) -> Plan:
    """One picture: one instruction, or a chain whose results go to OUT-1.png .. OUT-(n-1).png and OUT."""
    outs = [out.with_name(f"{out.stem}-{k}{out.suffix}") for k in range(1, len(chain))] + [out]
    return Plan([Item(image, Path(image), tuple(chain), tuple(outs), expressive, seed, Path(mask) if mask else None)])


def is_many(image: str) -> bool:
    """Whether ``--image`` names several pictures: a folder, or a glob pattern that is not itself a file's name
    (a file may be called ``photo[1].png``)."""
    path = Path(image)
    return path.is_dir() or (not path.exists() and any(c in image for c in "*?["))


def plan_images(source: str, instruction: str, out_dir: Path, seed: int, expressive: str | None = None,
                masks: Path | None = None) -> Plan:
    """Every picture of a folder (its files, in name order) or of a glob, each to ``OUT_DIR/<name>.png``; with
    ``masks``, a folder holding each picture's mask under the same name (any picture suffix)."""
    folder = Path(source)
    paths = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else sorted(
        Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
    paths = [p for p in paths if p.suffix.lower() in PICTURE_SUFFIXES]
    if not paths:
        raise InputError(f"--image {source}: no pictures there ({', '.join(PICTURE_SUFFIXES)})")
    if masks is not None and not masks.is_dir():
        raise InputError(f"--mask {masks}: with a folder of pictures, give a folder of masks of the same names")
    plan = Plan()
    for path in paths:
        mask = _mask_of(path, masks) if masks is not None else None
        if masks is not None and mask is None:
            plan.refused.append(f"{path}: no mask of that name in {masks}")
            continue
        plan.items.append(Item(str(path), path, (instruction,), (out_dir / f"{path.stem}.png",), expressive, seed, mask))
    return plan


def _mask_of(picture: Path, masks: Path) -> Path | None:
    return next((masks / (picture.stem + s) for s in (picture.suffix, *PICTURE_SUFFIXES)
                 if (masks / (picture.stem + s)).is_file()), None)


def plan_manifest(manifest: Path, out_dir: Path, seed: int, instruction: str | None = None) -> Plan:
    """One item per JSON line: ``image`` and ``instruction`` (default ``instruction``), optional ``expressive``,
    ``seed``, ``mask`` and ``out``. Image and mask paths are relative to the manifest, out paths to ``out_dir``."""
    if manifest.is_dir():
        raise InputError(f"--manifest {manifest} is a folder; give the .jsonl file, one edit per line")
    if not manifest.is_file():
        raise InputError(f"--manifest {manifest}: no such file")
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as err:
        raise InputError(f"--manifest {manifest}: cannot read it as UTF-8 text ({err})") from None
    plan = Plan()
    for number, line in enumerate(lines, start=1):
        if line.strip():
            where = f"{manifest.name}:{number}"
            try:
                plan.items.append(_manifest_item(json.loads(line), where, manifest.parent, out_dir, seed, instruction))
            except ValueError as err:  # InputError, or JSON that does not parse
                plan.refused.append(f"{where}: {err}")
    if not plan.items and not plan.refused:
        plan.notices.append(f"{manifest} holds no edits, so there is nothing to do (one JSON object per line, such as "
                            '{"image": "a.png", "instruction": "make it look like winter"})')
    return plan


def _manifest_item(entry: Any, where: str, root: Path, out_dir: Path, seed: int, default: str | None) -> Item:
    if not isinstance(entry, dict):
        raise InputError('each line must be a JSON object such as {"image": "a.png", "instruction": "..."}')
    unknown = sorted(set(entry) - MANIFEST_FIELDS)
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(unknown)}; a line may hold {', '.join(sorted(MANIFEST_FIELDS))}")
    image = inside(root, entry.get("image"), "image", "the manifest's folder")
    instruction = entry.get("instruction", default)
    if instruction is None:
        raise InputError("the instruction is empty: give one on the line, or --instruction for every line")
    expressive = entry.get("expressive")
    if expressive is not None:
        check_text(expressive, "expressive")
    out = inside(out_dir, entry.get("out", f"{image.stem}.png"), "out", "the output folder")
    mask = inside(root, entry["mask"], "mask", "the manifest's folder") if entry.get("mask") is not None else None
    return Item(where, image, (instruction,), (out,), expressive or None, entry.get("seed", seed), mask)


def inside(root: Path, name: Any, what: str, called: str) -> Path:
    """``root / name``, refused when it leaves ``root``: an absolute path, ``..``, or a link pointing out."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{what} must be a file name, got {name!r}")
    if "\0" in name:
        raise InputError(f"{what} {name!r} holds a NUL character; give a plain file name")
    path = root / name
    if Path(name).is_absolute() or not path.resolve().is_relative_to(root.resolve()):
        raise InputError(f"{what} {name!r} leaves {called} ({root}); give a path inside it")
    return path


# -- the check ----------------------------------------------------------------------------------------------
def check_inputs(plan: Plan, overwrite: bool = False, out_flag: str = "out") -> Plan:
    """Check every item before any model loads (see the module's docstring): the bad ones move to
    ``plan.refused``, with what is wrong; what is worth saying about the good ones goes to ``plan.notices``."""
    good = []
    for item in plan.items:
        try:
            plan.notices += [f"{item.where}: {note}" for note in check_item(item, overwrite, out_flag)]
        except InputError as err:
            plan.refused.append(f"{item.where}: {err}")
            continue
        good.append(item)
    plan.items = good
    _refuse_shared(plan, overwrite)
    return plan


def check_item(item: Item, overwrite: bool = False, out_flag: str = "out") -> list[str]:
    """One item's check (raises :class:`InputError`); returns its notices. ``out_flag``: what the output is called
    in messages (``--out`` for the command's one picture, ``out`` for a manifest's lines)."""
    picture, frames = read_picture(item.image)
    notices = [f"the picture is animated ({frames} frames): its first frame is edited."] if frames > 1 else []
    if item.mask is not None and float(load_mask(item.mask).max()) <= 0:
        notices.append(f"the mask {item.mask.name} is empty (nothing marked to edit): the picture comes back "
                       "unchanged.")
    check_seed(item.seed)
    for text in (*item.chain, *([item.expressive] if item.expressive else [])):
        check_text(text, "instruction" if text in item.chain else "expressive")
    inputs = {p.resolve() for p in (item.image, item.mask) if p is not None}
    for out in item.outs:
        check_writable(out, out_flag, needed=3 * picture.width * picture.height + 2**20)
        check_output_name(out, out_flag)
        if out.resolve() in inputs and not overwrite:
            raise InputError(f"{out_flag} {out} is the input {'mask' if out.resolve() != item.image.resolve() else 'picture'}: "
                             "the edit would replace it; choose another name (or give --overwrite to replace it)")
    return notices


def _refuse_shared(plan: Plan, overwrite: bool) -> None:
    """Refuse every item whose output another item also writes, or that is another item's input (neither could be
    trusted to be the right one)."""
    owners: dict[Path, list[Item]] = {}
    for item in plan.items:
        for out in item.outs:
            owners.setdefault(out.resolve(), []).append(item)
    inputs = {p.resolve(): item for item in plan.items for p in (item.image, item.mask) if p is not None}
    bad: dict[str, str] = {}
    for out, items in owners.items():
        if len(items) > 1:
            names = ", ".join(i.where for i in items)
            bad.update({i.where: f"its output {out.name} is also another item's ({names}); give each its own"
                        for i in items})
        elif out in inputs and inputs[out] is not items[0] and not overwrite:
            bad[items[0].where] = f"its output {out.name} is {inputs[out].where}'s input; give another name"
    plan.refused += [f"{where}: {why}" for where, why in bad.items()]
    plan.items = [i for i in plan.items if i.where not in bad]
