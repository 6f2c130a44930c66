"""Tensors read lazily, a block of rows at a time, so that assembling 7B never holds a whole model in memory.

A :class:`TensorRef` knows a tensor's final shape and dtype, which piece it comes from, and how to read
rows ``[start, stop)`` of it. Stored tensors come from safetensors files (the header is parsed here and
the rows read with plain file reads: nothing stays mapped) or from pickles (``torch.load`` memory-maps
them with ``weights_only=True``; after each block is copied out its pages are dropped from this
process, so reading a 10 GB shard does not grow the resident set by 10 GB).
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..formats.aligned import PAD_PREFIX
from ..formats.weights import read_state_dict

RowReader = Callable[[int, int], torch.Tensor]
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
MAX_HEADER = 100 * 2**20  # a safetensors header larger than this is not a header


@dataclass(frozen=True)
class TensorRef:
    """One tensor, not read yet. ``read_rows(start, stop)`` returns rows ``[start, stop)`` along the first
    dimension (the whole tensor for a 0-d one) as a new contiguous tensor of ``dtype``."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    piece: str
    read_rows: RowReader

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def chunks(self, max_bytes: int) -> Iterator[torch.Tensor]:
        """The tensor in blocks of whole rows, each at most ``max_bytes`` (at least one row)."""
        if self.nbytes == 0:
            return
        step = max(1, max_bytes // max(1, self.row_bytes))
        for start in range(0, self.rows, step):
            yield self.read_rows(start, min(start + step, self.rows))

    def head(self, count: int) -> torch.Tensor:
        """The first ``count`` elements, flattened (what a fingerprint probes)."""
        per_row = max(1, math.prod(self.shape[1:]))
        rows = min(self.rows, max(1, -(-count // per_row)))
        return self.read_rows(0, rows).reshape(-1)[:count]

    def cast(self, dtype: torch.dtype | None) -> TensorRef:
        """The same tensor in ``dtype`` (floating tensors only; None keeps it)."""
        if dtype is None or not self.dtype.is_floating_point or dtype == self.dtype:
            return self
        return TensorRef(self.shape, dtype, self.piece, lambda a, b: self.read_rows(a, b).to(dtype))


def meta_tensor(ref: TensorRef) -> torch.Tensor:
    """A shape-only stand-in for code that reads sizes off a state dict."""
    return torch.empty(ref.shape, dtype=ref.dtype, device="meta")


# -- safetensors ----------------------------------------------------------------------------------
def safetensors_refs(path: Path, piece: str) -> dict[str, TensorRef]:
    """Every tensor of a safetensors file, from its header alone (a truncated file is refused here)."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size <= MAX_HEADER:
                raise ValueError("no safetensors header")
            header = json.loads(handle.read(size))
        start, file_size = 8 + size, path.stat().st_size
        refs = {}
        for key, entry in header.items():
            if key == "__metadata__" or key.startswith(PAD_PREFIX):
                continue
            begin, end = (int(x) for x in entry["data_offsets"])
            dtype, shape = SAFETENSORS_DTYPES[entry["dtype"]], tuple(int(n) for n in entry["shape"])
            if start + end > file_size or end - begin != math.prod(shape) * dtype.itemsize:
                raise ValueError(f"{key} lies beyond the end of the file")
            refs[key] = TensorRef(shape, dtype, piece, _file_rows(path, start + begin, shape, dtype))
        return refs
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); it is probably truncated or "
                              "corrupt: download it again") from None


def _file_rows(path: Path, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> RowReader:
    row_bytes = math.prod(shape[1:]) * dtype.itemsize

    def read(start: int, stop: int) -> torch.Tensor:
        rows = (stop - start) if shape else 1
        buffer = bytearray(rows * row_bytes if shape else dtype.itemsize)
        with open(path, "rb") as handle:
            handle.seek(offset + start * row_bytes)
            if handle.readinto(buffer) != len(buffer):
                raise CheckpointError(f"{path} ended early: it is truncated; download it again")
        if not buffer:
            return torch.empty((rows, *shape[1:]), dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape((rows, *shape[1:]) if shape else ())

    return read


# -- pickles ----------------------------------------------------------------------------------------
def pickle_refs(path: Path, piece: str) -> dict[str, TensorRef]:
    """Every tensor of a ``torch.save`` file (memory-mapped when it is a zip archive, as since torch 1.6)."""
    state = read_state_dict(path)
    mapped = zipfile.is_zipfile(path)
    return {key: TensorRef(tuple(t.shape), t.dtype, piece, _mapped_rows(t, mapped)) for key, t in state.items()}


def _mapped_rows(tensor: torch.Tensor, mapped: bool) -> RowReader:
    def read(start: int, stop: int) -> torch.Tensor:
        view = tensor[start:stop] if tensor.dim() else tensor
        block = view.clone(memory_format=torch.contiguous_format)
        if mapped:
            drop_pages(view)
        return block

    return read


_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4
_libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def drop_pages(view: torch.Tensor) -> None:
    """Drop the whole pages under a memory-mapped, contiguous ``view`` from this process's resident set
    (Linux; elsewhere they stay until the file is closed, as reclaimable page cache). The file is only
    read, so a later access reads the pages again from it."""
    if _libc is None or not view.is_contiguous():
        return
    begin = view.data_ptr()
    start = -(-begin // _PAGE) * _PAGE
    stop = (begin + view.numel() * view.element_size()) // _PAGE * _PAGE
    if stop > start:
        _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(stop - start), _MADV_DONTNEED)


# -- weight folders -------------------------------------------------------------------------------
WEIGHT_NAMES = ("{stem}.safetensors", "{stem}.safetensors.index.json", "{stem}.bin", "{stem}.bin.index.json")


def file_refs(path: Path, piece: str) -> dict[str, TensorRef]:
    return safetensors_refs(path, piece) if path.suffix == ".safetensors" else pickle_refs(path, piece)


def folder_refs(folder: Path, stems: tuple[str, ...], piece: str) -> dict[str, TensorRef]:
    """The tensors of a transformers/diffusers folder (one file or shards + index, safetensors preferred)."""
    tried = []
    for stem in stems:
        for pattern in WEIGHT_NAMES:
            name = pattern.format(stem=stem)
            tried.append(name)
            if (folder / name).is_file():
                if name.endswith(".index.json"):
                    return _sharded_refs(folder / name, piece)
                return file_refs(folder / name, piece)
    raise CheckpointError(f"no weights in {folder}: looked for {', '.join(tried)}; download the folder again")


def _sharded_refs(index: Path, piece: str) -> dict[str, TensorRef]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{index} is not a valid shard index ({err}); download it again") from None
    refs: dict[str, TensorRef] = {}
    for shard in shards:
        path = index.parent / shard
        if not path.is_file():
            raise CheckpointError(f"shard {path} named in {index.name} is missing: download every shard into "
                                  f"{index.parent}")
        refs.update(file_refs(path, piece))
    missing = sorted(set(weight_map) - set(refs))
    if missing:
        raise CheckpointError(f"{index}: {len(missing)} tensors listed in the index are in no shard (e.g. "
                              f"{missing[0]}); download the shards again")
    return refs
