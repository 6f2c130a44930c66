"""Load MGIE keeps the model it loaded last, so that a change of its LoRA (another file, another strength)
re-patches that model's weights (``mgie_core.formats.lora_patch``) instead of loading the model again.

One model is kept, under the Load MGIE choices that shape it (model, precision, memory, compile); loading
another forgets it first, so two models are never held at once. Each handle carries the LoRA it was made
with and puts it back on the shared weights before a stage runs (``MGIEHandle.use``), so two Load MGIE
nodes of one model with different LoRAs each edit with their own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

_kept: dict[tuple, Any] = {}  # the one (choices -> MGIEHandle) kept


def reuse(choices: tuple, lora: Any, strength: float) -> Any | None:
    """The kept handle for ``choices``, re-patched to ``lora`` at ``strength``; None when there is none, or
    when its weights cannot be re-patched (a quantized LLM)."""
    kept = _kept.get(choices)
    if kept is None or kept.loras is None:
        return None
    handle = dataclasses.replace(kept, lora=(lora, strength))
    handle.loras.set(lora, strength)  # now, so MODEL and VAE, which share the weights, carry it too
    return handle


def keep(choices: tuple, handle: Any) -> Any:
    forget()
    _kept[choices] = handle
    return handle


def forget() -> None:
    """Drop the kept model (before loading another, so that two are never in memory at once)."""
    _kept.clear()
