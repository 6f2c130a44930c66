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
from torch import nn

from ..config import SETTINGS, check_setting
from ..errors import CheckpointError, InputError, SettingError
from ..model.mgie import MGIEModel
from ..runtime.quant import add_to_quantized, is_quantized, quantization_of
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
    if sep and path and Path(path).exists() and not Path(text).exists():
        raise InputError(f"--lora {text}: the strength after ':' must be a number, got {strength!r}")
    return Path(text), SETTINGS["lora_strength"].default


def check_lora_args(specs: list[str]) -> list[tuple[LoraFile, float]]:
    """Every ``FILE[:STRENGTH]`` read and checked (see :func:`read_lora`) before any model loads."""
    loras = []
    for spec in specs:
        path, strength = parse_lora_arg(spec)
        check_strength(strength)
        loras.append((read_lora(path), strength))
    return loras


def check_strength(strength: float) -> None:
    """A LoRA's strength against its declaration (:class:`mgie_core.config.PlacementSettings`)."""
    try:
        check_setting(SETTINGS["lora_strength"], strength)
    except SettingError as err:
        raise err.named({"lora_strength": "LoRA strength"}) from None


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
    if path.is_dir():
        raise CheckpointError(f"LoRA {path} is a folder; give the LoRA's .safetensors file (train/finetune.py writes "
                              f"{path / 'lora.safetensors'})")
    if not path.exists():
        raise CheckpointError(f"LoRA file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = dict(handle.metadata() or {})
        tensors = strip_padding(load_file(str(path)))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); copy it again") from None
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an MGIE LoRA (no '{FORMAT}' header); train one with train/finetune.py")
    try:
        meta = {k: (v if k in ("format", "format_version", "base_fingerprint", "base_source") else json.loads(v))
                for k, v in raw.items()}
    except ValueError as err:
        raise CheckpointError(f"{path}: its metadata is not valid JSON ({err}); the file is damaged, train or copy "
                              "it again") from None
    lora = LoraFile(str(path), tensors, meta)
    check_lora(lora)
    return lora


def check_lora(lora: LoraFile) -> None:
    """What a LoRA file must hold to be merged safely: rank and alpha, each adapter's A and B with that rank, and
    finite values only (a NaN would turn every edit black)."""
    where = lora.path
    for key in ("rank", "alpha"):
        value = lora.meta.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise CheckpointError(f"{where}: its metadata must give a positive {key}, got {value!r}; the file is "
                                  "damaged or not from train/finetune.py")
    rank = lora.meta["rank"]
    for key, tensor in lora.tensors.items():
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{where}: {key} holds NaN or infinite values; the training diverged or the file "
                                  "is damaged: use an earlier checkpoint's LoRA")
        if key.endswith(".lora_A.weight"):
            up = lora.tensors.get(key.replace(".lora_A.", ".lora_B."))
            if up is None:
                raise CheckpointError(f"{where}: {key} has no matching lora_B; the file is damaged")
            if tensor.ndim < 2 or up.ndim < 2 or tensor.shape[0] != rank or up.shape[1] != rank:
                raise CheckpointError(f"{where}: {key} has rank {tensor.shape[0]} and its lora_B rank "
                                      f"{up.shape[1] if up.ndim > 1 else '?'}, the metadata says {rank:g}; the file is "
                                      "damaged")
        elif key.endswith(".lora_B.weight") and key.replace(".lora_B.", ".lora_A.") not in lora.tensors:
            raise CheckpointError(f"{where}: {key} has no matching lora_A; the file is damaged")


