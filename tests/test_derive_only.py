"""The derivation-only experiment (train/mini/derive_only.py): the MLLM alone trains on L_ins and its
derivation is measured; the vision tower's patch size is its knob and survives a bundle."""

from __future__ import annotations

import json

import torch

from mgie_core import load_model
from mgie_core.formats.bundle import save_bundle
from train.mini import world
from train.mini.derive_only import main, train_derivation
from train.mini.model import build_mini


def test_patch_size_sets_the_image_patches_and_survives_a_bundle(tmp_path):
    model = build_mini(0, patch_size=8)
    assert model.spec.num_image_patches == 64 and build_mini(0).spec.num_image_patches == 16
    loaded = load_model(save_bundle(model, tmp_path / "p8.safetensors", dtype="fp32"))
    assert loaded.spec.num_image_patches == 64
    pixels = torch.rand(1, 3, 64, 64)
    assert loaded.mllm.image_features(pixels).shape[1] == 64


def test_only_the_mllm_trains_and_derivation_is_measured_at_the_end():
    model = build_mini(0)
    before = {part: {k: v.clone() for k, v in model.modules()[part].state_dict().items()} for part in ("mllm", "unet")}
    scenes = world.edits(777, 5)
    found = list(train_derivation(model, steps=2, batch_size=2, lr=1e-3, scenes=scenes))
    assert [step for step, _, _ in found] == [2]  # no --eval-every: the end only
    step, loss, table = found[0]
    assert loss > 0 and table["all"]["n"] == 5  # one scene of each family:
    assert {"recolour", "remove", "add", "global"} <= set(table) and any(k.startswith("ambiguous/") for k in table)
    changed = {part: any(not torch.equal(v, model.modules()[part].state_dict()[k]) for k, v in sd.items())
               for part, sd in before.items()}
    assert changed == {"mllm": True, "unet": False}


def test_command_writes_each_measurement(tmp_path, capsys):
    out = tmp_path / "derive.json"
    assert main(["--patch-size", "8", "--steps", "2", "--batch-size", "2", "--count", "5", "--eval-every", "1",
                 "--vision-lr-scale", "4", "--json", str(out)]) == 0
    found = json.loads(out.read_text())
    assert [(f["step"], f["patch_size"], f["vision_lr_scale"], f["derivation"]["all"]["n"]) for f in found] == [
        (1, 8, 4.0, 5), (2, 8, 4.0, 5)]
    assert "| all | 5 |" in capsys.readouterr().out


def test_vision_lr_scale_scales_only_the_vision_towers_steps():
    model = build_mini(0)
    vision = {k: v.clone() for k, v in model.mllm.vision_tower.state_dict().items()}
    llm = {k: v.clone() for k, v in model.mllm.llm.state_dict().items()}
    list(train_derivation(model, steps=1, batch_size=2, lr=1e-3, vision_lr_scale=0.0))
    assert all(torch.equal(v, model.mllm.vision_tower.state_dict()[k]) for k, v in vision.items())
    assert any(not torch.equal(v, model.mllm.llm.state_dict()[k]) for k, v in llm.items())
