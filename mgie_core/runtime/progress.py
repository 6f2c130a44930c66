"""Progress and cancellation.

Stages take an optional ``callback(step, total)`` called after every generated token and every
denoising step. It may return ``True`` to cancel (the stage raises :class:`EditCancelled` before
the next step) or raise its own exception (ComfyUI's interruption does), which propagates as is.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import EditCancelled

ProgressCallback = Callable[[int, int], "bool | None"]


def report(callback: ProgressCallback | None, step: int, total: int) -> None:
    """Call ``callback``; stop the stage if it asks to."""
    if callback is not None and callback(step, total):
        raise EditCancelled(f"cancelled at step {step} of {total}")


def offset(callback: ProgressCallback | None, start: int, grand_total: int) -> ProgressCallback | None:
    """A callback for a later stage of a chain: its steps count on from ``start`` out of ``grand_total``."""
    if callback is None:
        return None
    return lambda step, total: callback(start + step, grand_total)
