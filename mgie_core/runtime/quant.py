"""The LLM in 8 or 4 bits, so MGIE-7B fits an 8 GB or 6 GB card (torchao weight-only quantization).

Only the linear layers inside the LLM's decoder layers are quantized, from the weights as loaded
(Apple's fp16 shards need no extra file). The vision tower, the projector, the embeddings and
``lm_head`` (which hold the ``[IMG]`` rows), the edit head, the UNet and the VAE keep the run's
precision. Quantized weights are torchao tensor subclasses: ``.to(device)`` moves them like any
weight, so a staged placement and ComfyUI's model management offload them as they do the rest.

- ``int8``: int8 weights, one fp32 scale per output channel; runs on CUDA and on the CPU.
- ``int4``: 4-bit weights in groups of 128 (torchao's tinygemm kernel): CUDA only, and that kernel
  computes in bf16, so the LLM runs in bf16 while ``lm_head`` keeps the run's precision.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from ..errors import InputError
from .memory import size_text

logger = logging.getLogger(__name__)

LLM_QUANTS = ("none", "int8", "int4")
INT4_GROUP_SIZE = 128
INT4_DTYPE = torch.bfloat16  # what torchao's int4 kernel (tinygemm) computes in


def check_llm_quant(mode: str, device: torch.device | str) -> None:
    """Refuse, in one line that says what works instead, a mode this machine cannot run."""
    if mode not in LLM_QUANTS:
        raise InputError(f"llm quantization {mode!r} is not one of {', '.join(LLM_QUANTS)}")
    if mode == "none":
        return
    if mode == "int4" and torch.device(device).type != "cuda":
        raise InputError("the 4-bit LLM needs a CUDA GPU (torchao's int4 kernel has no CPU path here); "
                         "use int8 on this machine")
    _torchao()


def _torchao():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao.quantization as quantization
    except Exception as error:  # ImportError, or a torchao built for another torch
        raise InputError(f"the quantized LLM needs torchao, which did not import ({type(error).__name__}: {error}); "
                         "pip install torchao (a version made for your torch, see README 'Small GPUs')") from None
    return quantization


def quantize_llm(llm: nn.Module, mode: str, device: torch.device | str) -> nn.Module:
    """Quantize the linear layers of ``llm``'s decoder layers in place, one layer at a time on ``device``.

    Each layer goes back where it was, so the fp16 LLM is never whole on the GPU: quantizing MGIE-7B
    for an 8 GB card works from weights held on the CPU. Returns ``llm``.
    """
    check_llm_quant(mode, device)
    if mode == "none":
        return llm
    if is_quantized(llm):
        raise InputError("the LLM is already quantized; load the model again to change its quantization")
    config = _config(mode)
    quantize_ = _torchao().quantize_
    before = storage_bytes(llm)
    if mode == "int4":
        nn.Module.to(llm, dtype=INT4_DTYPE)
    for layer in llm.layers:
        home = next(layer.parameters()).device
        nn.Module.to(layer, device=device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchao's notes on config versions and inductor settings
            quantize_(layer, config, filter_fn=lambda module, _name: isinstance(module, nn.Linear))
        nn.Module.to(layer, device=home)
    llm.mgie_quantization = mode
    logger.info("LLM quantized to %s: its weights take %s, down from %s", mode, size_text(storage_bytes(llm)),
                size_text(before))
    return llm


def add_to_quantized(linear: nn.Linear, delta: torch.Tensor, mode: str) -> None:
    """``linear.weight += delta`` for a weight :func:`quantize_llm` quantized in ``mode``: dequantized, added in
    fp32 and quantized again, where it is (int4 on the GPU: its kernel's packing). A LoRA merged into a model whose
    LLM is already quantized goes through here."""
    weight = linear.weight
    home = weight.device
    merged = (weight.dequantize(torch.float32) + delta.to(home, torch.float32)).to(weight.dtype)
    linear.weight = nn.Parameter(merged, requires_grad=False)
    where = torch.device("cuda") if mode == "int4" and home.type != "cuda" else home
    nn.Module.to(linear, device=where)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _torchao().quantize_(linear, _config(mode))
    nn.Module.to(linear, device=home)


def _config(mode: str):
    quantization = _torchao()
    if mode == "int8":
        return quantization.Int8WeightOnlyConfig()
    try:  # torchao >= 0.14 names the packing; older ones tile for tinygemm by default
        return quantization.Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE, int4_packing_format="tile_packed_to_4d")
    except TypeError:
        return quantization.Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE)


def quantization_of(llm: nn.Module) -> str:
    """``none``, ``int8`` or ``int4``: what :func:`quantize_llm` did to ``llm``."""
    return getattr(llm, "mgie_quantization", "none")


def is_quantized(module: nn.Module) -> bool:
    return any(quantized_tensor(p) for p in module.parameters())


def quantized_tensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a torchao quantized weight (a tensor subclass), not a plain tensor."""
    return type(tensor) is not nn.Parameter and type(tensor) is not torch.Tensor


def storage_bytes(module: nn.Module) -> int:
    """The bytes ``module``'s weights really take: a quantized weight counts its stored parts (int8 data,
    scales), not ``nelement * element_size`` of the dtype it stands for."""
    return sum(_tensor_bytes(t) for t in [*module.parameters(), *module.buffers()])


def _tensor_bytes(tensor: torch.Tensor) -> int:
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None or type(tensor) in (torch.Tensor, nn.Parameter):
        return tensor.nelement() * tensor.element_size()
    names, _ = flatten()
    return sum(_tensor_bytes(getattr(tensor, name)) for name in names)


# Bytes per weight of a quantized decoder linear layer, scales included: int8 keeps one fp32 scale per output
# row (negligible at LLaMA's 4096 inputs), int4 a bf16 scale and zero point per group of 128.
BYTES_PER_WEIGHT = {"int8": 1.0, "int4": 0.5 + 4 / INT4_GROUP_SIZE}


def llm_bytes(mllm: nn.Module, dtype: torch.dtype, mode: str) -> int:
    """What the multimodal LLM's weights (vision tower included) will take at ``dtype`` with ``mode`` applied,
    estimated before quantizing, so a memory plan can choose the mode."""
    size = torch.finfo(dtype).bits // 8
    linear = sum(m.weight.numel() for layer in mllm.llm.layers for m in layer.modules() if isinstance(m, nn.Linear))
    total = sum(p.numel() for p in mllm.parameters())
    if mode == "none":
        return total * size
    return int((total - linear) * size + linear * BYTES_PER_WEIGHT[mode])
