"""A LoRA changed in place (LoraPatcher) leaves the model exactly as a fresh load merged with the new LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lora_files import UNET_LAYER, assert_same, random_lora, weights

from mgie_core import CheckpointError, load_model
from mgie_core.formats.lora import read_lora, save_lora
from mgie_core.runtime.lora_patch import LoraPatcher


def loaded(root: Path, dtype: torch.dtype):
    """As Load MGIE loads: the fingerprint of the weights as stored, then the run's precision."""
    model = load_model(root)
    model.fingerprint()
    return model.to("cpu", dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_changing_the_lora_in_place_equals_a_fresh_load(tiny_root, tmp_path, dtype):
    base = loaded(tiny_root, dtype)
    first = read_lora(random_lora(base, tmp_path / "a.safetensors", seed=1))
    second = read_lora(random_lora(base, tmp_path / "b.safetensors", seed=2))

    def fresh(lora, strength):
        model = loaded(tiny_root, dtype)
        LoraPatcher(model).set(lora, strength)
        return weights(model)

    untouched, fingerprint = weights(base), base.fingerprint()
    patcher = LoraPatcher(base)
    patcher.set(first, 0.5)
    assert not torch.equal(weights(base)["unet." + UNET_LAYER + ".weight"], untouched["unet." + UNET_LAYER + ".weight"])
    patcher.set(first, 1.0)  # a strength change
    assert_same(weights(base), fresh(first, 1.0))
    patcher.set(second, -0.75)  # another file
    assert_same(weights(base), fresh(second, -0.75))
    assert base.fingerprint() != fingerprint
    patcher.set(None)
    assert_same(weights(base), untouched)
    assert base.fingerprint() == fingerprint


def test_a_lora_that_does_not_fit_leaves_the_model_as_loaded(tiny_root, tmp_path):
    model = loaded(tiny_root, torch.float32)
    untouched = weights(model)
    good = read_lora(random_lora(model, tmp_path / "good.safetensors", seed=1))
    path = random_lora(model, tmp_path / "bad.safetensors", seed=3)
    tensors = dict(read_lora(path).tensors)
    tensors["unet.no_such_layer.lora_A.weight"] = torch.ones(2, 4)
    tensors["unet.no_such_layer.lora_B.weight"] = torch.ones(4, 2)
    bad = read_lora(save_lora(tmp_path / "bad2.safetensors", tensors, {k: v for k, v in read_lora(path).meta.items()
                                                                         if k not in ("format", "format_version")}))
    patcher = LoraPatcher(model)
    patcher.set(good, 1.0)
    with pytest.raises(CheckpointError, match="no layer unet.no_such_layer"):
        patcher.set(bad, 1.0)
    assert_same(weights(model), untouched)  # the good one went, the bad one never stayed
    assert patcher.lora is None and not patcher.saved
