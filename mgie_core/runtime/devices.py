"""Devices and dtypes: one table of precision names, one rule for "auto".

The CLI, the pipeline, the nodes, training and mgie-mini's recipe all name precisions and pick
devices through here, so a name means the same everywhere.
"""

from __future__ import annotations

import torch

from ..errors import InputError

# What --dtype, the nodes' precision and training's mixed precision may name.
DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
AUTO = "auto"


def resolve_device(name: str | torch.device | None = AUTO) -> torch.device:
    """A torch device; ``auto`` (or None) is the first CUDA GPU when there is one, else the CPU."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:0, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but this torch build sees no CUDA GPU; use --device cpu")
    return device


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str, fp16_ok: bool = True) -> torch.dtype:
    """A torch dtype; ``auto`` (or None) is fp16 on a CUDA GPU (as Apple's demo runs MGIE) and fp32 elsewhere.

    ``fp16_ok=False`` (ComfyUI's verdict on an old GPU, or ``--force-fp32``) keeps ``auto`` at fp32 there too.
    """
    if isinstance(name, torch.dtype):
        return name
    if name is None or name == AUTO:
        return torch.float16 if torch.device(device).type == "cuda" and fp16_ok else torch.float32
    if name not in DTYPES:
        raise InputError(f"dtype {name!r} is not one of {', '.join([AUTO, *DTYPES])}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The table's name of ``dtype`` (fp16, bf16, fp32)."""
    return next(name for name, value in DTYPES.items() if value == dtype)


def leave_process_group() -> None:
    """End a run of several processes (``accelerate launch``): wait for every process, then tear the process group
    down while the interpreter is whole. Left to exit, gloo's worker threads can still hold the tensors of a finished
    gather and free them during interpreter shutdown, which aborts the process (SIGABRT) after its work is done."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
