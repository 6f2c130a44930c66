"""Write safetensors files whose tensors start on 64-byte boundaries.

``safetensors.save_file`` packs tensors back to back, so memory-mapped weights land at odd
addresses; CPU kernels then take other code paths and results differ in the last bits from the
same weights loaded any other way. Here every tensor is aligned by inserting ``__pad__.N``
uint8 tensors (the format forbids holes, not extra entries) and padding the JSON header with
spaces, which the format allows. Any safetensors reader loads the result.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..files import atomic_write

ALIGN = 64
PAD_PREFIX = "__pad__."
SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _layout(tensors: dict[str, torch.Tensor]) -> tuple[dict, list[tuple[str, torch.Tensor]]]:
    header: dict = {}
    order: list[tuple[str, torch.Tensor]] = []
    offset = 0
    for index, (name, tensor) in enumerate(tensors.items()):
        gap = -offset % ALIGN
        if gap:
            pad = torch.zeros(gap, dtype=torch.uint8)
            header[f"{PAD_PREFIX}{index}"] = {"dtype": "U8", "shape": [gap], "data_offsets": [offset, offset + gap]}
            order.append((f"{PAD_PREFIX}{index}", pad))
            offset += gap
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise TypeError(f"cannot store {name} of dtype {tensor.dtype} in safetensors")
        size = _nbytes(tensor)
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        order.append((name, tensor))
        offset += size
    return header, order


def save_aligned(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` to ``path`` (through a temporary file, then rename)."""
    path = Path(path)
    header, order = _layout(tensors)
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % ALIGN)  # the data section starts on a boundary too
    with atomic_write(path) as handle:
        handle.write(len(raw).to_bytes(8, "little"))
        handle.write(raw)
        for _, tensor in order:
            data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            handle.write(memoryview(data.numpy()))
    return path


def strip_padding(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if not k.startswith(PAD_PREFIX)}
