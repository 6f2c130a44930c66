"""Write a bundle tensor by tensor: the header first (every shape is known from the plan), then each
tensor's bytes in blocks of rows, through a temporary file renamed at the end (a failed run leaves no file).

The layout is :mod:`mgie_core.formats.aligned`'s: tensors start on 64-byte boundaries, the gaps filled by
``__pad__.N`` uint8 entries, the header padded with spaces, so the file is byte for byte what
``save_aligned`` writes for the same tensors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..files import atomic_write
from ..formats.aligned import ALIGN, PAD_PREFIX, SAFETENSORS_DTYPES
from .progress import byte_bar
from .sources import TensorRef

BLOCK_BYTES = 16 * 2**20  # rows read, added and written together: the memory the tensors take at once


def layout(tensors: dict[str, TensorRef]) -> tuple[dict, list[tuple[str, TensorRef | int]]]:
    """The safetensors header and the write order: (name, ref) for tensors, (pad name, byte count) for gaps."""
    header: dict = {}
    order: list[tuple[str, TensorRef | int]] = []
    offset = 0
    for index, (name, ref) in enumerate(tensors.items()):
        gap = -offset % ALIGN
        if gap:
            header[f"{PAD_PREFIX}{index}"] = {"dtype": "U8", "shape": [gap], "data_offsets": [offset, offset + gap]}
            order.append((f"{PAD_PREFIX}{index}", gap))
            offset += gap
        header[name] = {"dtype": SAFETENSORS_DTYPES[ref.dtype], "shape": list(ref.shape),
                        "data_offsets": [offset, offset + ref.nbytes]}
        order.append((name, ref))
        offset += ref.nbytes
    return header, order


def encode_header(header: dict, metadata: dict[str, str]) -> bytes:
    raw = json.dumps({**header, "__metadata__": dict(metadata)}, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % ALIGN)  # the data section starts on a boundary too
    return len(raw).to_bytes(8, "little") + raw


def write_streamed(tensors: dict[str, TensorRef], metadata: dict[str, str], out: Path, progress: bool = True,
                   block_bytes: int | None = None) -> Path:
    """Write ``tensors`` (read in blocks of ``block_bytes``, default :data:`BLOCK_BYTES`) and ``metadata`` as one
    aligned safetensors file at ``out``."""
    block_bytes = block_bytes or BLOCK_BYTES
    header, order = layout(tensors)
    head = encode_header(header, metadata)
    total = len(head) + sum(ref.nbytes if isinstance(ref, TensorRef) else ref for _, ref in order)
    _check_room(out, total)
    with atomic_write(out) as handle, byte_bar(total, "assembling", progress) as bar:
        handle.write(head)
        bar.update(len(head))
        done = 0
        for _, ref in order:
            if not isinstance(ref, TensorRef):
                handle.write(bytes(ref))
                bar.update(ref)
                continue
            done += 1
            bar.set_description(f"[mgie] {ref.piece}", refresh=False)
            bar.set_postfix_str(f"tensor {done}/{len(tensors)}", refresh=False)
            for block in ref.chunks(block_bytes):
                handle.write(_as_bytes(block))
                bar.update(block.numel() * block.element_size())
    return out


def _as_bytes(block: torch.Tensor) -> memoryview:
    return memoryview(block.contiguous().reshape(-1).view(torch.uint8).numpy())


def _check_room(out: Path, size: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < size:
        raise CheckpointError(f"--out {out}: the bundle takes {size / 1e9:.1f} GB, {out.parent} has {free / 1e9:.1f} GB "
                              "free: make room or write it elsewhere")
