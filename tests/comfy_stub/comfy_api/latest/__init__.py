"""Stub of ``comfy_api.latest``: ComfyExtension, io and ui."""

from abc import ABC, abstractmethod

from . import _io as io  # noqa: F401
from . import _ui as ui  # noqa: F401


class ComfyExtension(ABC):
    async def on_load(self) -> None:  # noqa: B027 - optional hook, as in ComfyUI
        return None

    @abstractmethod
    async def get_node_list(self) -> list:
        ...
