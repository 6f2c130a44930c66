"""CUDA paths, checked against the CPU (``python -m pytest --run-gpu -m gpu``; skipped without a GPU).

Every random draw of training and sampling comes from a CPU generator, so the same seed gives the same
batch, noise and timesteps on either device: what differs is only floating-point rounding.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from mgie_core import EditSettings, MGIEPipeline, default_model_path, load_model
from mgie_core.runtime.devices import DTYPES
from train.mini import world
from train.mini.evaluate import HELD_OUT_SEED
from train.mini.joint import train_joint
from train.mini.model import build_mini
from train.mini.twin import train_ip2p
from train.mini.vae import train_vae

pytestmark = pytest.mark.gpu


def _first_logged(path) -> dict:
    return json.loads(path.read_text().splitlines()[0])


@pytest.mark.parametrize("stage", ["vae", "ip2p", "joint"])
def test_a_recipe_stage_computes_the_same_first_loss_on_cuda(tmp_path, stage):
    """Same init, same data, same noise: the first step's loss on CUDA is the CPU's (TF32 convolutions aside)."""
    losses = {}
    for device in ("cpu", "cuda"):
        model = build_mini(0).to(device)
        log = tmp_path / f"{device}.jsonl"
        if stage == "vae":
            train_vae(model.vae, steps=1, batch_size=8, seed=0, log=log)
            losses[device] = _first_logged(log)["l1_of_255"]
        elif stage == "ip2p":
            train_ip2p(model, steps=1, batch_size=8, lr=5e-4, seed=0, log=log)  # brings its text encoder along
            losses[device] = _first_logged(log)["loss_edit"]
        else:
            train_joint(model, steps=1, batch_size=4, lr=5e-4, seed=0, work=tmp_path / device, log=log)
            row = _first_logged(log)
            losses[device] = row["loss_ins"] + row["loss_edit"]
        assert all(p.device.type == device for p in model.unet.parameters())
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=2e-2), losses


def test_the_perception_stage_computes_the_same_first_loss_on_cuda():
    from train.mini.perception import Readout, losses, new_tower, scene_batch  # `losses` is a local name above

    first = {}
    for device in ("cpu", "cuda"):
        tower = new_tower(8, seed=0).to(device)
        readout = Readout(tower.config.hidden_size, position=True).to(device)
        torch.manual_seed(0)
        readout.load_state_dict(Readout(tower.config.hidden_size, position=True).state_dict())  # one init on both
        first[device] = sum(losses(tower, readout, *scene_batch(random.Random(0), 8)).values()).item()
    assert first["cuda"] == pytest.approx(first["cpu"], rel=2e-2), first


def _edits_on_both(dtype: str):
    """Four held-out edits on the CPU in fp32 and on CUDA in ``dtype``, with the deterministic Euler sampler."""
    edits = [e for e in world.edits(HELD_OUT_SEED + 1, 40) if e.family in ("recolour", "global")][:4]
    images, texts = [world.images(e)[0] for e in edits], [e.instruction for e in edits]
    settings = EditSettings(max_new_tokens=48, num_inference_steps=20, scheduler="euler", seed=3)
    cpu = MGIEPipeline(load_model(), "cpu", "fp32")(images, texts, settings)
    gpu = MGIEPipeline(load_model(), "cuda", dtype)(images, texts, settings)
    return cpu, gpu


needs_mini = pytest.mark.skipif(not default_model_path().is_file(), reason="mgie-mini is not built")


@needs_mini
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_the_shipped_model_derives_and_imagines_on_cuda_as_on_the_cpu(dtype):
    """H200, 2026-11-30: the same words 4/4; imagination relative error 5e-4 (fp16), 4.5e-3 (bf16)."""
    cpu, gpu = _edits_on_both(dtype)
    assert gpu.derivation.expressive_instructions == cpu.derivation.expressive_instructions
    ref, got = cpu.imagination.imagination, gpu.imagination.imagination.float().cpu()
    assert ((got - ref).norm() / ref.norm()).item() < 0.02


@needs_mini
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_each_diffusion_stage_of_the_shipped_model_agrees_with_the_cpu(dtype):
    """VAE encode, one UNet call and VAE decode on the same inputs: where a picture difference comes from."""
    pixels = torch.stack([torch.from_numpy(np.asarray(world.images(e)[0], np.float32) / 127.5 - 1).permute(2, 0, 1)
                          for e in world.edits(HELD_OUT_SEED + 1, 4)])
    outputs = {}
    for device, precision in (("cpu", "fp32"), ("cuda", dtype)):
        model = load_model().to(device, DTYPES[precision])
        unet, vae = model.unet, model.vae
        with torch.no_grad():
            latents = vae.encode(pixels.to(device, vae.dtype)).latent_dist.mode()
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
            hidden = torch.randn(4, 8, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(2))
            inputs = torch.cat([noise, latents.float().cpu()], dim=1).to(device, unet.dtype)  # the same on both
            pred = unet(inputs, torch.tensor(500.0, device=device), hidden.to(device, unet.dtype)).sample
            decoded = vae.decode(latents).sample
        outputs[device] = {"VAE encode": latents, "UNet": pred, "VAE decode": decoded}
    errors = {stage: ((outputs["cuda"][stage].float().cpu() - ref).norm() / ref.norm()).item()
              for stage, ref in outputs["cpu"].items()}
    print(f"{dtype}: relative error of CUDA against CPU fp32, per stage: {errors}")
    assert all(e < 0.02 for e in errors.values()), errors


BF16_DRIFT = ("H200, 2026-12-04: in bf16 one edit of four drifted to 11.1/255 from the CPU's fp32 picture (the others "
              "0.9-1.6): bf16's 8-bit mantissa puts one UNet call 1.1e-2 off (fp16: 1.4e-3) and 20 steps compound it")


@needs_mini
@pytest.mark.parametrize("dtype, within", [("fp32", 0.5), ("fp16", 4),
                                           pytest.param("bf16", 4, marks=pytest.mark.xfail(reason=BF16_DRIFT))])
def test_the_shipped_model_paints_on_cuda_what_it_paints_on_the_cpu(dtype, within):
    """H200, 2026-12-04: fp32 0.01/255 from the CPU's pictures, fp16 0.8-1.6/255. The CUDA path is the CPU's; what
    is left is rounding."""
    cpu, gpu = _edits_on_both(dtype)
    diffs = [float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean()) for a, b in zip(cpu.images, gpu.images)]
    print(f"{dtype}: mean |cpu - cuda| per image {[round(d, 2) for d in diffs]} of 255")
    assert max(diffs) < within, diffs  # a different edit differs by tens of levels
