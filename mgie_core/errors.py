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


class SettingError(InputError):
    """A setting is out of range. ``field`` is the config field's name, so that a front end can name its
    own flag or widget instead (``--steps`` for ``num_inference_steps``)."""

    def __init__(self, field: str, requirement: str, value: object):
        self.field, self.requirement, self.value = field, requirement, value
        super().__init__(f"{field} {requirement}, got {value!r}")

    def named(self, names: dict[str, str]) -> SettingError:
        """The same error, the field called by its name in ``names`` (unchanged where it has none)."""
        renamed = SettingError(names.get(self.field, self.field), self.requirement, self.value)
        return renamed.with_traceback(self.__traceback__)  # still leads to where the check failed


class NonFiniteError(MGIEError):
    """A stage produced NaN or infinite values (the picture would be black): says where, and the likely cause."""
