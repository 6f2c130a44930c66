"""The ComfyUI nodes of MGIE: thin wrappers that translate ComfyUI values and call mgie_core."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .derive import MGIEDeriveInstruction
from .edit import MGIEEdit
from .errors import titled_errors
from .imagine import MGIEVisualImagination
from .loader import MGIELoader
from .runtime import register_model_folder
from .sampler import MGIESampler
from .training import MGIESaveLoRA, MGIETrainingPairs, MGIETrainLoRA

NODES: list[type[io.ComfyNode]] = [titled_errors(node) for node in (
    MGIELoader, MGIEDeriveInstruction, MGIEVisualImagination, MGIESampler, MGIEEdit, MGIETrainingPairs, MGIETrainLoRA,
    MGIESaveLoRA)]

register_model_folder()


class MGIEExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
