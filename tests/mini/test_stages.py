"""The recipe's stages one at a time: the stream they draw from, the VAE and its decoder, the InstructPix2Pix
training (and the twin), the perception tower, the words leg."""

from __future__ import annotations

import json
import random

import pytest
import torch
from diffusers import AutoencoderKL

from mgie_core.errors import CheckpointError, InputError
from mgie_core.formats import load_bundle, save_bundle
from mgie_core.formats.aligned import save_aligned
from train.mini import world
from train.mini.evaluate import ambiguous_group
from train.mini.model import VAE, build_mini, train_tokenizer
from train.mini.perception import (
    NOTHING,
    Readout,
    accuracy,
    cell_centre,
    graft,
    load_tower,
    losses,
    new_tower,
    save_tower,
    scene_batch,
    targets,
    train_perception,
)
from train.mini.stream import batch_at, edit_at, edits_at, pictures
from train.mini.twin import Twin, load_twin, save_twin, train_ip2p, train_twin
from train.mini.vae import finetune_decoder, same_encoder, swap_decoder
from train.mini.words import focused_edit_at, train_words


def test_the_stream_is_the_same_for_a_seed_and_index_and_its_own_for_each_seed():
    again = [edit_at(0, i) for i in range(10)]
    assert [e.family for e in again] == [world.FAMILIES[i % 5] for i in range(10)]
    assert [(e.instruction, e.before) for e in again] == [(e.instruction, e.before) for e in edits_at(0, 0, 10)]
    assert edits_at(0, 1, 5) == again[5:]  # batch 1 of 5 is edits 5..9
    assert edit_at(3, 0) != edit_at(0, 0)  # the InstructPix2Pix stage's stream is not the joint stage's
    batch = batch_at(build_mini(0), 0, 0, 2)
    assert batch.source.shape == (2, 3, 64, 64) and batch.input_ids.shape[0] == 2
    assert pictures(edits_at(0, 0, 2)).shape == (4, 3, 64, 64)  # input and target of each edit