def apply_lora(model: MGIEModel, lora: LoraFile | str | Path, strength: float = 1.0, check_base: bool = True) -> MGIEModel:
    """Merge ``lora`` into ``model`` in place at ``strength`` and return the model."""
    lora = lora if isinstance(lora, LoraFile) else read_lora(lora)
    check_strength(strength)
    base = lora.meta.get("base_fingerprint")
    if check_base and base != model.fingerprint():
        raise CheckpointError(
            f"LoRA {lora.path} was trained on another base model (fingerprint {base}, "
            f"from {lora.meta.get('base_source', '?')}); this model ({model.source}) is {model.fingerprint()}. "
            "Use the model it was trained on"
        )
    targets = lora_targets(model, lora)  # every layer and shape checked before any weight changes
    if strength == 0:
        logger.info("LoRA %s at strength 0: the model is unchanged", lora.path)
        return model
    with torch.no_grad():
        _check_merged(model, targets, lora, strength)  # every layer, before any weight changes
        layers = _merge_adapters(model, targets, lora, strength)
        _blend_full_tensors(model, lora, strength)
    model.info["fingerprint"] = f"{model.fingerprint()}+{Path(lora.path).stem}@{strength:g}"
    logger.info("applied LoRA %s at strength %g (%d adapted layers, the edit head and the [IMG] rows)",
                lora.path, strength, layers)
    return model


def lora_targets(model: MGIEModel, lora: LoraFile) -> dict[str, nn.Module]:
    """The weight each adapter merges into, by its lora_A key; refused unless every adapter and full tensor fits
    its layer exactly (the same shapes, not only as many elements)."""
    roots = {"unet.": model.unet, "mllm.llm.": model.mllm.llm}
    targets = {}
    for key, down in lora.tensors.items():
        if key.endswith(".lora_A.weight") and (prefix := next((p for p in ADAPTER_PARTS if key.startswith(p)), None)):
            module_name = key[len(prefix): -len(".lora_A.weight")]
            try:
                layer = roots[prefix].get_submodule(module_name)
                weight = layer.weight
            except AttributeError:
                raise CheckpointError(f"{lora.path}: no layer {prefix}{module_name} in this model; the LoRA was made "
                                      "for another model") from None
            up = lora.tensors[key.replace(".lora_A.", ".lora_B.")]
            kernel = tuple(weight.shape[2:])  # () for a linear layer, (k, k) for a convolution
            fits = (tuple(down.shape) == (down.shape[0], weight.shape[1], *kernel)
                    and tuple(up.shape) == (weight.shape[0], down.shape[0], *(1,) * len(kernel)))
            if not fits:
                raise CheckpointError(f"{lora.path}: {key} {tuple(down.shape)} and its lora_B {tuple(up.shape)} do not "
                                      f"fit {prefix}{module_name} {tuple(weight.shape)}; the LoRA was made for another "
                                      "model or is damaged")
            targets[key] = layer
    _full_tensors(model, lora)
    return targets


MAX_CHANGE = 1e3  # a trained LoRA changes a layer by a fraction of its size; a thousand times its size is damage


def _check_merged(model: MGIEModel, targets: dict[str, nn.Module], lora: LoraFile, strength: float) -> None:
    """Refuse a LoRA that would wreck the model, layer by layer, before any weight changes: merged weights the
    model's precision cannot hold (an fp16 weight past 65504 is infinite, and every edit black), or a change of a
    layer :data:`MAX_CHANGE` times its own size (finite, but every edit noise: a damaged file, or a strength far too
    high)."""
    for key, layer in targets.items():
        weight = layer.weight
        base = weight.dequantize(torch.float32) if is_quantized(layer) else weight.float()
        down, up = lora.tensors[key], lora.tensors[key.replace(".lora_A.", ".lora_B.")]
        delta = lora_delta(down, up, weight.shape).to(base.device) * (strength * lora.scale)
        _check_change(lora, strength, key.removesuffix(".lora_A.weight"), base, base + delta,
                      _stored_dtype(model, layer))
    for table, index, trained in _full_tensors(model, lora):  # trained values, not changes: only what fits the dtype
        base = table[index].float()
        _check_change(lora, strength, "the edit head or the [IMG] rows", base,
                      _blend(base, trained.float().to(base.device), strength), table.dtype, relative=False)


