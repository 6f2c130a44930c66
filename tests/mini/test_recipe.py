"""The recipe that rebuilds the shipped mgie-mini (train/mini/recipe.py): every stage end to end at a few steps,
what each stage may and may not change, and a killed build taken up where it stopped."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mgie_core.formats import load_bundle
from mgie_core.formats.weights import read_state_dict
from train.mini.recipe import RECOMMENDED_SAMPLING, Recipe, build, main, stages
from train.mini.schedule import warmup_cosine

QUICK = dataclasses.replace(Recipe().scaled(1 / 1000), batch_size=2, decoder_batch_size=2, perception_batch_size=4)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    out = build(QUICK, root / "work", root / "mini.safetensors")
    return root / "work", out


def _state(model, part: str) -> dict[str, torch.Tensor]:
    return model.modules()[part].state_dict()


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_shipped_steps_and_rates_are_the_recipe():
    r = Recipe()
    assert (r.vae_steps, r.decoder_steps, r.ip2p_steps, r.joint_steps) == (2000, 2000, 2000, (6400, 9600, 12800, 15200))
    assert (r.leg_steps, r.tower_leg_steps, r.perception_steps, r.adapt_steps) == (17600, 19600, 3000, 3000)
    assert (r.lr, r.leg_lr, r.adapt_lr, r.batch_size) == (5e-4, 2e-4, 3e-4, 32)
    assert [(w.kinds, w.share, w.steps) for w in r.words] == [
        (("smallest", "odd_one_out", "leftmost"), 0.5, 2000), (("smallest", "odd_one_out"), 0.6, 2000)]
    assert r.scaled(1) == r
    # scaled down, the joint stream keeps its order: each leg goes on from where the stage before it stopped
    assert QUICK.joint_steps == (6, 10, 13, 15) and (QUICK.leg_steps, QUICK.tower_leg_steps) == (18, 20)
    assert Recipe().scaled(1e-6).joint_steps == (1, 2, 3, 4)


def test_every_stage_runs_and_the_last_one_is_the_model(built):
    work, out = built
    model = load_bundle(out)
    names = list(stages(QUICK))
    assert names == ["vae", "decoder", "ip2p", "joint", "leg", "perception", "tower-leg", "words-1", "words-2"]
    assert all((work / f"{name}.safetensors").is_file() for name in names)
    extra = model.info["extra"]
    assert extra["trained_by"] == "python -m train.mini.recipe" and extra["recipe"] == QUICK.to_dict()
    assert set(extra["minutes"]) == set(names) and set(extra["vision_tower"]) == {"steps", "accuracy"}
    assert model.recommended_sampling == RECOMMENDED_SAMPLING == {"guidance_scale": 2.0, "image_guidance_scale": 1.5,
                                                                  "max_side": 64}
    assert model.spec.num_image_patches == 64  # the perception tower's 8 px patches of a 64 px picture


def test_the_vae_is_the_vae_stages_encoder_with_the_decoder_stages_decoder(built):
    work, out = built
    vae, trained, decoder = _state(load_bundle(out), "vae"), read_state_dict(work / "vae.safetensors"), read_state_dict(
        work / "decoder.safetensors")
    assert decoder and all(k.startswith(("decoder.", "post_quant_conv.")) for k in decoder)
    for key, tensor in vae.items():
        source = decoder.get(key, trained[key])  # stored in fp16, as every bundle
        assert torch.equal(tensor, source.half()), key
    assert any(not torch.equal(decoder[k], trained[k]) for k in decoder)  # the decoder stage trained it


def test_the_tower_is_frozen_and_the_words_legs_move_the_llm_alone(built):
    work, out = built
    tower_leg, first, last = (load_bundle(work / f"{n}.safetensors") for n in ("tower-leg", "words-1", "words-2"))
    tower = read_state_dict(work / "perception.safetensors")
    assert _equal(tower_leg.mllm.vision_tower.state_dict(), {k: v.half() for k, v in tower.items()})
    for part in ("unet", "vae", "edit_head"):  # nothing after the LLM moves in a words leg
        assert _equal(_state(first, part), _state(tower_leg, part)) and _equal(_state(last, part), _state(first, part))
    assert _equal(last.mllm.vision_tower.state_dict(), tower_leg.mllm.vision_tower.state_dict())
    assert not _equal(last.mllm.llm.state_dict(), first.mllm.llm.state_dict())


def test_the_legs_train_on_from_the_model_before_them(built):
    work, _ = built
    joint, leg = (load_bundle(work / f"{n}.safetensors") for n in ("joint", "leg"))
    assert not _equal(_state(leg, "unet"), _state(joint, "unet"))
    assert _equal(_state(leg, "vae"), _state(joint, "vae"))  # a leg trains no VAE
    checkpoints = sorted(p.name for p in (work / "leg" / "checkpoints").iterdir())
    assert checkpoints[-1] == f"step-{QUICK.leg_steps:06d}"  # it went on from the joint stage's last step


def test_a_killed_build_goes_on_where_it_stopped(built, caplog):
    work, out = built
    before = load_bundle(out)
    (work / "words-2.safetensors").unlink()  # killed during the last stage
    (work / "joint.safetensors").unlink()  # ... or after the joint stage's last checkpoint, before its bundle
    with caplog.at_level("INFO", logger="mgie.mini"):
        build(QUICK, work, out)
    ran = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stage ")]
    assert ran == ["stage vae: done before, kept", "stage decoder: done before, kept", "stage ip2p: done before, kept",
                   "stage joint", "stage leg: done before, kept", "stage perception: done before, kept",
                   "stage tower-leg: done before, kept", "stage words-1: done before, kept", "stage words-2"]
    again = load_bundle(out)  # the joint stage took up its checkpoint and trained no step again
    for part in ("mllm", "edit_head", "unet", "vae"):
        assert _equal(_state(again, part), _state(before, part)), part


def test_a_leg_schedule_warms_up_then_falls_to_a_tenth():
    factor = warmup_cosine(1000, warmup=100)  # what a 1,000-step leg from saved weights follows
    assert factor(0) == pytest.approx(0.01)  # a hundredth of the peak: fresh Adam moments take full-size steps
    assert factor(99) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 99 / 1000)))
    assert factor(500) == pytest.approx(0.55) and factor(1000) == pytest.approx(0.1)
    longer = warmup_cosine(9600)  # a stage resumed with more steps takes up a longer cosine where it stands
    assert longer(6400) > warmup_cosine(6400)(6400) == pytest.approx(0.1)


@pytest.mark.parametrize("argv, message", [(["--scale", "0"], "--scale must be in (0, 1]"),
                                           (["--scale", "2"], "--scale must be in (0, 1]")])
def test_bad_options_are_one_line_errors_and_write_nothing(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out.safetensors")])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
