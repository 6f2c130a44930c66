"""The record of a run of many edits: ``results.jsonl`` beside the outputs, one line per picture written (its
instruction, what it was understood as, its seed, mask, settings and time), and the summary the run ends with.

A later run reads the records to skip what is done (and to refuse outputs left there by another edit); a run killed
between writing a picture and its record, or after a record whose picture did not land, leaves the log consistent
again (:func:`recorded_outputs`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..files import atomic_write
from .plan import Item

RESULTS = "results.jsonl"


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


def append_records(path: Path, lines: list[str]) -> None:
    """Add lines to ``results.jsonl`` (each record is one line, written once its picture is in place)."""
    if lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
