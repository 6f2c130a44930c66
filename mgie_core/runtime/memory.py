"""How much device memory a plan may use, in one vocabulary for editing and fine-tuning: the size of your card in
GB (any whole number), or ``auto`` for this device's own.

Editing (:func:`mgie_core.runtime.placement.plan_memory`) and fine-tuning (``train/memory.py``) each estimate, from
the model's shapes, what every candidate placement needs, and take the fastest whose estimate fits
:func:`memory_budget`. The margins below are for choosing a plan, not measurements.
"""

from __future__ import annotations

import torch

from .devices import device_memory

HEADROOM = 0.9  # of the card: the allocator's fragmentation, cuBLAS workspaces, the estimates' error
# Working memory on top of the weights: the LLM's activations and KV cache (a few hundred tokens); the UNet's three
# guidance branches with the VAE at 512 px; a training step's loss, the sample edits' denoising and temporaries.
DERIVE_WORKSPACE = 2**29  # 0.5 GiB
SAMPLE_WORKSPACE = 3 * 2**29  # 1.5 GiB
TRAIN_WORKSPACE = 2**29  # 0.5 GiB


def memory_budget(memory_gb: int | None, device: torch.device, total: int | None = None) -> int | None:
    """The bytes a plan may use: :data:`HEADROOM` of the card. ``memory_gb``: its size as given; None (auto): this
    device's memory (``total`` when the caller knows it, as ComfyUI's model management does), or no limit on a CPU."""
    if memory_gb is not None:
        return int(memory_gb * 2**30 * HEADROOM)
    total = total if total is not None else device_memory(device)
    return None if total is None or device.type == "cpu" else int(total * HEADROOM)


def budget_text(memory_gb: int | None, budget: int | None) -> str:
    """The card a plan was made for, as the logs say it."""
    if budget is None:
        return "no memory limit (a CPU)"
    if memory_gb is not None:
        return f"a {memory_gb} GB card ({size_text(budget)} usable)"
    return f"this GPU ({size_text(budget / HEADROOM)}, {size_text(budget)} usable)"


def size_text(count: float) -> str:
    """Bytes as people read them: GiB, MiB or KiB, whichever keeps the figure readable."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count / 2**10:.1f} KiB"
