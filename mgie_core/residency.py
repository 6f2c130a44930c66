"""Where MGIE's parts live during an edit: all on the device, or staged for a small GPU.

Staged (``low_vram``): the vision tower and the LLM are on the device only while they derive, and
leave it before denoising; the UNet and the VAE are on it only while they sample. The edit head is
small and stays. Parts off the device wait on the CPU; the CUDA cache is emptied after each move,
so the memory a card reserves, not only what it allocates, drops between stages.
"""

from __future__ import annotations

import torch

from .model import MGIEModel, move
from .quant import llm_bytes

STAGES = {"derive": ("mllm",), "sample": ("unet", "vae")}


class Residency:
    def __init__(self, model: MGIEModel, device: torch.device, staged: bool, offload: torch.device | str = "cpu"):
        self.model, self.device, self.offload = model, torch.device(device), torch.device(offload)
        self.staged = staged and self.device != self.offload
        self.current: str | None = None
        parts = model.modules()
        if self.staged:
            move(parts["edit_head"], self.device)
        else:
            for part in parts.values():
                move(part, self.device)

    def place(self, stage: str) -> None:
        """Put the parts ``stage`` (``derive`` or ``sample``) needs on the device, the other stage's off it."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
        if not self.staged or stage == self.current:
            return
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
