"""Everything the nodes need from ComfyUI: model folders, devices, model management, progress.

The nodes themselves only translate values; mgie_core never sees any of this.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from torch import nn

from ..mgie_core import CheckpointError, MGIEModel, load_model
from ..mgie_core.config import PlacementSettings
from ..mgie_core.formats import default_model_path, is_apple_layout, read_lora
from ..mgie_core.formats.lora import LoraFile
from ..mgie_core.runtime.compiled import compile_unet
from ..mgie_core.runtime.lora_patch import LoraPatcher
from ..mgie_core.runtime.placement import (
    STAGES,
    PendingPlacement,
    Placement,
    parts_for,
    prepare_weights,
    resolve_placement,
)
from ..mgie_core.runtime.quant import storage_bytes
from . import lora_reuse

logger = logging.getLogger(__name__)

FOLDER = "mgie"
LORA_FOLDER = "mgie_loras"
NO_LORA = "none"
EMBEDDED = "mgie-mini (embedded)"
NONE_FOUND = "(no MGIE model found in models/mgie)"


def register_model_folder() -> None:
    """``ComfyUI/models/mgie`` and ``models/mgie_loras`` (extra_model_paths.yaml may add more first)."""
    for key in (FOLDER, LORA_FOLDER):
        folder_paths.add_model_folder_path(key, os.path.join(folder_paths.models_dir, key))


def model_folders(key: str = FOLDER) -> list[Path]:
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(key)]
    except KeyError:
        return []


def list_loras() -> list[str]:
    names = [p.name for base in model_folders(LORA_FOLDER) if base.is_dir() for p in sorted(base.glob("*.safetensors"))]
    return [NO_LORA, *dict.fromkeys(names)]


def resolve_lora(name: str) -> Path:
    for base in model_folders(LORA_FOLDER):
        if (base / name).is_file():
            return base / name
    looked = ", ".join(str(p) for p in model_folders(LORA_FOLDER)) or "(no mgie_loras folder registered)"
    raise CheckpointError(f"MGIE LoRA {name!r} not found; looked in {looked}. Put the lora.safetensors from "
                          "train/finetune.py there")


def list_models() -> list[str]:
    """Apple-layout folders, bundle files and bundle folders under every ``mgie`` folder."""
    names: list[str] = []
    for base in model_folders():
        if not base.is_dir():
            continue
        for entry in sorted(base.iterdir()):
            if entry.is_dir() and (is_apple_layout(entry) or any(entry.glob("*.safetensors"))):
                names.append(entry.name)
            elif entry.suffix == ".safetensors":
                names.append(entry.name)
    if default_model_path().is_file():
        names.append(EMBEDDED)
    return list(dict.fromkeys(names)) or [NONE_FOUND]


def resolve_model(name: str) -> Path | None:
    """The path of a listed model (None for the embedded default)."""
    if name == EMBEDDED:
        return None
    for base in model_folders():
        path = base / name
        if path.exists():
            return path
    looked = ", ".join(str(p) for p in model_folders()) or "(no mgie folder registered)"
    raise CheckpointError(
        f"MGIE model {name!r} not found; looked in {looked}. Put a bundle made by 'python -m mgie_core assemble' "
        "(or Apple's MGIE folder) there"
    )


# -- devices and model management --------------------------------------------------------------
class Resident(nn.Module):
    """A plain container ComfyUI's ModelPatcher can move (it sets ``.device``; HF modules forbid that)."""

    def __init__(self, **parts: nn.Module):
        super().__init__()
        for name, part in parts.items():
            self.add_module(name, part)

    def get_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


