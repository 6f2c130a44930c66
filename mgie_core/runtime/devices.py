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
    """A torch device; ``auto`` (or None) picks as ComfyUI does: the first CUDA GPU, else Apple's GPU (MPS), else
    the CPU."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:0, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but this torch build sees no CUDA GPU; use --device cpu")
    if device.type == "mps" and not _mps_available():
        raise InputError("--device mps was asked for but this torch build sees no Apple GPU; use --device cpu")
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def device_memory(device: torch.device) -> int | None:
    """The bytes of memory a device has for MGIE: a CUDA GPU's total, the memory macOS lets Apple's GPU use; None on
    a CPU (no limit is planned for)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        return int(torch.mps.recommended_max_memory())
    return None


def empty_cache(device: torch.device) -> None:
    """Give a GPU's cached, unused blocks back (after parts left it), so the memory it reserves drops too."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


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
