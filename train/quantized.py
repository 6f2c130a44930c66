"""Training on a quantized frozen LLM (QLoRA-style) and with 8-bit optimizer states.

The LLM's decoder linear layers are quantized by the same torchao path as the inference modes
(mgie_core/runtime/quant.py). peft puts its LoRA layers around them (``TorchaoLoraLinear``), so the adapters
and the ``[IMG]`` rows train in full precision while the base stays in 8 or 4 bits.

One thing peft and torchao do not do for training: torchao's weight-only linear multiplies by a
full-precision copy of the weight, and autograd keeps that copy for the backward pass, so every layer
of the LLM would hold its weight unquantized until the backward pass, more than the unquantized model
holds. :class:`FrozenQuantizedLinear` keeps only the quantized weight and dequantizes it again in the
backward pass, one layer at a time, as QLoRA does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mgie_core.runtime.quant import is_quantized


class _QuantizedMatmul(torch.autograd.Function):
    """y = x W^T + b with a frozen quantized W: the gradient flows to x only, through W dequantized on demand."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.weight = weight  # the quantized tensor itself (a reference, no copy)
        return F.linear(x, weight, bias)  # (..., in) -> (..., out), torchao's kernel

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight = ctx.weight.dequantize().to(grad.dtype)  # (out, in), freed when this layer's backward ends
        return grad @ weight, None, None


class FrozenQuantizedLinear(nn.Linear):
    """An ``nn.Linear`` whose torchao-quantized weight is frozen: see the module's docstring."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QuantizedMatmul.apply(x, self.weight, self.bias)


def freeze_quantized(llm: nn.Module) -> nn.Module:
    """Make the linear layers that :func:`mgie_core.runtime.quant.quantize_llm` quantized frozen for LoRA training
    on top: their backward pass dequantizes the weight one layer at a time. Returns ``llm``."""
    for module in llm.modules():
        if type(module) is nn.Linear and is_quantized(module):
            module.__class__ = FrozenQuantizedLinear  # same state, a forward that keeps no dequantized copy
    return llm


def make_optimizer(name: str, params: list[nn.Parameter], lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.Optimizer:
    """``adamw`` (torch) or ``adamw8bit`` (torchao: both moments in 8 bits, scaled per block of 256 values, for
    tensors of at least 4096 values; smaller ones keep fp32 moments). On a CPU the 8-bit update runs eagerly:
    torch.compile would first build a C++ kernel for every parameter shape (5 to 50 s each, and it needs a C++
    compiler); eager, it takes milliseconds a step at mgie-mini's size."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    from torchao.optim import AdamW8bit

    kind = AdamW8bit if device.type == "cuda" else type("EagerAdamW8bit", (EagerStep, AdamW8bit), {})
    return kind(params, lr=lr, weight_decay=weight_decay)


class EagerStep:
    """Mixed into an optimizer whose ``step`` calls torch.compile: runs that step eagerly instead."""

    def step(self, closure=None):
        with torch.compiler.set_stance("force_eager"):
            return super().step(closure)