@dataclass
class MGIEHandle:
    """What travels on an MGIE_MODEL link: the model, its placement, and one ModelPatcher per stage of mgie_core's
    table (:data:`~mgie_core.runtime.placement.STAGES`). It is a *placed* model for mgie_core's runner (``model``,
    ``place``, ``sampling_unet``, ``compiled``), with ComfyUI's model management doing the moving."""

    model: MGIEModel
    name: str
    source: Path | None  # the file or folder it was loaded from (None: the embedded mgie-mini)
    placement: Placement
    patchers: dict[str, comfy.model_patcher.ModelPatcher]  # stage -> the ModelPatcher of its parts
    compiled_unet: nn.Module | None = None
    loras: LoraPatcher | None = None  # the LoRA on the weights, changed in place
    lora: tuple[LoraFile | None, float] = (None, 0.0)  # the LoRA and strength this handle edits with

    @property
    def compiled(self) -> bool:
        return self.placement.compile

    @property
    def sampling_unet(self) -> nn.Module:
        """The UNet MGIE Sampler runs: compiled on first use after ``compile`` was chosen (on the GPU it then
        lives on), else the module itself."""
        if not self.compiled:
            return self.model.unet
        if self.compiled_unet is None:
            self.compiled_unet = compile_unet(self.model.unet)
        return self.compiled_unet

    def place(self, stage: str) -> None:
        """Put the parts of ``stage`` (and the resident ones) on the GPU; staged, the other stages' parts leave first."""
        wanted = list(dict.fromkeys(self.patchers[self.stage_of(part)] for part in parts_for(stage)))
        if self.loras is not None:
            self.loras.set(*self.lora)  # another Load MGIE of the same model may have patched another LoRA
        if self.placement.staged:
            for other in set(self.patchers.values()) - set(wanted):
                unload(other)
        mm.load_models_gpu(wanted, force_full_load=True)

    @staticmethod
    def stage_of(part: str) -> str:
        return next(stage for stage, parts in STAGES.items() if part in parts)

    def with_lora(self, lora: LoraFile | None, strength: float) -> MGIEHandle:
        """The same model editing with ``lora`` at ``strength`` (re-patched on the shared weights now, so that the
        MODEL and VAE outputs, which share them, carry it too)."""
        self.loras.set(lora, strength)
        return dataclasses.replace(self, lora=(lora, strength))


def placement_for(settings: PlacementSettings) -> Placement | PendingPlacement:
    """Load MGIE's choices on ComfyUI's device, checked before anything loads; dtype auto follows ComfyUI's verdict
    on whether fp16 suits the GPU."""
    device = mm.get_torch_device()
    return Placement.make(settings, device, fp16_ok=device.type == "cuda" and mm.should_use_fp16(device))


def make_handle(name: str, settings: PlacementSettings, lora: str = NO_LORA) -> MGIEHandle:
    placement = placement_for(settings)  # checked before anything loads
    lora_file = None if lora == NO_LORA else read_lora(resolve_lora(lora))
    choices = (name, settings.dtype, settings.memory, settings.llm_quant, settings.staged, settings.compile)
    reused = lora_reuse.reuse(choices, lora_file, settings.lora_strength)  # only the LoRA changed: no reload
    if reused is not None:
        return reused
    lora_reuse.forget()
    load, offload = mm.get_torch_device(), mm.unet_offload_device()
    source = resolve_model(name)
    model = load_model(source)
    model.fingerprint()  # of the weights as loaded, before the cast: a LoRA names its base model by it
    model.to("cpu")
    if isinstance(placement, PendingPlacement) and placement.memory_gb is None:  # auto: the card ComfyUI sees
        placement = placement.resolve(model, mm.get_total_memory(load))
    placement = resolve_placement(placement, model)
    prepared = prepare_weights(model, placement, home=offload)  # cast, the LLM quantized; ComfyUI moves them
    loras = LoraPatcher(prepared)
    loras.set(lora_file, settings.lora_strength)  # then the LoRA, on the quantized LLM too
    logger.info("MGIE placement: %s", placement.describe())

    def patcher(parts: tuple[str, ...]):
        resident = Resident(**{part: prepared.modules()[part] for part in parts})
        # sized by what the weights take (quantized ones are smaller than they look)
        return comfy.model_patcher.ModelPatcher(resident, load_device=load, offload_device=offload,
                                                size=storage_bytes(resident))

    handle = MGIEHandle(model=prepared, name=name, source=source, placement=placement,
                        patchers={stage: patcher(parts) for stage, parts in STAGES.items()},
                        loras=loras, lora=(lora_file, settings.lora_strength))
    return lora_reuse.keep(choices, handle)


def unload(patcher: comfy.model_patcher.ModelPatcher) -> None:
    """Take ``patcher`` off the GPU now, the way ``free_memory`` does for models it evicts."""
    for index, loaded in enumerate(list(mm.current_loaded_models)):
        if loaded.model is patcher:
            mm.current_loaded_models.pop(index).model_unload()
            mm.soft_empty_cache()
            return


def progress(total: int):
    """A core callback driving ComfyUI's progress bar and honouring Cancel between steps."""
    bar = comfy.utils.ProgressBar(total)

    def callback(step: int, steps: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(step, steps)

    return callback


def intermediate(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(mm.intermediate_device())


def image_to_core(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) -> core pixels (B, 3, H, W), both float in [0, 1]."""
    return image[..., :3].permute(0, 3, 1, 2).float().contiguous()


def image_from_core(pixels: torch.Tensor) -> torch.Tensor:
    """Core pixels (B, 3, H, W) -> ComfyUI IMAGE (B, H, W, 3) on the intermediate device."""
    return intermediate(pixels.permute(0, 2, 3, 1).contiguous())
