"""The endless, reproducible stream of edit-world training examples that every stage of the recipe draws from.

Edit ``i`` of stream ``seed`` is the same on every machine and every run, so a resumed or repeated stage sees
exactly the batches it saw before; stages draw from streams of their own (different seeds) so that each sees
pictures of its own.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from mgie_core.model.mgie import MGIEModel
from train.objective import Batch, Sample, collate

from . import world


def edit_at(seed: int, index: int) -> world.Edit:
    """Edit number ``index`` of stream ``seed`` (the families in turn)."""
    rng = random.Random(seed * 1_000_003 + index)
    return world.make_edit(rng, world.FAMILIES[index % len(world.FAMILIES)])


def edits_at(seed: int, step: int, batch_size: int) -> list[world.Edit]:
    """The edits of batch ``step`` (the joint stage and the twin draw the same ones)."""
    return [edit_at(seed, step * batch_size + i) for i in range(batch_size)]


def batch_of(model: MGIEModel, edits: list[world.Edit]) -> Batch:
    """``edits`` as a teacher-forced training batch for ``model``'s tokenizer, on the CPU."""
    samples = [Sample(*world.images(e), e.instruction, e.expressive) for e in edits]
    return collate(samples, model, world.SIZE, world.SIZE)


def batch_at(model: MGIEModel, seed: int, step: int, batch_size: int) -> Batch:
    """Training batch ``step`` of stream ``seed``, collated for ``model``."""
    return batch_of(model, edits_at(seed, step, batch_size))


def pictures(edits: list[world.Edit]) -> torch.Tensor:
    """The input and target picture of each edit, interleaved: (2B, 3, 64, 64) in [-1, 1]."""
    arrays = [np.asarray(im, np.float32) / 127.5 - 1 for e in edits for im in world.images(e)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