def _l1(vae: AutoencoderKL, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (vae.decode(vae.encode(x).latent_dist.mode()).sample - x).abs().mean().item()


def test_only_the_decoder_learns_and_the_round_trip_gets_closer(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE)
    x = pictures(edits_at(99, 0, 4))  # pictures the fine-tune never sees
    before, l1_before = {k: v.clone() for k, v in vae.state_dict().items()}, _l1(vae, x)
    finetune_decoder(vae, steps=30, batch_size=4, lr=3e-3, log=tmp_path / "log.jsonl")
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [30]
    changed = {k for k, v in vae.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    assert any(k.startswith("post_quant_conv.") for k in changed)
    assert _l1(vae, x) < 0.8 * l1_before  # measured: 0.67 -> 0.50
    assert not any(p.requires_grad for p in vae.parameters()) and not vae.training


def test_swap_decoder_copies_the_decoder_and_refuses_another_encoder():
    torch.manual_seed(0)
    source, same = AutoencoderKL(**VAE), AutoencoderKL(**VAE)
    encoder = {k: v.half().float() for k, v in source.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
    same.load_state_dict(encoder, strict=False)  # the encoder as a fp16 bundle stores it, a decoder of its own
    assert same_encoder(same, source)
    swap_decoder(same, source)
    assert all(torch.equal(same.state_dict()[k], v) for k, v in source.state_dict().items()
               if k.startswith(("decoder.", "post_quant_conv.")))
    other = AutoencoderKL(**VAE)
    assert not same_encoder(other, source)
    with pytest.raises(InputError, match="encoder"):
        swap_decoder(other, source)


def test_twin_trains_and_round_trips(tmp_path):
    torch.manual_seed(0)
    twin = Twin(train_tokenizer(), AutoencoderKL(**VAE))
    assert twin.scheduler_config["prediction_type"] == "v_prediction"  # sampled like mgie-mini
    before = {k: v.clone() for k, v in twin.unet.state_dict().items()}
    log = tmp_path / "twin.log.jsonl"
    train_twin(twin, steps=2, batch_size=2, lr=1e-3, seed=0, log=log)
    assert any(not torch.equal(before[k], v) for k, v in twin.unet.state_dict().items())
    assert log.read_text().count("\n") == 1  # the last step is always logged
    loaded = load_twin(save_twin(twin, tmp_path / "twin.safetensors"))
    texts = ["make it brighter", "paint the circle blue", ""]
    torch.testing.assert_close(loaded.encode(texts), twin.encode(texts), rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(twin.unet.state_dict().values(), loaded.unet.state_dict().values()))


def test_the_ip2p_stage_trains_mgie_minis_own_unet_on_brief_instructions(tmp_path, monkeypatch):
    model = build_mini()
    seen = []
    encode = Twin.encode
    monkeypatch.setattr(Twin, "encode", lambda self, texts: seen.extend(texts) or encode(self, texts))
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    train_ip2p(model, steps=1, batch_size=2, lr=1e-3, seed=0, log=tmp_path / "log.jsonl")
    assert any(not torch.equal(before[k], v) for k, v in model.unet.state_dict().items())
    # its own stretch of the stream (the joint stage starts at edit_at(0, 0)), brief instructions
    assert [t for t in seen if t] == [edit_at(3, i).instruction for i in range(2)]
    assert json.loads((tmp_path / "log.jsonl").read_text())["phase"] == "ip2p"


def test_perception_targets_are_each_objects_centre_and_every_empty_cell():
    square = world.Obj("square", "blue", "small", cell=0, dx=3.0, dy=-2.0)
    circle = world.Obj("circle", "red", "large", cell=4)
    xy, rows, labels = targets([world.Scene("light", (square, circle)), world.Scene("sand", (circle,))])
    assert len(xy) == 9 + 9 and rows.tolist() == [0] * 9 + [1] * 9
    cx, cy = square.center()  # read where it is drawn (jitter included), in grid_sample's [-1, 1] coordinates
    assert xy[0].tolist() == pytest.approx([cx / 32 - 1, cy / 32 - 1])
    assert labels[0].tolist() == [world.SHAPES.index("square"), list(world.COLOURS).index("blue"), 0, 0, 0]
    assert labels[1].tolist() == [world.SHAPES.index("circle"), list(world.COLOURS).index("red"), 1, 1, 1]
    assert labels[2:9].tolist() == [[NOTHING, -100, -100, -100, -100]] * 7  # nothing there, no colour or size
    assert xy[2].tolist() == pytest.approx([c / 32 - 1 for c in cell_centre(1)])


def test_the_readout_reads_the_patch_under_each_point():
    readout = Readout(2)
    with torch.no_grad():
        readout.linear.weight.zero_()
        readout.linear.bias.zero_()
        readout.linear.weight[0, 0] = 1.0  # "circle" logit = feature 0
    patches = torch.zeros(1, 16, 2)
    patches[0, 4 * 1 + 3, 0] = 5.0  # the patch in row 1, column 3 (4x4 patches, row-major)
    rows = torch.tensor([0])
    right = torch.tensor([[(3.5 * 16) / 32 - 1, (1.5 * 16) / 32 - 1]])
    left = torch.tensor([[(0.5 * 16) / 32 - 1, (1.5 * 16) / 32 - 1]])
    assert readout(patches, right, rows)["shape"][0, 0].item() == pytest.approx(5.0)
    assert readout(patches, left, rows)["shape"][0, 0].item() == pytest.approx(0.0)


def test_perception_teaches_the_tower_colour_where_nothing_is_and_where_each_object_is():
    tower = new_tower(patch_size=16)
    untrained = accuracy(tower, Readout(tower.config.hidden_size, position=True), count=60)
    scenes, pixels = scene_batch(random.Random(5), 16)
    before = losses(tower, Readout(tower.config.hidden_size, position=True), scenes, pixels)
    readout = train_perception(tower, steps=60, batch_size=16, lr=3e-3, position=True)
    after = accuracy(tower, readout, count=60)
    assert set(readout.heads) == {"shape", "colour", "size", "column", "row"}
    assert after["colour"] > max(0.5, untrained["colour"] + 0.2) and after["nothing"] > 0.9
    assert after["column"] > max(0.6, untrained["column"] + 0.2) and after["row"] > max(0.6, untrained["row"] + 0.2)
    assert not any(p.requires_grad for p in tower.parameters())  # frozen once trained
    assert sum(losses(tower, readout, scenes, pixels).values()) < sum(before.values())


def test_a_saved_tower_comes_back_and_a_grafted_one_sets_the_image_patches(tmp_path):
    tower = new_tower(patch_size=16, seed=3)
    loaded, config, record = load_tower(save_tower(tower, 16, tmp_path / "tower.safetensors", {"steps": 0}))
    assert config["patch_size"] == 16 and record == {"steps": 0}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tower.state_dict().items())
    model = build_mini(0)
    graft(model, loaded, config)
    assert model.spec.num_image_patches == 16 and not model.mllm.train_vision_tower
    assert model.mllm.image_features(torch.rand(1, 3, 64, 64)).shape[1] == 16
    again = load_bundle(save_bundle(model, tmp_path / "grafted.safetensors", dtype="fp32"))
    assert again.spec.num_image_patches == 16 and again.info["clip_config"]["patch_size"] == 16


def test_a_missing_or_foreign_tower_file_is_refused_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="no perception tower at .*nowhere.safetensors"):
        load_tower(tmp_path / "nowhere.safetensors")
    other = save_aligned({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not a perception tower"):
        load_tower(other)


def test_the_words_stream_mixes_the_chosen_kinds_into_the_builds_families():
    focused = [focused_edit_at(5, i, ("smallest", "odd_one_out"), 1.0) for i in range(40)]
    assert {ambiguous_group(e) for e in focused} == {"ambiguous/smallest", "ambiguous/odd_one_out"}
    plain = [focused_edit_at(5, i, ("smallest",), 0.0) for i in range(10)]
    assert [e.family for e in plain] == [world.FAMILIES[i % 5] for i in range(10)]
    half = [focused_edit_at(5, i, ("leftmost",), 0.5) for i in range(400)]
    share = sum(e.family == "ambiguous" and ambiguous_group(e) == "ambiguous/leftmost" for e in half) / 400
    assert 0.45 < share < 0.65  # half, plus the leftmost scenes of the build's own ambiguous turn


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    return save_bundle(build_mini(0), tmp_path_factory.mktemp("words") / "start.safetensors", dtype="fp16")


def _drift(log) -> list[float]:
    return [json.loads(line)["drift"] for line in log.read_text().splitlines()]


def test_a_words_leg_moves_the_projector_and_llm_alone(start, tmp_path):
    model = load_bundle(start).to("cpu", torch.float32)
    frozen = {part: {k: v.clone() for k, v in model.modules()[part].state_dict().items()}
              for part in ("unet", "vae", "edit_head")}
    tower = {k: v.clone() for k, v in model.mllm.vision_tower.state_dict().items()}
    llm = {k: v.clone() for k, v in model.mllm.llm.state_dict().items()}
    train_words(model, steps=3, batch_size=2, lr=1e-3, keep=1.0, kinds=("smallest",), share=1.0, seed=5,
                log=tmp_path / "log.jsonl")
    for part, state in frozen.items():
        assert all(torch.equal(v, model.modules()[part].state_dict()[k]) for k, v in state.items()), part
    assert all(torch.equal(v, model.mllm.vision_tower.state_dict()[k]) for k, v in tower.items())
    assert any(not torch.equal(v, model.mllm.llm.state_dict()[k]) for k, v in llm.items())
    assert _drift(tmp_path / "log.jsonl")[-1] > 0


def test_keep_holds_the_imagination_near_the_starting_models(start, tmp_path):
    drifts = {}
    for keep in (0.0, 100.0):
        model = load_bundle(start).to("cpu", torch.float32)
        log = tmp_path / f"{keep}.jsonl"
        train_words(model, steps=6, batch_size=4, lr=3e-3, keep=keep, kinds=("smallest",), share=1.0, seed=5, log=log)
        drifts[keep] = _drift(log)[-1]
    assert drifts[100.0] < 0.5 * drifts[0.0]


def _banned_by_transformers(model, edit, n: int) -> bool:
    """The oracle: transformers' own n-gram ban, asked at every answer position of the teacher-forced text."""
    from transformers import NoRepeatNGramLogitsProcessor

    from train.objective import conversation_ids

    ids, start = conversation_ids(model, edit.instruction, edit.expressive)
    ban = NoRepeatNGramLogitsProcessor(n)
    for end in range(start, len(ids)):
        scores = ban(torch.tensor([ids[:end]]), torch.zeros(1, model.tokenizer.vocab_size))
        if scores[0, ids[end]] == float("-inf"):
            return True
    return False


@pytest.mark.parametrize("n", [2, 3])
def test_unsayable_agrees_with_the_ban_derivation_applies(n):
    from train.mini.checks import unsayable

    model, edits = build_mini(0), world.edits(777, 100)
    banned = [unsayable(model, e, n) for e in edits]
    assert banned == [_banned_by_transformers(model, e, n) for e in edits]
    if n == 2:  # a 2-gram ban forbids many answers, whatever the tokenizer
        assert any(banned) and not all(banned)


def test_the_recipes_tokenizer_has_every_word_whole_and_every_answer_sayable():
    """A 512-piece BPE alone spelt "sunset" s-u-ns-et, and 27 of 1,000 true answers became unsayable under the
    3-gram ban; the recipe's tokenizer holds each word of the world and the template as one piece."""
    import re

    from train.mini.checks import unsayable
    from train.mini.model import TEMPLATE

    model, edits = build_mini(0), world.edits(777, 1000)
    words = {w for line in TEMPLATE + [t for e in edits for t in (e.instruction, e.expressive)]
             for w in re.findall(r"[A-Za-z]{2,}", line)}
    assert sorted(w for w in words if len(model.tokenizer.sp.encode(w)) > 1) == []
    assert [e.instruction for e in edits if unsayable(model, e)] == []
