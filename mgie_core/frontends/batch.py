"""Many edits in one run: the pictures of a folder or a glob, or a manifest of edits, edited in batches.

Items are cut into batches of fixed boundaries (batch k is items k*B .. k*B+B-1) and every batch is always
edited whole, so an item's picture does not depend on which items happen to be left: a killed run started
again edits only the batches that lack an output or its record, and ends with the same files as an
uninterrupted one. Each item's noise comes from its own seed. Under ``accelerate launch`` the batches are dealt
round-robin to the processes (one GPU each); each writes its outputs, the main process writes ``results.jsonl``
(one record per output picture, whatever crashed before) and the summary. A manifest is untrusted: its image,
mask and out paths must stay inside their folders. Every item is checked (picture, mask, seed, output name)
before the model runs; a bad one is reported by its line or file and the others go on.
"""

from __future__ import annotations

import glob
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from PIL import Image

from ..config import DEFAULT_SEED, DeriveConfig, SampleConfig
from ..errors import InputError
from ..files import atomic_write, remove_temporaries
from ..images import load_image, load_mask, save_image_atomic
from ..runner import Edit, Placed, StageProgress, check_edit, check_seed, run_edit

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
    """Whether ``--image`` names several pictures: a folder, or a glob pattern that is not itself a file's name
    (a file may be called ``photo[1].png``)."""
    path = Path(image)
    return path.is_dir() or (not path.is_file() and any(c in image for c in "*?["))


def plan_images(source: str, instruction: str, out_dir: Path, seed: int, expressive: str | None = None,
                masks: Path | None = None) -> Plan:
    """Every picture of a folder (its files, in name order) or of a glob, each to ``OUT_DIR/<name>.png``; with
    ``masks``, a folder holding each picture's mask under the same name (any picture suffix)."""
    folder = Path(source)
    paths = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else sorted(
        Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
    paths = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise InputError(f"--image {source}: no pictures there ({', '.join(IMAGE_SUFFIXES)})")
    if masks is not None and not masks.is_dir():
        raise InputError(f"--mask {masks}: with a folder of pictures, give a folder of masks of the same names")
    plan = Plan()
    for path in paths:
        mask = _mask_of(path, masks) if masks is not None else None
        if masks is not None and mask is None:
            plan.refused.append(f"{path}: no mask of that name in {masks}")
            continue
        plan.items.append(Item(str(path), path, instruction, out_dir / f"{path.stem}.png", expressive, seed, mask))
    return _unique_outputs(plan)


def _mask_of(picture: Path, masks: Path) -> Path | None:
    return next((masks / (picture.stem + s) for s in (picture.suffix, *IMAGE_SUFFIXES)
                 if (masks / (picture.stem + s)).is_file()), None)


def plan_manifest(manifest: Path, out_dir: Path, seed: int, instruction: str | None = None) -> Plan:
    """One item per JSON line: ``image`` and ``instruction`` (default ``instruction``), optional ``expressive``,
    ``seed``, ``mask`` and ``out``. Image and mask paths are relative to the manifest, out paths to ``out_dir``."""
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
    return _unique_outputs(plan)


def _manifest_item(entry: Any, where: str, root: Path, out_dir: Path, seed: int, default: str | None) -> Item:
    if not isinstance(entry, dict):
        raise InputError('each line must be a JSON object such as {"image": "a.png", "instruction": "..."}')
    unknown = sorted(set(entry) - MANIFEST_FIELDS)
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(unknown)}; a line may hold {', '.join(sorted(MANIFEST_FIELDS))}")
    image = inside(root, entry.get("image"), "image", "the manifest's folder")
    instruction = entry.get("instruction", default)
    if instruction is not None and not isinstance(instruction, str):
        raise InputError(f"instruction must be text, got {instruction!r}")
    if not instruction or not instruction.strip():
        raise InputError("the instruction is empty: give one on the line, or --instruction for every line")
    item_seed = entry.get("seed", seed)
    try:
        check_seed(item_seed)
    except InputError:
        raise InputError(f"seed must be an integer from 0 to 2^64-1, got {item_seed!r}") from None
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
    if "\0" in name:
        raise InputError(f"{what} {name!r} holds a NUL character; give a plain file name")
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


