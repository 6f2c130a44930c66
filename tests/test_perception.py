"""mgie-mini's perception stage (train/mini/perception.py) and builds that graft its tower (build --vision-tower)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from mgie_core import default_model_path, load_model
from mgie_core.errors import CheckpointError
from mgie_core.formats.bundle import load_bundle
from train.mini import world
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


def test_targets_are_each_objects_centre_and_every_empty_cell():
    square = world.Obj("square", "blue", "small", cell=0, dx=3.0, dy=-2.0)
    circle = world.Obj("circle", "red", "large", cell=4)
    xy, rows, labels = targets([world.Scene("light", (square, circle)), world.Scene("sand", (circle,))])
    assert len(xy) == 9 + 9 and rows.tolist() == [0] * 9 + [1] * 9
    # the square is read where it is drawn (jitter included), in grid_sample's [-1, 1] coordinates
    cx, cy = square.center()
    assert xy[0].tolist() == pytest.approx([cx / 32 - 1, cy / 32 - 1])
    assert labels[0].tolist() == [world.SHAPES.index("square"), list(world.COLOURS).index("blue"), 0, 0, 0]
    assert labels[1].tolist() == [world.SHAPES.index("circle"), list(world.COLOURS).index("red"), 1, 1, 1]  # column, row
    # the seven empty cells of the first scene: nothing there, no colour or size to learn
    assert labels[2:9].tolist() == [[NOTHING, -100, -100, -100, -100]] * 7
    assert xy[2].tolist() == pytest.approx([c / 32 - 1 for c in cell_centre(1)])
    assert xy[1].tolist() == pytest.approx([0.0, 0.0])  # cell 4 is the centre of the picture


def test_the_readout_reads_the_patch_under_each_point():
    readout = Readout(2)
    with torch.no_grad():
        readout.linear.weight.zero_()
        readout.linear.bias.zero_()
        readout.linear.weight[0, 0] = 1.0  # "circle" logit = feature 0
    patches = torch.zeros(1, 16, 2)
    patches[0, 4 * 1 + 3, 0] = 5.0  # the patch in row 1, column 3 (4x4 patches, row-major)
    right_of_top = torch.tensor([[(3.5 * 16) / 32 - 1, (1.5 * 16) / 32 - 1]])  # its centre
    left_of_top = torch.tensor([[(0.5 * 16) / 32 - 1, (1.5 * 16) / 32 - 1]])
    rows = torch.tensor([0])
    assert readout(patches, right_of_top, rows)["shape"][0, 0].item() == pytest.approx(5.0)
    assert readout(patches, left_of_top, rows)["shape"][0, 0].item() == pytest.approx(0.0)


def test_training_teaches_the_tower_colour_and_where_nothing_is():
    tower = new_tower(patch_size=16)
    untrained = accuracy(tower, Readout(tower.config.hidden_size), count=60)
    scenes, pixels = scene_batch(random.Random(5), 16)
    before = losses(tower, Readout(tower.config.hidden_size), scenes, pixels)
    readout = train_perception(tower, steps=60, batch_size=16, lr=3e-3)
    after = accuracy(tower, readout, count=60)
    assert after["colour"] > max(0.5, untrained["colour"] + 0.2)
    assert after["nothing"] > 0.9
    assert not any(p.requires_grad for p in tower.parameters())  # frozen once trained
    assert sum(losses(tower, readout, scenes, pixels).values()) < sum(before.values())


def test_position_readouts_keep_where_each_object_is_which_the_others_wash_out():
    # v16's tower, trained on shape / colour / size alone, kept an object's column for a linear probe 44% of the
    # time (chance 33%); the same training with --position keeps it
    where = new_tower(patch_size=16, seed=2)
    readout = train_perception(where, steps=60, batch_size=16, lr=3e-3, position=True)
    assert set(readout.heads) == {"shape", "colour", "size", "column", "row"}
    found = accuracy(where, readout, count=60)
    what = new_tower(patch_size=16, seed=2)
    assert "column" not in accuracy(what, train_perception(what, steps=60, batch_size=16, lr=3e-3), count=60)
    probe = accuracy(what, train_perception(what, steps=60, batch_size=16, lr=3e-3, train_tower=False, position=True),
                     count=60)
    assert found["column"] > max(0.6, probe["column"] + 0.2) and found["row"] > max(0.6, probe["row"] + 0.2)


def test_a_saved_tower_comes_back_with_its_patch_size_and_record(tmp_path):
    tower = new_tower(patch_size=8, seed=3)
    path = save_tower(tower, 8, tmp_path / "tower.safetensors", {"steps": 0})
    loaded, config, record = load_tower(path)
    assert config["patch_size"] == 8 and record == {"steps": 0}
    for name, tensor in tower.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_a_missing_or_foreign_tower_file_is_refused_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="no perception tower at .*nowhere.safetensors"):
        load_tower(tmp_path / "nowhere.safetensors")
    from mgie_core.formats.aligned import save_aligned

    other = save_aligned({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not a perception tower"):
        load_tower(other)


@pytest.mark.skipif(not default_model_path().is_file(), reason="mgie-mini is not built")
def test_a_grafted_tower_sets_the_image_patches_and_survives_a_bundle(tmp_path):
    from mgie_core.formats.bundle import save_bundle

    model = load_model().to("cpu", torch.float32)
    assert model.spec.num_image_patches == 64  # the shipped model's tower: 8 px patches
    tower = new_tower(patch_size=16)
    graft(model, tower, {**model.info["clip_config"], "patch_size": 16})
    assert model.spec.num_image_patches == 16
    assert model.mllm.image_features(torch.rand(1, 3, 64, 64)).shape[1] == 16
    loaded = load_bundle(save_bundle(model, tmp_path / "grafted.safetensors", dtype="fp32"))
    assert loaded.spec.num_image_patches == 16 and loaded.info["clip_config"]["patch_size"] == 16
    for name, tensor in tower.state_dict().items():
        assert torch.equal(loaded.mllm.vision_tower.state_dict()[name], tensor)


@pytest.mark.skipif(not default_model_path().is_file(), reason="mgie-mini is not built")
def test_a_leg_with_a_perception_tower_keeps_it_frozen_and_records_it(tmp_path):
    from train.mini.build import main as build_main

    tower = new_tower(patch_size=16, seed=1)  # not the shipped model's 8 px, so the spec must follow it
    tower_file = save_tower(tower, 16, tmp_path / "tower.safetensors", {"steps": 7})
    work, out = tmp_path / "work", tmp_path / "leg.safetensors"
    argv = ["--init", str(default_model_path()), "--vision-tower", str(tower_file), "--adapt-steps", "2",
            "--start-step", "17600", "--steps", "17602", "--batch-size", "2", "--work", str(work), "--out", str(out)]
    assert build_main(argv) == 0
    before, after = load_model(), load_bundle(out)
    leg = after.info["extra"]["legs"][-1]
    assert leg["vision_tower"] == "tower.safetensors" and leg["vision_tower_record"] == {"steps": 7}
    assert leg["adapt_steps"] == 2 and leg["init_fingerprint"] == before.fingerprint()
    assert after.spec.num_image_patches == 16
    for name, tensor in tower.state_dict().items():  # the tower was not trained (fp16 in the bundle)
        assert torch.equal(after.mllm.vision_tower.state_dict()[name], tensor.half().float())
    # the LLM learnt to read it (the adapted MLLM is kept, fp32, for --resume), the tower stayed as it was
    adapted = load_bundle(work / "adapted.safetensors")
    llm = before.mllm.llm.float().state_dict()
    assert all(not torch.equal(adapted.mllm.llm.state_dict()[k], v) for k, v in llm.items())
    for name, tensor in tower.state_dict().items():
        assert torch.equal(adapted.mllm.vision_tower.state_dict()[name], tensor)
    # --resume takes the adapted MLLM from the work folder instead of adapting again
    log = work / "log.jsonl"
    adapt_rows = log.read_text().count('"phase": "adapt"')
    assert build_main([*argv, "--resume", "--steps", "17603"]) == 0
    assert log.read_text().count('"phase": "adapt"') == adapt_rows
    assert load_bundle(out).info["extra"]["legs"][-1]["steps"] == 17603


def test_a_build_from_scratch_on_a_perception_tower_never_trains_it(tmp_path):
    from train.mini.build import main as build_main

    tower = new_tower(patch_size=8, seed=4)
    tower_file = save_tower(tower, 8, tmp_path / "tower.safetensors", {"steps": 9})
    work, out = tmp_path / "work", tmp_path / "scratch.safetensors"
    argv = ["--vision-tower", str(tower_file), "--vae-steps", "2", "--vae-lr", "1e-3", "--vae-object-weight", "5",
            "--ip2p-steps", "2", "--adapt-steps", "2", "--steps", "2", "--batch-size", "2", "--unet-lr", "2e-3",
            "--work", str(work), "--out", str(out)]
    assert build_main(argv) == 0
    built = load_bundle(out)
    extra = built.info["extra"]
    assert extra["lr"] == 5e-4 and extra["unet_lr"] == 2e-3  # a rate per part, kept in the record
    assert extra["vision_tower"] == "tower.safetensors" and extra["vision_tower_record"] == {"steps": 9}
    assert extra["adapt_steps"] == 2 and built.spec.num_image_patches == 64
    assert extra["vae_object_weight"] == 5 and extra["vae_lr"] == 1e-3  # the one-hour recipe's VAE stage
    assert built.info["clip_config"]["patch_size"] == 8
    for name, tensor in tower.state_dict().items():
        assert torch.equal(built.mllm.vision_tower.state_dict()[name], tensor.half().float())
    log = work / "log.jsonl"
    phases = [json.loads(line)["phase"] for line in log.read_text().splitlines()]
    assert phases.index("adapt") > phases.index("ip2p") and phases[-1] == "joint"  # LLaVA's reading, then MGIE's
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    joint = [row for row in rows if row["phase"] == "joint"]
    assert joint and all(row["lr_unet"] == pytest.approx(4 * row["lr"]) for row in joint)  # one schedule, two peaks
    ip2p = [row for row in rows if row["phase"] == "ip2p"]  # the UNet's first stage runs at its own rate too
    assert ip2p[-1]["step"] == joint[-1]["step"] == 2 and ip2p[-1]["lr"] == pytest.approx(joint[-1]["lr_unet"])
    adapt_rows = phases.count("adapt")
    assert build_main([*argv, "--resume", "--steps", "3"]) == 0  # the adapted MLLM is taken from the work folder
    assert log.read_text().count('"phase": "adapt"') == adapt_rows
    assert load_bundle(out).info["extra"]["steps"] == 3


@pytest.mark.skipif(not default_model_path().is_file(), reason="mgie-mini is not built")
def test_probe_measures_what_a_models_tower_already_sees(capsys):
    from train.mini.perception import main

    assert main(["--probe", str(default_model_path()), "--steps", "20", "--batch-size", "8"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert set(found["accuracy"]) == {"shape", "shape, small", "colour", "size", "nothing"}
    assert found["accuracy"]["colour"] > 0.3  # 20 steps of a readout already find colour (chance 1/6)


@pytest.mark.parametrize("argv", [[], ["--out", "t.safetensors", "--probe", "m.safetensors"]])
def test_perception_wants_out_or_probe(argv, capsys):
    from train.mini.perception import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and "give --out" in capsys.readouterr().err


def test_the_command_writes_its_tower_and_log_into_a_folder_it_makes(tmp_path):
    from train.mini.perception import main

    out = tmp_path / "new" / "tower.safetensors"  # the log goes beside it while training: the folder must exist first
    assert main(["--out", str(out), "--steps", "1", "--batch-size", "2"]) == 0
    assert load_tower(out)[2]["steps"] == 1
    assert json.loads(out.with_suffix(".log.jsonl").read_text().splitlines()[-1])["step"] == 1


def test_a_work_folder_from_before_the_unets_own_rate_resumes_with_both_groups_at_its_rate(tmp_path, monkeypatch):
    import train.mini.build as build

    tower_file = save_tower(new_tower(patch_size=8, seed=4), 8, tmp_path / "tower.safetensors", {"steps": 9})
    work = tmp_path / "work"
    argv = ["--vision-tower", str(tower_file), "--vae-steps", "1", "--ip2p-steps", "1", "--adapt-steps", "1",
            "--batch-size", "2", "--lr", "4e-4", "--work", str(work), "--out", str(tmp_path / "m.safetensors")]
    with monkeypatch.context() as old_build:  # the joint stage as it was: one AdamW group for every part
        old_build.setattr(build, "joint_groups", lambda params, lr, unet_lr=None: [{"params": list(params.values()),
                                                                                    "lr": lr}])
        assert build.main([*argv, "--steps", "2"]) == 0
    assert build.main([*argv, "--resume", "--steps", "3"]) == 0
    rows = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines() if '"joint"' in line]
    assert [row["step"] for row in rows] == [2, 3]
    assert rows[-1]["lr_unet"] == pytest.approx(rows[-1]["lr"])  # the UNet's group kept the rate it had
    assert rows[-1]["lr"] == pytest.approx(4e-4 * build.warmup_cosine(3)(3))  # the schedule went on from step 2
