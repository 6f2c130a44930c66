"""Behaviour of the shipped mgie-mini on held-out scenes of its edit world (fast subset, CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mgie_core import DeriveConfig, MGIEPipeline, SampleConfig, default_model_path, load_model
from train.mini import world
from train.mini.checks import REST_TOLERANCE, edit_ok, expressive_ok, grow, luminance
from train.mini.evaluate import HELD_OUT_SEED

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not default_model_path().is_file(), reason="mgie-mini is not built")
SAMPLE = SampleConfig(num_inference_steps=50)


@pytest.fixture(scope="module")
def pipe():
    return MGIEPipeline(load_model(), "cpu", "fp32")


def held_out(family: str, count: int) -> list[world.Edit]:
    return [e for e in world.edits(HELD_OUT_SEED + 1, 20 * count) if e.family == family][:count]


def test_embedded_default_is_small_and_loads():
    assert default_model_path().stat().st_size <= 40e6
    model = load_model()
    assert model.info["format"] == "bundle" and model.info["extra"]["trained_by"] == "python -m train.mini.build"


@pytest.mark.parametrize("family, least", [("recolour", 7), ("global", 8)])
def test_derived_instruction_names_the_right_object(pipe, family, least):
    edits = held_out(family, 10)
    d = pipe.derive([world.images(e)[0] for e in edits], [e.instruction for e in edits], DeriveConfig(max_new_tokens=48))
    hits = [expressive_ok(e, text) for e, text in zip(edits, d.expressive_instructions)]
    assert sum(hits) >= least, list(zip([e.expressive for e in edits], d.expressive_instructions))


def test_make_it_brighter_raises_mean_luminance(pipe):
    scene = world.random_scene(__import__("random").Random(0))  # a sand background: room to brighten
    before = world.render(scene)
    out = pipe(before, "make it brighter", sample_config=SAMPLE, seed=1).images[0]
    assert luminance(np.asarray(out, float)) > luminance(np.asarray(before, float)) + 15


def test_recolour_gives_the_object_its_new_colour_and_leaves_the_background(pipe):
    """The object's mean colour is within the check's tolerance of the asked-for one, and the background
    (3 px away from every object) changed by less than the check's rest tolerance. mgie-mini v2, which
    learned no recolour, managed 2 of 20; the shipped model 7."""
    edits = held_out("recolour", 20)
    results = pipe([world.images(e)[0] for e in edits], [e.instruction for e in edits], DeriveConfig(max_new_tokens=48),
                   SAMPLE, seed=2)
    hits = 0
    for e, out in zip(edits, results.images):
        before, target = world.images(e)
        objects = np.any([grow(world.mask(o), 3) for o in e.before.objects], axis=0)
        background = np.abs(np.asarray(out, float) - np.asarray(before, float))[~objects].mean()
        hits += bool(edit_ok(e, before, out, target).region and background < REST_TOLERANCE)
    assert hits >= 5


def test_bf16_on_the_cpu_paints_what_fp32_paints(pipe):
    """The half-precision path on the shipped model (measured 0.2-0.6/255 apart; a different edit: tens)."""
    edits = held_out("recolour", 2) + held_out("global", 2)
    images, texts = [world.images(e)[0] for e in edits], [e.instruction for e in edits]
    config = SampleConfig(num_inference_steps=20, scheduler="euler")
    half = MGIEPipeline(load_model(), "cpu", "bf16")(images, texts, DeriveConfig(max_new_tokens=48), config, seed=3)
    full = pipe(images, texts, DeriveConfig(max_new_tokens=48), config, seed=3)
    assert half.derivation.expressive_instructions == full.derivation.expressive_instructions
    for a, b in zip(half.images, full.images):
        assert np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() < 2


def test_the_check_is_reachable_through_the_models_own_vae():
    """The VAE round trip of the ground truth (a perfect denoiser's output) passes most local edits."""
    from train.mini.evaluate import evaluate_ceiling

    edits = [e for e in world.edits(HELD_OUT_SEED + 1, 40) if e.target is not None][:20]
    results = evaluate_ceiling(load_model().vae, edits)
    assert sum(r.edit_ok for r in results) >= 16


def test_the_decoder_keeps_a_global_edits_tint():
    """Global edits through the VAE round trip: v10's decoder, trained with its encoder on sampled latents,
    pulled colours back to the world's palette (11 of these 20 passed; warmer and cooler lost their tint);
    the decoder fine-tuned alone (train/mini/decoder.py) passes all 20."""
    from train.mini.evaluate import evaluate_ceiling

    edits = world.edits(HELD_OUT_SEED + 1, 20, ("global",))
    assert {e.kind for e in edits} == set(world.GLOBAL)
    assert sum(r.edit_ok for r in evaluate_ceiling(load_model().vae, edits)) >= 18


def test_cli_uses_the_embedded_model_by_default(tmp_path):
    out = tmp_path / "edited.png"
    done = subprocess.run([sys.executable, "-m", "mgie_core", "edit", "--image", "examples/scene.png", "--instruction",
                           "make the biggest shape red", "--out", str(out), "--steps", "20", "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "green triangle" in done.stdout and out.is_file()


def test_the_shipped_model_recommends_the_guidance_chosen_for_it():
    from train.mini.build import RECOMMENDED_SAMPLING

    assert load_model().recommended_sampling == RECOMMENDED_SAMPLING == {"guidance_scale": 2.0, "image_guidance_scale": 1.5}


def test_the_shipped_model_can_say_every_true_expressive_instruction():
    from train.mini.derivation import unsayable

    model = load_model()
    assert [e.instruction for e in world.edits(HELD_OUT_SEED, 200) if unsayable(model, e)] == []


def test_evaluate_compares_with_a_twin_scene_by_scene_on_the_chosen_family(tmp_path, capsys):
    import json

    import torch
    from diffusers import AutoencoderKL

    from train.mini.evaluate import main as evaluate_main
    from train.mini.model import VAE, train_tokenizer
    from train.mini.twin import Twin, save_twin

    torch.manual_seed(0)
    twin = save_twin(Twin(train_tokenizer(), AutoencoderKL(**VAE)), tmp_path / "twin.safetensors")  # untrained
    out = tmp_path / "figures.json"
    argv = ["--count", "4", "--steps", "4", "--family", "ambiguous", "--twin", str(twin), "--json", str(out)]
    assert evaluate_main(argv) == 0
    figures = json.loads(out.read_text())
    assert figures["families"] == ["ambiguous"]
    assert set(figures["mgie_mini"]) - {"all", "ambiguous"} <= {f"ambiguous/{k}" for k in world.AMBIGUOUS}
    assert "IP2P twin only" in capsys.readouterr().out
    for name, row in figures["paired_ip2p_twin"].items():  # who alone succeeded explains the two rates' gap
        gap = figures["mgie_mini"][name]["edit_success"] - figures["ip2p_twin"][name]["edit_success"]
        assert row["n"] == figures["mgie_mini"][name]["n"]
        assert gap == pytest.approx((row["only_first"] - row["only_second"]) / row["n"])