def deal(work: list[list[Item]], rank: int, processes: int) -> Iterator[list[Item] | None]:
    """Round after round, this process's batch (None once the others still have one): every process takes part
    in every round, as gathering the results needs."""
    for start in range(0, len(work), processes):
        yield work[start + rank] if start + rank < len(work) else None


# -- the record of a run -------------------------------------------------------------------------------------
@dataclass
class Record:
    """What became of one item: ``status`` is done, skipped (its output and record were there) or failed."""

    where: str
    status: str
    out: str = ""
    message: str = ""
    expressive: str = ""
    seconds: float = 0.0
    item: Item | None = None

    def line(self, settings: dict[str, Any]) -> str:
        return json.dumps({"image": self.where, "out": self.out, **made_by(self.item), "understood_as": self.expressive,
                           "settings": settings, "seconds": round(self.seconds, 3)})


def made_by(item: Item) -> dict[str, Any]:
    """What makes an item's picture, besides the settings: recorded with it, and compared when a later run
    finds the picture already there."""
    return {"instruction": item.instruction, "expressive_override": item.expressive, "seed": item.seed,
            "mask": item.mask.name if item.mask is not None else None}


def read_records(out_dir: Path) -> dict[str, dict[str, Any]]:
    """The last record in ``results.jsonl`` of each output picture that exists (torn lines dropped)."""
    path = out_dir / RESULTS
    records: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            out = record["out"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(out, str) and Path(out).is_file():
            records.pop(out, None)
            records[out] = record
    return records


def recorded_outputs(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Rewrite ``results.jsonl`` to one record per output picture that exists, and return those records. A run
    killed between writing a picture and its record, or after a record whose picture did not land, leaves the
    log consistent again; a torn last line is dropped."""
    records = read_records(out_dir)
    if (out_dir / RESULTS).is_file():
        with atomic_write(out_dir / RESULTS) as handle:
            handle.write("".join(json.dumps(record) + "\n" for record in records.values()).encode())
    return records


def check_no_other_edits(items: list[Item], out_dir: Path, records: dict[str, dict[str, Any]],
                         settings: dict[str, Any] | None = None) -> None:
    """Refuse a run whose outputs are already there from another edit (another instruction, override, seed, mask
    or, once the model's settings are known, settings): skipping them would keep pictures of the other edit."""
    others = []
    for item in items:
        record = records.get(str(item.out))
        if record is None:
            continue
        wanted = made_by(item) | ({"settings": json.loads(json.dumps(settings))} if settings is not None else {})
        differ = [key for key, value in wanted.items() if key in record and record[key] != value]
        if differ:
            name = item.out.relative_to(out_dir) if item.out.is_relative_to(out_dir) else item.out
            others.append(f"{name} ({', '.join(differ)} differ)")
    if others:
        shown = "; ".join(others[:3]) + (f"; and {len(others) - 3} more" if len(others) > 3 else "")
        raise InputError(f"{len(others)} of the outputs are already in {out_dir} from another edit: {shown}. Give "
                         "another --out, or --overwrite to edit them again")


def pending(batch: list[Item], done: dict[str, Any], overwrite: bool) -> bool:
    return overwrite or any(str(item.out) not in done for item in batch)


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    understood: list[str] = field(default_factory=list)
    began: float = field(default_factory=time.time)

    def add(self, record: Record) -> None:
        if record.status == "done":
            self.done += 1
            self.understood.append(f'{record.where}: "{record.item.instruction}" understood as "{record.expressive}"')
        elif record.status == "skipped":
            self.skipped += 1
        else:
            self.failures.append(f"{record.where}: {record.message}")

    def text(self) -> str:
        lines = [f"done {self.done}, skipped {self.skipped} (already there), failed {len(self.failures)}, "
                 f"in {time.time() - self.began:.1f} s"]
        return "\n".join([*self.understood, *lines, *(f"  failed: {line}" for line in self.failures)])


# -- running -----------------------------------------------------------------------------------------------
def load_items(placed: Placed, batch: list[Item], derive_config: DeriveConfig, sample_config: SampleConfig,
               records: list[Record]) -> list[tuple[Item, Edit]]:
    """Each item as a one-picture edit, checked (picture, mask, instruction, size); a bad one becomes a failed
    record and the others go on."""
    ready = []
    for item in batch:
        try:
            mask = load_mask(item.mask) if item.mask is not None else None
            edit = Edit.of(load_image(item.image), item.instruction, item.expressive, item.seed, mask)
            check_edit(placed, edit, derive_config, sample_config)
        except InputError as err:
            records.append(Record(item.where, "failed", message=str(err)))
            continue
        ready.append((item, edit))
    return ready


def edit_batch(placed: Placed, batch: list[Item], derive_config: DeriveConfig, sample_config: SampleConfig,
               overwrite: bool, done: dict[str, Any], progress: StageProgress | None = None) -> list[Record]:
    """Edit a batch whole and write the outputs that lack a picture or a record (all of them with ``overwrite``)."""
    began, records = time.time(), []
    ready = load_items(placed, batch, derive_config, sample_config, records)
    for sizes in _size_groups(ready):  # pictures of one size are derived and denoised together
        items = [item for item, _ in sizes]
        edit = Edit(tuple(e.images[0] for _, e in sizes), (tuple(i.instruction for i in items),),
                    tuple(i.expressive for i in items), tuple(i.seed for i in items), _masks([e for _, e in sizes]))
        try:
            result = run_edit(placed, edit, derive_config, sample_config, progress)[-1]
        except InputError as err:
            records += [Record(item.where, "failed", message=str(err)) for item in items]
            continue
        seconds = (time.time() - began) / max(1, len(ready))
        for item, picture, text in zip(items, result.images, result.expressive_instructions):
            if str(item.out) in done and not overwrite:
                records.append(Record(item.where, "skipped", str(item.out)))
                continue
            save_image_atomic(picture, item.out)
            records.append(Record(item.where, "done", str(item.out), "", text, seconds, item))
    return records


def _masks(edits: list[Edit]) -> torch.Tensor | None:
    """One mask per picture (all 1 where an item has none), or None when no item has one; at the first mask's size."""
    if all(e.masks is None for e in edits):
        return None
    size = next(e.masks for e in edits if e.masks is not None).shape[-2:]
    return torch.cat([torch.nn.functional.interpolate(e.masks.float(), size=tuple(size), mode="bilinear")
                      if e.masks is not None else torch.ones(1, 1, *size) for e in edits])


def _size_groups(ready: list[tuple[Item, Edit]]) -> list[list[tuple[Item, Edit]]]:
    groups: dict[tuple[int, ...], list[tuple[Item, Edit]]] = {}
    for one in ready:
        groups.setdefault(tuple(one[1].images[0].size), []).append(one)
    return list(groups.values())


def run(placed: Placed, plan: Plan, out_dir: Path, batch_size: int, derive_config: DeriveConfig,
        sample_config: SampleConfig, overwrite: bool = False, state: PartialState | None = None,
        progress: Callable[[int, int], StageProgress | None] | None = None) -> Summary:
    """Edit every pending batch (this process's share of them), gathering what became of each item.
    ``progress(done, total)`` gives the stage callbacks of the batch in progress (the CLI's bars)."""
    state = state or PartialState()
    summary = Summary(failures=list(plan.refused))
    if state.is_main_process:
        remove_temporaries(out_dir)
    state.wait_for_everyone()  # the main process has cleaned up before anyone looks or writes
    done = recorded_outputs(out_dir) if state.is_main_process else {}
    done = gather_object([done])[0] if state.num_processes > 1 else done
    settings = vars(sample_config) | {"max_new_tokens": derive_config.max_new_tokens}
    if not overwrite:
        check_no_other_edits(plan.items, out_dir, done, settings)  # every process decides the same, from the same records
    every = batches(plan.items, batch_size)
    work = [b for b in every if pending(b, done, overwrite)]
    summary.skipped = sum(len(b) for b in every if not pending(b, done, overwrite))
    state.wait_for_everyone()  # every process has looked at the outputs before any is written
    finished = summary.skipped
    for mine in deal(work, state.process_index, state.num_processes):
        stages = progress(finished, len(plan.items)) if progress and mine else None
        records = edit_batch(placed, mine, derive_config, sample_config, overwrite, done, stages) if mine else []
        everyone = gather_object(records) if state.num_processes > 1 else records
        for record in everyone:
            summary.add(record)
        finished += len(everyone)
        if state.is_main_process:
            _append(out_dir / RESULTS, [r.line(settings) for r in everyone if r.status == "done"])
    return summary


def _append(path: Path, lines: list[str]) -> None:
    if lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
