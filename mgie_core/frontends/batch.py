"""Many edits in one run, in batches: the items of a checked plan (:mod:`.plan`), edited, written, recorded
(:mod:`.records`), shared between processes under ``accelerate launch`` (:mod:`.shares`).

Batches have fixed boundaries (batch k is items k*B .. k*B+B-1), and a batch is always edited whole, so an item's
picture does not depend on which items happen to be left: a killed run started again edits only the batches that
lack an output or its record, and ends with the same files as an uninterrupted one. Each item's noise comes from
its own seed. Every item was checked before the model loaded; one that still fails here (its picture changed since,
the disk filled up) is reported and the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from ..config import DeriveConfig, SampleConfig
from ..errors import InputError
from ..files import remove_temporaries
from ..images import fit_mask, load_image, load_mask, save_image_atomic
from ..runner import Edit, Placed, StageProgress, run_edit
from .plan import Item, Plan
from .records import RESULTS, Record, Summary, append_records, check_no_other_edits, recorded_outputs
from .shares import batches, deal


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
            append_records(out_dir / RESULTS, [r.line(settings) for r in everyone if r.status == "done"])
    return summary


def pending(batch: list[Item], done: dict[str, Any], overwrite: bool) -> bool:
    """Whether a batch is edited (again): one of its outputs, or that output's record, is missing."""
    return overwrite or any(str(item.out) not in done for item in batch)


def edit_batch(placed: Placed, batch: list[Item], derive_config: DeriveConfig, sample_config: SampleConfig,
               overwrite: bool, done: dict[str, Any], progress: StageProgress | None = None) -> list[Record]:
    """Edit a batch whole and write the outputs that lack a picture or a record (all of them with ``overwrite``)."""
    began, records = time.time(), []
    ready = load_items(batch, records)
    for group in _size_groups(ready):  # pictures of one size are derived and denoised together
        items = [item for item, _, _ in group]
        edit = Edit(tuple(picture for _, picture, _ in group), (tuple(i.instruction for i in items),),
                    tuple(i.expressive for i in items), tuple(i.seed for i in items), _masks(group))
        try:
            result = run_edit(placed, edit, derive_config, sample_config, progress)[-1]
        except InputError as err:
            records += [Record(item.where, "failed", message=str(err)) for item in items]
            continue
        seconds = (time.time() - began) / max(1, len(ready))
        for item, picture, text in zip(items, result.images, result.expressive_instructions):
            records.append(write(item, picture, text, seconds, skip=str(item.out) in done and not overwrite))
    return records


def write(item: Item, picture, text: str, seconds: float, skip: bool) -> Record:
    """Write one item's picture: its record says done, skipped (it was there), or failed (the write itself failed:
    that item alone)."""
    if skip:
        return Record(item.where, "skipped", str(item.out))
    try:
        save_image_atomic(picture, item.out)
    except (OSError, InputError) as err:
        return Record(item.where, "failed", message=f"cannot write {item.out}: {getattr(err, 'strerror', None) or err}")
    return Record(item.where, "done", str(item.out), "", text, seconds, item)


def load_items(batch: list[Item], records: list[Record]) -> list[tuple[Item, Any, torch.Tensor | None]]:
    """Each item's picture and mask, read again (checked before the model loaded; a file that changed since becomes
    a failed record, and the others go on)."""
    ready = []
    for item in batch:
        try:
            ready.append((item, load_image(item.image), load_mask(item.mask) if item.mask is not None else None))
        except InputError as err:
            records.append(Record(item.where, "failed", message=str(err)))
    return ready


def _masks(group: list[tuple[Item, Any, torch.Tensor | None]]) -> torch.Tensor | None:
    """One mask per picture (all 1 where an item has none), or None when no item has one; at the pictures' size."""
    if all(mask is None for _, _, mask in group):
        return None
    width, height = group[0][1].size
    return torch.cat([fit_mask(mask, (height, width)) if mask is not None else torch.ones(1, 1, height, width)
                      for _, _, mask in group])


def _size_groups(ready: list) -> list[list]:
    groups: dict[tuple[int, int], list] = {}
    for one in ready:
        groups.setdefault(tuple(one[1].size), []).append(one)
    return list(groups.values())
