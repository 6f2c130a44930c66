"""Where MGIE's parts live during an edit, decided once: device, precision, LLM quantization, staged or resident,
compiled.

:class:`Placement` is that decision, checked when it is made (a 4-bit LLM needs CUDA; compiled graphs need every
part resident). The CLI's ``--memory`` and Load MGIE's *memory* choice both map onto it through :data:`MEMORY`;
``auto`` asks :func:`plan_memory` for the first plan that fits the GPU, from the model's shapes.

Staged: the vision tower and the LLM are on the device only while they derive, and leave it before denoising; the
UNet and the VAE are on it only while they sample. The edit head is small and stays. Parts off the device wait on
the CPU; the CUDA cache is emptied after each move, so the memory a card reserves drops between stages too.
:class:`PlacedModel` carries out a placement for the Python API and the CLI; in ComfyUI the node pack hands the
same stages to ComfyUI's model management instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError
from ..model.mgie import MGIEModel, move
from .compiled import compile_unet
from .devices import resolve_device, resolve_dtype
from .quant import LLM_QUANTS, check_llm_quant, llm_bytes, quantize_llm

logger = logging.getLogger(__name__)

STAGES = {"derive": ("mllm",), "sample": ("unet", "vae")}

# --memory / Load MGIE's memory: key -> (LLM quantization, staged), the label a node shows, and its cost.
MEMORY: dict[str, tuple[tuple[str, bool] | None, str]] = {
    "auto": (None, "auto"),
    "24": (("none", False), "24 GB (fp16, all on the GPU)"),
    "16": (("none", True), "16 GB (fp16, staged)"),
    "8": (("int8", True), "8 GB (int8 LLM, staged)"),
    "6": (("int4", True), "6 GB (4-bit LLM, staged)"),
}
MEMORY_HELP = ("How MGIE-7B fits your GPU. auto: the fastest mode that fits this card (on a CPU, everything as "
               "loaded). 24 GB: every part stays on the GPU. 16 GB: the LLM leaves the GPU before denoising and the "
               "UNet waits off it while the LLM writes (staged). 8 GB: staged, the LLM's linear layers in int8 "
               "(slightly different visual tokens; the CPU can run it too). 6 GB: staged, the LLM in 4 bits (CUDA "
               "only; the LLM computes in bf16; answers may differ more). The LLM is quantized as it loads.")


def memory_key(choice: str) -> str:
    """The key of a memory choice given as a key ("8") or as a node's label ("8 GB (int8 LLM, staged)")."""
    for key, (_, label) in MEMORY.items():
        if choice in (key, label):
            return key
    raise InputError(f"memory {choice!r} is not one of {', '.join(MEMORY)}")


@dataclass(frozen=True)
class Placement:
    """Where the parts live: checked once, here. ``staged`` moves the LLM and the UNet in turn (small GPUs)."""

    device: torch.device
    dtype: torch.dtype
    llm_quant: str = "none"
    staged: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.llm_quant not in LLM_QUANTS:
            raise InputError(f"llm quantization {self.llm_quant!r} is not one of {', '.join(LLM_QUANTS)}")
        check_llm_quant(self.llm_quant, self.device)
        if self.compile and self.staged:
            raise InputError("compile does not go with a staged memory mode (16, 8 or 6 GB): compiled graphs keep the "
                             "parts where they were compiled, staging moves them at every edit; choose compile with "
                             "memory 24 on a card that holds MGIE whole, or turn compile off")

    @classmethod
    def make(cls, device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto",
             memory: str = "auto", compile: bool = False, fp16_ok: bool = True) -> Placement | PendingPlacement:
        """The placement of a memory choice; ``auto`` on a GPU needs the model's shapes (:meth:`PendingPlacement.
        resolve`), everywhere else it is everything as loaded."""
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device, fp16_ok)
        chosen = MEMORY[memory_key(memory)][0]
        if chosen is None and device.type == "cuda":
            return PendingPlacement(device, dtype, compile)
        llm_quant, staged = chosen or ("none", False)
        return cls(device, dtype, llm_quant, staged, compile)

    def describe(self) -> str:
        quant = {"none": "unquantized", "int8": "int8", "int4": "4-bit"}[self.llm_quant]
        where = "all parts resident"
        if self.staged:
            where = "staged" if self.device.type != "cpu" else "staged (nothing to move on a CPU)"
        return (f"{self.device.type} {str(self.dtype).removeprefix('torch.')}, {quant} LLM, {where}"
                f"{', compiled' if self.compile else ''}")


