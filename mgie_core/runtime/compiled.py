"""The compiled paths (``compile=True``, ``--compile``, Load MGIE's *compile*): torch.compile over the hot loops.

- Decoding: the one-token step with its static KV cache (:func:`mgie_core.stages.decode.compiled_step`), captured as a
  CUDA graph on a GPU (``mode="reduce-overhead"``).
- Denoising: the UNet, whose three guidance branches already run as one call, compiled for a fixed shape
  (``dynamic=False``) and, on a GPU, in ``channels_last`` and captured the same way.

Compiling costs time once per shape (batch, image size, prompt length): the first edit at a new size pays it,
the next ones at that size reuse the graphs. Pictures and tokens match the eager path (tested on the CPU).
"""

from __future__ import annotations

import torch
from torch import nn


def compile_unet(unet: nn.Module) -> nn.Module:
    """``unet`` compiled for the sampler (the module itself is unchanged: ComfyUI's MODEL shares its weights)."""
    cuda = unet.device.type == "cuda"
    if cuda:
        unet.to(memory_format=torch.channels_last)
    return torch.compile(unet, mode="reduce-overhead" if cuda else None, dynamic=False)
