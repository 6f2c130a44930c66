"""Many edits in one run: the images of a folder or a glob, or a manifest of edits, edited in batches.

Items are cut into batches of fixed boundaries (batch k is items k*B .. k*B+B-1) and every batch is always
edited whole, so an item's picture does not depend on which items happen to be left: a killed run started
again skips the batches whose outputs are all there and ends with the same files as an uninterrupted one.
Each item's noise comes from its own seed. Under ``accelerate launch`` the batches are dealt round-robin to
the processes (one GPU each); each writes its outputs, the main process writes ``results.jsonl`` and the
summary. A manifest is untrusted: its image, mask and out paths must stay inside their folders.
"""

from __future__ import annotations

import glob
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from PIL import Image

from .config import DEFAULT_SEED, DeriveConfig, SampleConfig
from .errors import InputError
from .images import fit_for_vae, fit_mask, load_image, load_mask, save_image_atomic, tensor_to_pil
from .imagine import Imagination
from .pipeline import MGIEPipeline, make_generator
from .sample import sample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MANIFEST_FIELDS = {"image", "instruction", "expressive", "seed", "mask", "out"}
RESULTS = "results.jsonl"


@dataclass(frozen=True)
class Item:
    """One edit of a run. ``where`` names it in messages: the manifest line, or the input file."""

    where: str
    image: Path
    instruction: str
    out: Path
    expressive: str | None = None
    seed: int = DEFAULT_SEED
    mask: Path | None = None


@dataclass
class Plan:
    """The items of a run, and those refused before any work (each "where: what is wrong")."""

    items: list[Item] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def is_many(image: str) -> bool:
    """Whether ``--image`` names several pictures: a folder or a glob pattern."""
    return Path(image).is_dir() or any(c in image for c in "*?[")


def plan_images(source: str, instruction: str, out_dir: Path, seed: int, expressive: str | None = None) -> Plan:
    """Every picture of a folder (its files, in name order) or of a glob, each to ``OUT_DIR/<name>.png``."""
    folder = Path(source)
    paths = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else sorted(
        Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
    paths = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise InputError(f"--image {source}: no pictures there ({', '.join(IMAGE_SUFFIXES)})")
    items = [Item(str(p), p, instruction, out_dir / f"{p.stem}.png", expressive, seed) for p in paths]
    return _unique_outputs(Plan(items))


def plan_manifest(manifest: Path, out_dir: Path, seed: int, instruction: str | None = None) -> Plan:
    """One item per JSON line: ``image`` and ``instruction`` (default ``instruction``), optional ``expressive``,
    ``seed``, ``mask`` and ``out``. Image and mask paths are relative to the manifest, out paths to ``out_dir``."""
    if not manifest.is_file():
        raise InputError(f"--manifest {manifest}: no such file")
    plan = Plan()
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            where = f"{manifest.name}:{number}"
            try:
                plan.items.append(_manifest_item(json.loads(line), where, manifest.parent, out_dir, seed, instruction))
            except (InputError, ValueError) as err:
                plan.refused.append(f"{where}: {err}")
    return _unique_outputs(plan)


def _manifest_item(entry: Any, where: str, root: Path, out_dir: Path, seed: int, default: str | None) -> Item:
    if not isinstance(entry, dict):
        raise InputError('each line must be a JSON object such as {"image": "a.png", "instruction": "..."}')
    unknown = sorted(set(entry) - MANIFEST_FIELDS)
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(unknown)}; a line may hold {', '.join(sorted(MANIFEST_FIELDS))}")
    image = inside(root, entry.get("image"), "image", "the manifest's folder")
    instruction = entry.get("instruction", default)
    if not isinstance(instruction, str) or not instruction.strip():
        raise InputError("the instruction is empty: give one on the line, or --instruction for every line")
    item_seed = entry.get("seed", seed)
    if isinstance(item_seed, bool) or not isinstance(item_seed, int) or item_seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {item_seed!r}")
    expressive = entry.get("expressive")
    if expressive is not None and not isinstance(expressive, str):
        raise InputError(f"expressive must be text, got {expressive!r}")
    out = inside(out_dir, entry.get("out", f"{image.stem}.png"), "out", "the output folder")
    if out.suffix.lower() not in Image.registered_extensions():
        raise InputError(f"out {out.name}: unknown image extension; use .png, .jpg or .webp")
    mask = inside(root, entry["mask"], "mask", "the manifest's folder") if entry.get("mask") is not None else None
    return Item(where, image, instruction, out, expressive or None, item_seed, mask)


