"""Stub of ``comfy.utils.ProgressBar``; every update is recorded, and the server hook's interruption check runs."""

from __future__ import annotations

from . import model_management

updates: list[tuple[int, int]] = []
previews: list = []  # the preview pictures sent with updates


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total, self.current = total, 0

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = value
        model_management.throw_exception_if_processing_interrupted()  # what the server's hook does first
        updates.append((value, self.total))
        if preview is not None:
            previews.append(preview)

    def update(self, value):
        self.update_absolute(self.current + value, self.total)

layouts: list[dict] = []  # every layout unet_to_diffusers was asked for


class _SameNames(dict):
    """Stands in for ComfyUI's diffusers -> LDM name map: every diffusers name maps to itself, prefixed."""

    def __contains__(self, key):
        return True

    def __missing__(self, key):
        return f"ldm:{key}"


def unet_to_diffusers(unet_config):
    layouts.append(dict(unet_config))
    return _SameNames()
