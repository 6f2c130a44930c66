"""Exceptions raised by mgie_core.

Every error a user can cause says *what* is wrong, *where* (file, argument) and *what to do*,
in one line, so that the CLI and ComfyUI can show it as is.
"""

from __future__ import annotations


class MGIEError(Exception):
    """Base class of every error mgie_core raises on purpose."""


class CheckpointError(MGIEError):
    """A model folder or weight file is missing, has the wrong layout, or is corrupt."""


class InputError(MGIEError, ValueError):
    """An image, instruction or argument given by the user cannot be used."""


class EditCancelled(MGIEError):
    """The progress callback asked to stop; raised between two steps."""