def _check_change(lora: LoraFile, strength: float, where: str, base: torch.Tensor, merged: torch.Tensor,
                  dtype: torch.dtype, relative: bool = True) -> None:
    name = str(dtype).removeprefix("torch.")
    if not bool(torch.isfinite(merged).all()) or float(merged.abs().max()) > torch.finfo(dtype).max:
        raise CheckpointError(f"{lora.path} at strength {strength:g} takes {where} past what {name} holds (its merged "
                              "weights overflow): the LoRA is damaged or its strength too high; lower the strength, or "
                              "use an earlier checkpoint's LoRA")
    change = float((merged - base).norm() / base.norm().clamp_min(1e-12)) if relative else 0.0
    if change > MAX_CHANGE:
        raise CheckpointError(f"{lora.path} at strength {strength:g} would change {where} by {change:.0e} times its own "
                              "size (a trained LoRA changes a layer by a fraction of it): the file is damaged or the "
                              "strength far too high; use an earlier checkpoint's LoRA or a lower strength")


def _stored_dtype(model: MGIEModel, layer: nn.Module) -> torch.dtype:
    """The precision a layer's weight computes in: its own, or the model's for a quantized LLM layer."""
    return model.mllm.lm_head.weight.dtype if is_quantized(layer) else layer.weight.dtype


def _merge_adapters(model: MGIEModel, targets: dict[str, nn.Module], lora: LoraFile, strength: float) -> int:
    """Merge every adapter pair into its layer's weight; returns how many layers changed."""
    for key, layer in targets.items():
        down, up = lora.tensors[key], lora.tensors[key.replace(".lora_A.", ".lora_B.")]
        delta = lora_delta(down, up, layer.weight.shape) * (strength * lora.scale)
        if is_quantized(layer):  # an LLM already quantized for a small GPU: merged and quantized again
            add_to_quantized(layer, delta, quantization_of(model.mllm.llm))
        else:
            layer.weight.copy_((layer.weight.float() + delta.to(layer.weight.device)).to(layer.weight.dtype))
    return len(targets)


def lora_delta(down: torch.Tensor, up: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``B @ A`` in the layout of the layer's weight (linear, or a conv with a 1x1 ``B``)."""
    rank = down.shape[0]
    return (up.float().reshape(up.shape[0], rank) @ down.float().reshape(rank, -1)).reshape(shape)


def _full_tensors(model: MGIEModel, lora: LoraFile) -> list[tuple[torch.Tensor, Any, torch.Tensor]]:
    """(table, index, trained) for the edit head's tensors and the [IMG] rows the LoRA carries."""
    head = dict(model.edit_head.named_parameters())
    ids = list(model.spec.visual_token_ids)
    rows = {f"{ROWS}embed_tokens": model.mllm.llm.embed_tokens.weight, f"{ROWS}lm_head": model.mllm.lm_head.weight}
    found = []
    for key, trained in lora.tensors.items():
        if key.startswith("edit_head."):
            target = head.get(key[len("edit_head."):])
            if target is None or target.shape != trained.shape:
                raise CheckpointError(f"{lora.path}: {key} does not fit this model's edit head")
            found.append((target, slice(None), trained))
        elif key in rows:
            table = rows[key]
            expected = (len(ids), table.shape[1])
            if trained.shape != expected:
                raise CheckpointError(f"{lora.path}: {key} has shape {tuple(trained.shape)}, expected {expected}")
            found.append((table, ids, trained))
    return found


def _blend_full_tensors(model: MGIEModel, lora: LoraFile, strength: float) -> None:
    for table, index, trained in _full_tensors(model, lora):
        table[index] = _blend(table[index], trained, strength)


def _blend(base: torch.Tensor, trained: torch.Tensor, strength: float) -> torch.Tensor:
    trained = trained.to(base.device)
    if strength == 1:
        return trained.to(base.dtype)
    return (base.float() + strength * (trained.float() - base.float())).to(base.dtype)