@dataclass(frozen=True)
class PendingPlacement:
    """memory ``auto`` on a GPU: decided once the model's shapes are known."""

    device: torch.device
    dtype: torch.dtype
    compile: bool = False

    def resolve(self, model: MGIEModel, gpu_bytes: int | None = None) -> Placement:
        if gpu_bytes is None:
            gpu_bytes = torch.cuda.get_device_properties(self.device).total_memory
        llm_quant, staged = plan_memory(model, self.dtype, gpu_bytes)
        if self.compile and staged:
            raise InputError(f"compile needs every part on the GPU, but MGIE fits this {gpu_bytes / 2**30:.0f} GiB "
                             "GPU only staged: turn compile off (or choose memory 24 on a larger card)")
        return Placement(self.device, self.dtype, llm_quant, staged, self.compile)


def resolve_placement(placement: Placement | PendingPlacement, model: MGIEModel) -> Placement:
    return placement.resolve(model) if isinstance(placement, PendingPlacement) else placement


class PlacedModel:
    """A model carried out onto a :class:`Placement`: quantized, moved, and staged between the two big stages.

    The edit runner sees MGIE through this interface (``model``, ``place(stage)``, ``sampling_unet``,
    ``compiled``); the node pack's model handle has the same four members, backed by ComfyUI's model management.
    """

    def __init__(self, model: MGIEModel, placement: Placement, offload: torch.device | str = "cpu"):
        self.placement, self.offload = placement, torch.device(offload)
        device = placement.device
        # Quantizing or staging starts from the CPU, so the full-precision LLM is never whole on the GPU.
        home = "cpu" if placement.staged or placement.llm_quant != "none" else device
        self.model = model.to(home, placement.dtype).eval()
        quantize_llm(self.model.mllm.llm, placement.llm_quant, device)
        self.staged = placement.staged and device != self.offload
        self.current: str | None = None
        parts = self.model.modules()
        for name, part in parts.items():
            if not self.staged or name == "edit_head":
                move(part, device)
        self.compiled = placement.compile
        self.sampling_unet: nn.Module = compile_unet(self.model.unet) if placement.compile else self.model.unet

    @property
    def device(self) -> torch.device:
        return self.placement.device

    def place(self, stage: str) -> None:
        """Put the parts ``stage`` (derive, imagine or sample) needs on the device, the other stage's off it."""
        if stage == "imagine" or not self.staged or stage == self.current:
            return
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; one of derive, imagine, sample")
        parts = self.model.modules()
        for other, names in STAGES.items():
            if other != stage:
                for name in names:
                    move(parts[name], self.offload)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        for name in STAGES[stage]:
            move(parts[name], self.device)
        self.current = stage


# Working memory on top of the weights: the LLM's activations and KV cache (a few hundred tokens), and the
# UNet's three guidance branches with the VAE at 512 px. Margins for a default choice, not measurements.
DERIVE_WORKSPACE = 2**29  # 0.5 GiB
SAMPLE_WORKSPACE = 3 * 2**29  # 1.5 GiB


def plan_memory(model: MGIEModel, dtype: torch.dtype, gpu_bytes: int) -> tuple[str, bool]:
    """(llm_quant, staged) for a CUDA GPU of ``gpu_bytes``: every part resident when it all fits, else staged,
    with the LLM in fp16, int8 or 4 bits, the first that fits (the 4-bit staged plan when nothing does)."""
    rest = sum(p.numel() for name in ("edit_head", "unet", "vae")
               for p in model.modules()[name].parameters()) * (torch.finfo(dtype).bits // 8)
    sample = rest + SAMPLE_WORKSPACE
    plans = [("none", False, llm_bytes(model.mllm, dtype, "none") + rest + SAMPLE_WORKSPACE)]
    plans += [(mode, True, max(llm_bytes(model.mllm, dtype, mode) + DERIVE_WORKSPACE, sample))
              for mode in ("none", "int8", "int4")]
    return next(((mode, staged) for mode, staged, need in plans if need <= gpu_bytes), ("int4", True))
