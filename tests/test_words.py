"""The words leg (train/mini/words.py): the projector and LLM learn to derive where they are weakest while
the visual imagination is held to the starting model's, and nothing after the LLM moves."""

from __future__ import annotations

import pytest
import torch

from mgie_core.formats.bundle import load_bundle, save_bundle
from mgie_core.model import compute_fingerprint
from train.mini import world
from train.mini.evaluate import ambiguous_group
from train.mini.model import build_mini
from train.mini.words import focused_edit_at, main, train_words


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    return save_bundle(build_mini(0), tmp_path_factory.mktemp("words") / "start.safetensors", dtype="fp16")


def test_the_stream_mixes_the_chosen_kinds_into_the_builds_families():
    focused = [focused_edit_at(5, i, ("smallest", "odd_one_out"), 1.0) for i in range(40)]
    assert {ambiguous_group(e) for e in focused} == {"ambiguous/smallest", "ambiguous/odd_one_out"}
    plain = [focused_edit_at(5, i, ("smallest",), 0.0) for i in range(10)]
    assert [e.family for e in plain] == [world.FAMILIES[i % 5] for i in range(10)]
    half = [focused_edit_at(5, i, ("leftmost",), 0.5) for i in range(400)]
    share = sum(e.family == "ambiguous" and ambiguous_group(e) == "ambiguous/leftmost" for e in half) / 400
    assert 0.45 < share < 0.65  # half, plus the leftmost scenes of the build's own ambiguous turn
    again = focused_edit_at(5, 17, ("leftmost",), 0.5)
    assert (again.instruction, again.expressive, again.before) == (half[17].instruction, half[17].expressive,
                                                                  half[17].before)  # reproducible by seed and index


def _state(model, part):
    return {k: v.clone() for k, v in model.modules()[part].state_dict().items()}


def test_only_the_projector_and_llm_move_and_the_drift_starts_at_zero(start):
    model = load_bundle(start).to("cpu", torch.float32)
    frozen = {part: _state(model, part) for part in ("unet", "vae", "edit_head")}
    tower = {k: v.clone() for k, v in model.mllm.vision_tower.state_dict().items()}
    llm = {k: v.clone() for k, v in model.mllm.llm.state_dict().items()}
    found = list(train_words(model, steps=3, batch_size=2, lr=1e-3, keep=1.0, kinds=("smallest",), share=1.0,
                             seed=5, every=1))
    assert [step for step, *_ in found] == [1, 2, 3]
    assert found[0][2] == pytest.approx(0.0, abs=1e-10)  # step 1 is measured before any update
    assert found[2][2] > 0
    for part, state in frozen.items():
        assert all(torch.equal(v, model.modules()[part].state_dict()[k]) for k, v in state.items()), part
    assert all(torch.equal(v, model.mllm.vision_tower.state_dict()[k]) for k, v in tower.items())
    assert any(not torch.equal(v, model.mllm.llm.state_dict()[k]) for k, v in llm.items())


def test_keep_holds_the_imagination_near_the_starting_models(start):
    drifts = {}
    for keep in (0.0, 100.0):
        model = load_bundle(start).to("cpu", torch.float32)
        *_, (_, _, drift, _) = train_words(model, steps=6, batch_size=4, lr=3e-3, keep=keep, kinds=("smallest",),
                                           share=1.0, seed=5)
        drifts[keep] = drift
    assert drifts[100.0] < 0.5 * drifts[0.0]


def test_command_writes_a_bundle_with_the_diffusion_side_unchanged_and_the_leg_recorded(start, tmp_path, capsys):
    out = tmp_path / "words.safetensors"
    assert main(["--init", str(start), "--out", str(out), "--steps", "2", "--batch-size", "2",
                 "--kinds", "odd_one_out", "--work", str(tmp_path / "work")]) == 0
    before, after = load_bundle(start), load_bundle(out)
    for part in ("unet", "vae", "edit_head"):
        assert all(torch.equal(v, after.modules()[part].state_dict()[k])
                   for k, v in before.modules()[part].state_dict().items()), part
    leg = after.info["extra"]["legs"][-1]
    assert (leg["trained_by"], leg["steps"], leg["kinds"]) == ("python -m train.mini.words", 2, ["odd_one_out"])
    # the record names the starting weights; the new bundle carries its own weights' fingerprint
    assert leg["init_fingerprint"] == before.fingerprint() != after.fingerprint() == compute_fingerprint(after)
    assert (tmp_path / "work" / "log.jsonl").is_file()


def test_a_missing_start_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "words.safetensors"
    with pytest.raises(SystemExit) as stop:
        main(["--init", str(tmp_path / "absent.safetensors"), "--out", str(out), "--work", str(tmp_path / "w")])
    assert stop.value.code == 2
    assert "absent.safetensors" in capsys.readouterr().err and not out.exists()
