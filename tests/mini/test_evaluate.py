"""The evaluation command (train/mini/evaluate.py) on a few held-out scenes: its columns, its figures file with
every scene's outcome, and the scene-by-scene pairing with a twin or with a stored run."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL

from train.mini import world
from train.mini.evaluate import HELD_OUT_SEED
from train.mini.evaluate import main as evaluate_main
from train.mini.model import VAE, train_tokenizer
from train.mini.twin import Twin, save_twin


def test_evaluate_compares_with_a_twin_scene_by_scene_on_the_chosen_family(tmp_path, capsys):
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


def test_evaluate_keeps_each_scenes_outcome_and_pairs_a_later_run_with_it(tmp_path, capsys):
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    argv = ["--count", "5", "--steps", "3", "--given-expressive"]
    assert evaluate_main([*argv, "--json", str(first)]) == 0
    kept = json.loads(first.read_text())
    for column in ("mgie_mini", "given_expressive", "expressive_ok", "vae_ceiling"):
        assert len(kept["outcomes"][column]) == 5 and set(kept["outcomes"][column]) <= {"0", "1"}
    share = kept["outcomes"]["mgie_mini"].count("1") / 5
    assert kept["mgie_mini"]["all"]["edit_success"] == pytest.approx(share)
    assert len(kept["derived"]) == 5 and kept["model"].endswith("mgie-mini.safetensors")
    capsys.readouterr()

    # the same model, sampler and scenes again: against its own mgie_mini column, no scene splits, and the stored
    # column's own rates sit beside the new run's
    assert evaluate_main([*argv, "--against", str(first), "--json", str(second)]) == 0
    printed = capsys.readouterr().out
    assert "scene by scene against" in printed and f"edit success ({first})" in printed
    against = json.loads(second.read_text())["against"]
    assert (against["all"]["only_first"], against["all"]["only_second"]) == (0, 0)
    assert against["table"] == {k: {"n": v["n"], "edit_success": v["edit_success"]} for k, v in kept["mgie_mini"].items()}
    # against the true-words column, the split is the two columns' difference, scene by scene
    evaluate_main(["--count", "5", "--steps", "3", "--against", f"{first}:given_expressive", "--json", str(second)])
    split = json.loads(second.read_text())["against"]["all"]
    ours, theirs = kept["outcomes"]["mgie_mini"], kept["outcomes"]["given_expressive"]
    assert split["only_first"] == sum(a == "1" and b == "0" for a, b in zip(ours, theirs))
    assert split["only_second"] == sum(a == "0" and b == "1" for a, b in zip(ours, theirs))


@pytest.mark.parametrize("column, seed, message", [
    ("", "7", f"other scenes (seed {HELD_OUT_SEED} here 7)"),
    (":ip2p_twin", str(HELD_OUT_SEED), "no scene-by-scene outcomes for 'ip2p_twin'"),
])
def test_evaluate_refuses_to_pair_with_a_run_of_other_scenes_or_a_missing_column(column, seed, message, tmp_path,
                                                                                   capsys):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"families": list(world.FAMILIES), "count": 5, "seed": HELD_OUT_SEED, "steps": 3,
                               "guidance_scale": 7.5, "image_guidance_scale": 1.5,
                               "outcomes": {"mgie_mini": "10101"}}))
    assert evaluate_main(["--count", "5", "--steps", "4", "--seed", seed, "--against", f"{old}{column}"]) == 2
    assert message in capsys.readouterr().err
