"""LLaVA's ``apply_delta`` (LLaVA commit 7ace501, the one Apple used), one block of rows at a time.

LLaVA published LLaVA-Lightning-7B-v1-1 as a difference from Meta's LLaMA-7B. Its script loads both in
fp16 and, for every tensor of the delta:

- the base has it with the same shape: ``delta += base`` (fp16);
- ``model.embed_tokens.weight`` / ``lm_head.weight`` have three more rows in the delta (``<im_patch>``,
  ``<im_start>``, ``<im_end>``): the base is added into the first rows, the extra rows keep the delta's values;
- ``model.mm_projector.*`` is not in the base: taken from the delta as it is (in fp16).

Anything else is an error there, so it is refused here, before any arithmetic, by :func:`check_delta_fits`.
Adding block by block gives the same bits as adding whole tensors: each element is one fp16 addition.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError
from ..formats.keys import IGNORED_SUFFIXES
from .sources import TensorRef

DELTA_DTYPE = torch.float16  # LLaVA's script loads base and delta with torch_dtype=torch.float16
PROJECTOR_KEYS = ("model.mm_projector.weight", "model.mm_projector.bias")
GROWN_KEYS = ("model.embed_tokens.weight", "lm_head.weight")


def merged_ref(delta: TensorRef, base: TensorRef | None) -> TensorRef:
    """The tensor LLaVA's script saves for this delta tensor (``base`` None: taken from the delta as is)."""
    if base is None:
        return delta.cast(DELTA_DTYPE) if delta.dtype != DELTA_DTYPE else delta
    base_rows = base.rows
    base_cols = base.shape[1] if len(base.shape) > 1 else None

    def read(start: int, stop: int) -> torch.Tensor:
        block = delta.read_rows(start, stop).to(DELTA_DTYPE)  # a new tensor: the delta file is never written
        if delta.shape == base.shape:
            block += base.read_rows(start, stop).to(DELTA_DTYPE)
        elif start < base_rows:  # a grown vocabulary: only the rows (and columns) the base has
            count = min(stop, base_rows) - start
            block[:count, :base_cols] += base.read_rows(start, start + count).to(DELTA_DTYPE)
        return block

    return TensorRef(delta.shape, DELTA_DTYPE, f"{delta.piece} + {base.piece}", read)


def apply_delta(delta: dict[str, TensorRef], base: dict[str, TensorRef]) -> dict[str, TensorRef]:
    """LLaVA's merged state dict, lazily, keyed as the delta is (checked with :func:`check_delta_fits` first)."""
    return {name: merged_ref(ref, base.get(name)) for name, ref in delta.items() if not name.endswith(IGNORED_SUFFIXES)}


def check_delta_fits(delta: dict[str, TensorRef], base: dict[str, TensorRef], delta_dir: Path, base_dir: Path) -> None:
    """Refuse, with one line, every delta LLaVA's script would fail on (its asserts) or merge into nonsense."""
    if not all(key in delta for key in PROJECTOR_KEYS):
        raise CheckpointError(f"--llava-delta {delta_dir} has no model.mm_projector weights: it is not a LLaVA delta; "
                              "give the folder of liuhaotian/LLaVA-Lightning-7B-delta-v1-1")
    for name, ref in delta.items():
        if name.endswith(IGNORED_SUFFIXES) or name in PROJECTOR_KEYS:
            continue
        if name not in base:
            raise CheckpointError(f"the LLaVA delta {delta_dir} has {name}, which the LLaMA base {base_dir} lacks: "
                                  "the delta does not fit this base (is --llama LLaMA-7B in the Hugging Face format?)")
        wanted = base[name].shape
        grown = name in GROWN_KEYS and len(wanted) == 2 and ref.shape[1:] == wanted[1:] and ref.shape[0] >= wanted[0]
        if ref.shape != wanted and not grown:
            raise CheckpointError(f"{name} is {list(ref.shape)} in the LLaVA delta {delta_dir} but {list(wanted)} in "
                                  f"the LLaMA base {base_dir}: the delta does not fit this base")
        if not ref.dtype.is_floating_point or not base[name].dtype.is_floating_point:
            raise CheckpointError(f"{name} is not a floating-point tensor in {delta_dir} or {base_dir}: these are "
                                  "not model weights")
