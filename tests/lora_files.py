"""Random MGIE LoRA files for the tiny model, and exact comparisons of a model's weights."""

from __future__ import annotations

from pathlib import Path

import torch

from mgie_core.formats.lora import save_lora

UNET_LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
LLM_LAYER = "layers.1.self_attn.q_proj"


def random_lora(model, path: Path, seed: int, rank: int = 2, layer: str = UNET_LAYER) -> Path:
    """A LoRA in train/finetune.py's layout with random (non-zero) adapters, edit head and [IMG] rows."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for prefix, root, name in (("unet.", model.unet, layer), ("mllm.llm.", model.mllm.llm, LLM_LAYER)):
        out_features, in_features = root.get_submodule(name).weight.shape
        tensors[f"{prefix}{name}.lora_A.weight"] = torch.randn(rank, in_features, generator=g)
        tensors[f"{prefix}{name}.lora_B.weight"] = torch.randn(out_features, rank, generator=g)
    head = model.edit_head.get_parameter("llm2hid.weight")
    tensors["edit_head.llm2hid.weight"] = head.float() + torch.randn(head.shape, generator=g)
    rows = len(model.spec.visual_token_ids), model.mllm.llm.embed_tokens.weight.shape[1]
    tensors["visual_rows.embed_tokens"] = torch.randn(rows, generator=g)
    tensors["visual_rows.lm_head"] = torch.randn(rows, generator=g)
    return save_lora(path, tensors, {"rank": rank, "alpha": 2.0 * rank, "base_fingerprint": model.fingerprint()})


def weights(model) -> dict[str, torch.Tensor]:
    return {f"{part}.{k}": v.clone() for part, module in model.modules().items() for k, v in module.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