def inside(root: Path, name: Any, what: str, called: str) -> Path:
    """``root / name``, refused when it leaves ``root``: an absolute path, ``..``, or a link pointing out."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{what} must be a file name, got {name!r}")
    path = root / name
    if Path(name).is_absolute() or not path.resolve().is_relative_to(root.resolve()):
        raise InputError(f"{what} {name!r} leaves {called} ({root}); give a path inside it")
    return path


def _unique_outputs(plan: Plan) -> Plan:
    """Refuse every item whose output another item also writes (neither could be trusted to be the right one)."""
    owners: dict[Path, list[Item]] = {}
    for item in plan.items:
        owners.setdefault(item.out.resolve(), []).append(item)
    shared = {out for out, items in owners.items() if len(items) > 1}
    for out in sorted(shared):
        names = ", ".join(i.where for i in owners[out])
        plan.refused += [f"{i.where}: its output {out.name} is also another item's ({names}); give each its own"
                         for i in owners[out]]
    plan.items = [i for i in plan.items if i.out.resolve() not in shared]
    return plan


def batches(items: list[Item], size: int) -> list[list[Item]]:
    """Fixed boundaries, whatever is already done: batch k holds items k*size .. k*size + size - 1."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def pending(batch: list[Item], overwrite: bool) -> bool:
    return overwrite or any(not item.out.is_file() for item in batch)


def deal(work: list[list[Item]], rank: int, processes: int) -> Iterator[list[Item] | None]:
    """Round after round, this process's batch (None once the others still have one): every process takes part
    in every round, as gathering the results needs."""
    for start in range(0, len(work), processes):
        yield work[start + rank] if start + rank < len(work) else None


@dataclass
class Record:
    """What became of one item: ``status`` is done, skipped (its output was there) or failed."""

    where: str
    status: str
    out: str = ""
    message: str = ""
    instruction: str = ""
    expressive: str = ""
    seed: int | None = None
    seconds: float = 0.0

    def line(self, settings: dict[str, Any]) -> str:
        return json.dumps({"image": self.where, "out": self.out, "instruction": self.instruction,
                           "expressive": self.expressive, "seed": self.seed, "settings": settings,
                           "seconds": round(self.seconds, 3)})


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    began: float = field(default_factory=time.time)

    def add(self, record: Record) -> None:
        if record.status == "done":
            self.done += 1
        elif record.status == "skipped":
            self.skipped += 1
        else:
            self.failures.append(f"{record.where}: {record.message}")

    def text(self) -> str:
        lines = [f"done {self.done}, skipped {self.skipped} (already there), failed {len(self.failures)}, "
                 f"in {time.time() - self.began:.1f} s"]
        return "\n".join(lines + [f"  failed: {line}" for line in self.failures])


# -- running -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Loaded:
    """An item ready to edit: its picture, its pixels at the sampler's size and its mask fitted to them."""

    item: Item
    image: Image.Image
    pixels: torch.Tensor  # (1, 3, H, W)
    mask: torch.Tensor | None  # (1, 1, H, W)


def load(item: Item, multiple: int, max_side: int) -> Loaded:
    image = load_image(item.image)
    pixels = fit_for_vae(image, multiple, max_side)
    mask = fit_mask(load_mask(item.mask), tuple(pixels.shape[-2:])) if item.mask is not None else None
    return Loaded(item, image, pixels, mask)


def edit_batch(pipe: MGIEPipeline, batch: list[Item], derive_config: DeriveConfig, sample_config: SampleConfig,
               overwrite: bool) -> list[Record]:
    """Edit a batch whole and write the outputs that are missing (all of them with ``overwrite``)."""
    began, records, ready = time.time(), [], []
    for item in batch:
        try:
            ready.append(load(item, pipe.model.vae_scale_factor, sample_config.max_side))
        except InputError as err:
            records.append(Record(item.where, "failed", message=str(err)))
    texts, pictures = _derive_and_sample(pipe, ready, derive_config, sample_config, records)
    seconds = (time.time() - began) / max(1, len(ready))
    for index, one in enumerate(ready):
        item = one.item
        if index not in pictures:
            continue
        if item.out.is_file() and not overwrite:
            records.append(Record(item.where, "skipped", str(item.out)))
            continue
        save_image_atomic(pictures[index], item.out)
        records.append(Record(item.where, "done", str(item.out), "", item.instruction, texts[index], item.seed, seconds))
    return records


