"""MGIE LoRA files: what ``train/finetune.py`` writes, and applying them to a model with a strength.

A LoRA file is a safetensors file with

* ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` and ``mllm.llm.<module>.lora_{A,B}.weight``:
  low-rank adapters (peft layout), merged as ``W += strength * alpha / rank * B @ A``;
* ``edit_head.<key>``: the fine-tuned edit head, and ``visual_rows.embed_tokens`` /
  ``visual_rows.lm_head``: the fine-tuned ``[IMG]`` rows; these full tensors move from the base
  towards the trained values by ``strength`` (1 = trained values exactly);
* metadata: format, rank, alpha, the base model's fingerprint, the training config.

Strength 0 leaves the model untouched (bit-identical); an untrained adapter (B = 0) adds exact zeros.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..errors import CheckpointError, InputError
from ..model import MGIEModel
from ..quant import add_to_quantized, is_quantized, quantization_of
from .aligned import save_aligned, strip_padding

logger = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "mgie-lora", "1"
ADAPTER_PARTS = ("unet.", "mllm.llm.")
ROWS = "visual_rows."


@dataclass(frozen=True)
class LoraFile:
    path: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def scale(self) -> float:
        return float(self.meta["alpha"]) / float(self.meta["rank"])


def parse_lora_arg(text: str) -> tuple[Path, float]:
    """``FILE`` or ``FILE:STRENGTH`` (strength defaults to 1)."""
    path, sep, strength = text.rpartition(":")
    if sep and path and _is_number(strength):
        return Path(path), float(strength)
    return Path(text), 1.0


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def save_lora(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    header = {"format": FORMAT, "format_version": FORMAT_VERSION}
    header.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    return save_aligned({k: v.detach().contiguous() for k, v in tensors.items()}, path, header)


def read_lora(path: str | Path) -> LoraFile:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"LoRA file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = dict(handle.metadata() or {})
        tensors = strip_padding(load_file(str(path)))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); copy it again") from None
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an MGIE LoRA (no '{FORMAT}' header); train one with train/finetune.py")
    meta = {k: (v if k in ("format", "format_version", "base_fingerprint", "base_source") else json.loads(v))
            for k, v in raw.items()}
    return LoraFile(str(path), tensors, meta)


def apply_lora(model: MGIEModel, lora: LoraFile | str | Path, strength: float = 1.0, check_base: bool = True) -> MGIEModel:
    """Merge ``lora`` into ``model`` in place at ``strength`` and return the model."""
    lora = lora if isinstance(lora, LoraFile) else read_lora(lora)
    if not -10.0 <= strength <= 10.0:
        raise InputError(f"LoRA strength must be between -10 and 10, got {strength}")
    base = lora.meta.get("base_fingerprint")
    if check_base and base != model.fingerprint():
        raise CheckpointError(
            f"LoRA {lora.path} was trained on another base model (fingerprint {base}, "
            f"from {lora.meta.get('base_source', '?')}); this model ({model.source}) is {model.fingerprint()}. "
            "Use the model it was trained on"
        )
    if strength == 0:
        logger.info("LoRA %s at strength 0: the model is unchanged", lora.path)
        return model
    with torch.no_grad():
        layers = _merge_adapters(model, lora, strength)
        _blend_full_tensors(model, lora, strength)
    model.info["fingerprint"] = f"{model.fingerprint()}+{Path(lora.path).stem}@{strength:g}"
    logger.info("applied LoRA %s at strength %g (%d adapted layers, the edit head and the [IMG] rows)",
                lora.path, strength, layers)
    return model


def _merge_adapters(model: MGIEModel, lora: LoraFile, strength: float) -> int:
    """Merge every adapter pair into its layer's weight; returns how many layers changed."""
    roots = {"unet.": model.unet, "mllm.llm.": model.mllm.llm}
    merged = 0
    for key, down in lora.tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        prefix = next((p for p in ADAPTER_PARTS if key.startswith(p)), None)
        if prefix is None:
            continue
        module_name = key[len(prefix): -len(".lora_A.weight")]
        up = lora.tensors.get(f"{prefix}{module_name}.lora_B.weight")
        try:
            layer = roots[prefix].get_submodule(module_name)
            weight = layer.weight
        except AttributeError:
            raise CheckpointError(f"{lora.path}: no layer {prefix}{module_name} in this model") from None
        if up is None:
            raise CheckpointError(f"{lora.path}: {key} has no matching lora_B")
        delta = lora_delta(down, up, weight.shape) * (strength * lora.scale)
        if is_quantized(layer):  # an LLM already quantized for a small GPU: merged and quantized again
            add_to_quantized(layer, delta, quantization_of(model.mllm.llm))
        else:
            weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
        merged += 1
    return merged


def lora_delta(down: torch.Tensor, up: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``B @ A`` in the layout of the layer's weight (linear, or a conv with a 1x1 ``B``)."""
    rank = down.shape[0]
    return (up.float().reshape(up.shape[0], rank) @ down.float().reshape(rank, -1)).reshape(shape)


def _blend_full_tensors(model: MGIEModel, lora: LoraFile, strength: float) -> None:
    head = dict(model.edit_head.named_parameters())
    ids = list(model.spec.visual_token_ids)
    rows = {f"{ROWS}embed_tokens": model.mllm.llm.embed_tokens.weight, f"{ROWS}lm_head": model.mllm.lm_head.weight}
    for key, trained in lora.tensors.items():
        if key.startswith("edit_head."):
            target = head.get(key[len("edit_head."):])
            if target is None or target.shape != trained.shape:
                raise CheckpointError(f"{lora.path}: {key} does not fit this model's edit head")
            target.copy_(_blend(target, trained, strength))
        elif key in rows:
            table = rows[key]
            expected = (len(ids), table.shape[1])
            if trained.shape != expected:
                raise CheckpointError(f"{lora.path}: {key} has shape {tuple(trained.shape)}, expected {expected}")
            table[ids] = _blend(table[ids], trained, strength)


def _blend(base: torch.Tensor, trained: torch.Tensor, strength: float) -> torch.Tensor:
    trained = trained.to(base.device)
    if strength == 1:
        return trained.to(base.dtype)
    return (base.float() + strength * (trained.float() - base.float())).to(base.dtype)
