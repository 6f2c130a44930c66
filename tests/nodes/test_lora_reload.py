"""Load MGIE: a change of LoRA or strength re-patches the loaded weights; the model is not loaded again."""

from __future__ import annotations

import sys

import torch
from lora_files import UNET_LAYER, assert_same, random_lora, weights

from mgie_core import load_model
from mgie_core.formats.lora import apply_lora


def fresh(root, lora=None, strength=1.0, dtype=torch.float32):
    model = load_model(root)
    model.fingerprint()
    model.to("cpu", dtype).eval()
    return apply_lora(model, lora, strength) if lora else model


def test_a_lora_change_re_patches_the_loaded_model(comfy, tiny_root, monkeypatch):
    nodes, tmp_path = comfy[0], comfy[-1]
    folder = tmp_path / "models" / "mgie_loras"
    folder.mkdir(parents=True)
    a = random_lora(load_model(tiny_root), folder / "a.safetensors", seed=1)
    b = random_lora(load_model(tiny_root), folder / "b.safetensors", seed=2)
    runtime = sys.modules["ComfyUI-MGIE.nodes.runtime"]
    loads = []
    monkeypatch.setattr(runtime, "load_model", lambda *args: loads.append(args) or load_model(*args))

    def loader(lora, strength, dtype="fp32"):
        return nodes["MGIELoader"].execute(model="tiny", dtype=dtype, lora=lora, lora_strength=strength).values

    first = loader("a.safetensors", 0.5)[0]
    second = loader("a.safetensors", 1.0)[0]  # the strength changed
    third, unet, _ = loader("b.safetensors", -1.0)  # another LoRA
    assert len(loads) == 1 and second.model is first.model is third.model
    assert_same(weights(third.model), weights(fresh(tiny_root, b, -1.0)))  # as if loaded with it
    patched = third.model.unet.get_submodule(UNET_LAYER).weight
    assert any(p.data_ptr() == patched.data_ptr() for p in unet.model.parameters())  # MODEL: the same, patched, weights
    first.place("sample")  # the first node's handle edits with its own LoRA: put back before its stage
    assert_same(weights(first.model), weights(fresh(tiny_root, a, 0.5)))
    loader("none", 1.0)[0].place("derive")
    assert_same(weights(first.model), weights(fresh(tiny_root)))
    assert len(loads) == 1
    loader("a.safetensors", 1.0, dtype="fp16")  # another dtype: a load
    assert len(loads) == 2