def _derive_and_sample(pipe: MGIEPipeline, ready: list[Loaded], derive_config: DeriveConfig,
                       sample_config: SampleConfig, records: list[Record]) -> tuple[list[str], dict[int, Image.Image]]:
    """derive -> imagine -> sample for the loaded items; the pictures by position (an item whose instruction
    cannot be derived is recorded as failed instead)."""
    if not ready:
        return [], {}
    items = [one.item for one in ready]
    try:
        derivation = pipe.derive([one.image for one in ready], [i.instruction for i in items], derive_config,
                                 [i.expressive for i in items])
    except InputError:
        if len(ready) == 1:
            raise
        return _one_at_a_time(pipe, ready, derive_config, sample_config, records)  # find whose words are at fault
    imagination, pictures = pipe.imagine(derivation), {}
    pipe.residency.place("sample")
    for indices in _size_groups(ready):  # the sampler edits pictures of one size together
        chosen = torch.tensor(indices)
        masks = [ready[i].mask for i in indices]
        mask = None if all(m is None for m in masks) else torch.cat(
            [m if m is not None else torch.ones_like(ready[i].pixels[:, :1]) for i, m in zip(indices, masks)])
        m = pipe.model
        out = sample(pipe.sampling_unet, m.vae, m.scheduler_config, torch.cat([ready[i].pixels for i in indices]),
                     Imagination(imagination.imagination[chosen], imagination.null_imagination[chosen]),
                     sample_config, [make_generator(items[i].seed) for i in indices], mask=mask)
        pictures.update(zip(indices, tensor_to_pil(out.images)))
    return list(derivation.expressive_instructions), pictures


def _one_at_a_time(pipe: MGIEPipeline, ready: list[Loaded], derive_config: DeriveConfig, sample_config: SampleConfig,
                   records: list[Record]) -> tuple[list[str], dict[int, Image.Image]]:
    texts, pictures = [""] * len(ready), {}
    for index, one in enumerate(ready):
        try:
            (text,), alone = _derive_and_sample(pipe, [one], derive_config, sample_config, records)
        except InputError as err:
            records.append(Record(one.item.where, "failed", message=str(err)))
            continue
        texts[index], pictures[index] = text, alone[0]
    return texts, pictures


def _size_groups(ready: list[Loaded]) -> list[list[int]]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, one in enumerate(ready):
        groups.setdefault(tuple(one.pixels.shape), []).append(index)
    return list(groups.values())


def run(pipe: MGIEPipeline, plan: Plan, out_dir: Path, batch_size: int, derive_config: DeriveConfig,
        sample_config: SampleConfig, overwrite: bool = False, state: PartialState | None = None,
        progress: bool = True) -> Summary:
    """Edit every pending batch (this process's share of them), gathering what became of each item."""
    state = state or PartialState()
    summary = Summary(failures=list(plan.refused))
    every = batches(plan.items, batch_size)
    work = [b for b in every if pending(b, overwrite)]
    summary.skipped = sum(len(b) for b in every if not pending(b, overwrite))
    state.wait_for_everyone()  # every process has looked at the outputs before any is written
    bar = _bar(len(plan.items), summary.skipped, progress and state.is_main_process)
    settings = vars(sample_config) | {"max_new_tokens": derive_config.max_new_tokens}
    for mine in deal(work, state.process_index, state.num_processes):
        records = edit_batch(pipe, mine, derive_config, sample_config, overwrite) if mine else []
        everyone = gather_object(records) if state.num_processes > 1 else records
        for record in everyone:
            summary.add(record)
        if state.is_main_process:
            _append(out_dir / RESULTS, [r.line(settings) for r in everyone if r.status == "done"])
            bar.update(len(everyone))
    bar.close()
    return summary


def _append(path: Path, lines: list[str]) -> None:
    if lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))


def _bar(total: int, done: int, shown: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="[mgie] edits", unit="edit", disable=not shown, file=sys.stderr)
