"""Load MGIE keeps the model it loaded last, so that a change of its LoRA (another file, another strength)
re-patches that model's weights (``mgie_core.runtime.lora_patch``) instead of loading the model again.

One model is kept, under the Load MGIE choices that shape it (model, dtype, memory, compile); loading
another forgets it first, so two models are never held at once. Each handle carries the LoRA it was made
with and puts it back on the shared weights before a stage runs (``MGIEHandle.place``), so two Load MGIE
nodes of one model with different LoRAs each edit with their own.
"""

from __future__ import annotations

from typing import Any

_kept: dict[tuple, Any] = {}  # the one (choices -> MGIEHandle) kept


def reuse(choices: tuple, lora: Any, strength: float) -> Any | None:
    """The kept handle for ``choices``, re-patched to ``lora`` at ``strength``; None when there is none."""
    kept = _kept.get(choices)
    return None if kept is None else kept.with_lora(lora, strength)


def keep(choices: tuple, handle: Any) -> Any:
    forget()
    _kept[choices] = handle
    return handle


def forget() -> None:
    """Drop the kept model (before loading another, so that two are never in memory at once)."""
    _kept.clear()
