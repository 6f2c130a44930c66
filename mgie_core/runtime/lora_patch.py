"""A LoRA on a loaded model that can be changed without loading the model again.

``LoraPatcher.set(lora, strength)`` puts back the tensors the previous LoRA changed, then merges the new one
with ``apply_lora``: the model then equals a fresh load merged at that strength, bit for bit, and a change of
strength (or of file) costs one merge instead of a model load (for MGIE-7B, minutes). This is what ComfyUI's
ModelPatcher does for its own LoRAs: the originals of the patched tensors are kept aside, on the CPU.

Kept aside: the weights of the adapted layers, the edit head's tensors and the ``[IMG]`` rows of the embedding
and ``lm_head`` (not the whole tables). A layer of a quantized LLM is merged by replacing its quantized weight
(:func:`mgie_core.runtime.quant.add_to_quantized`), so the quantized weight itself is what is kept aside and put back:
the LLM is quantized once, as it loads, and LoRAs come and go on top (the order of
:func:`mgie_core.runtime.placement.prepare_weights`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..formats.lora import ADAPTER_PARTS, ROWS, LoraFile, apply_lora
from ..model.mgie import MGIEModel
from .quant import quantized_tensor

ROW_TABLES = {f"{ROWS}embed_tokens": ("mllm.llm", "embed_tokens.weight"), f"{ROWS}lm_head": ("mllm", "lm_head.weight")}


class LoraPatcher:
    def __init__(self, model: MGIEModel):
        self.model = model
        self.saved: dict[str, torch.Tensor] = {}  # touched tensor (or rows) -> its value before any LoRA, on the CPU
        self.lora: LoraFile | None = None
        self.strength = 0.0
        self._fingerprint = model.info.get("fingerprint")

    def set(self, lora: LoraFile | None, strength: float = 1.0) -> None:
        """Make ``lora`` at ``strength`` the model's only LoRA (None: none). Nothing happens when it already is."""
        if lora is None or strength == 0:
            lora, strength = None, 0.0
        if lora is self.lora and strength == self.strength:
            return
        self.restore()
        if lora is None:
            return
        self._fingerprint = self.model.fingerprint()
        with torch.no_grad():
            for key in _touched_keys(lora):
                try:
                    self.saved[key] = self._keep(key)
                except AttributeError:  # no such layer: apply_lora names it, and what it merged is put back
                    continue
        try:
            apply_lora(self.model, lora, strength)
        except Exception:
            self.restore()
            raise
        self.lora, self.strength = lora, strength

    def restore(self) -> None:
        """Put back every tensor the current LoRA changed: the model as loaded."""
        with torch.no_grad():
            for key, original in self.saved.items():
                if key in ROW_TABLES:
                    table = self._table(key)
                    table[list(self.model.spec.visual_token_ids)] = original.to(table.device, table.dtype)
                elif quantized_tensor(original):  # the quantized weight itself: the layer's own again
                    layer = self._layer(key)
                    layer.weight = nn.Parameter(original.to(layer.weight.device), requires_grad=False)
                else:
                    self._tensor(key).copy_(original)
        self.saved.clear()
        self.lora, self.strength = None, 0.0
        if self._fingerprint is None:
            self.model.info.pop("fingerprint", None)
        else:
            self.model.info["fingerprint"] = self._fingerprint

    def _keep(self, key: str) -> torch.Tensor:
        """What ``key`` holds now, on the CPU: a copy, or a quantized weight itself (a merge replaces it, never
        changes it)."""
        tensor = self._tensor(key)
        if quantized_tensor(tensor):
            return tensor.detach().to("cpu")
        return tensor.detach().to("cpu", copy=True)

    def _layer(self, key: str) -> nn.Module:
        root = next(r for r in ("unet", "mllm.llm") if key.startswith(f"{r}."))
        return self.model_part(root).get_submodule(key[len(root) + 1:].removesuffix(".weight"))

    def _table(self, key: str) -> torch.Tensor:
        root, name = ROW_TABLES[key]
        return self.model_part(root).get_parameter(name)

    def _tensor(self, key: str) -> torch.Tensor:
        """The live tensor a touched key names (for the [IMG] rows: a copy of those rows)."""
        if key in ROW_TABLES:
            return self._table(key)[list(self.model.spec.visual_token_ids)]
        root = next(r for r in ("unet", "mllm.llm", "edit_head") if key.startswith(f"{r}."))
        return self.model_part(root).get_parameter(key[len(root) + 1:])

    def model_part(self, path: str) -> nn.Module:
        part = self.model
        for name in path.split("."):
            part = getattr(part, name)
        return part


def _touched_keys(lora: LoraFile) -> list[str]:
    """The tensors ``apply_lora`` changes, named from the model's root (``unet.<layer>.weight`` ...)."""
    keys = []
    for key in lora.tensors:
        if key.endswith(".lora_A.weight") and key.startswith(ADAPTER_PARTS):
            keys.append(key[: -len(".lora_A.weight")] + ".weight")
        elif key.startswith("edit_head.") or key in ROW_TABLES:
            keys.append(key)
    return keys
