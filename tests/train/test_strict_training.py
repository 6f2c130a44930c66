"""Fine-tuning is as strict as editing: every path and option checked before a model loads, a resumed run goes on
with its own options, every pair checked before training, and each mistake one line."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from PIL import Image
from test_finetune import make_folder_data

import train.finetune as finetune


def run(capsys, *argv: str) -> tuple[int, str]:
    code = finetune.main(list(argv))
    return code, capsys.readouterr().err


def base_args(tiny_root, data, out) -> list[str]:
    return ["--model", str(tiny_root), "--data", str(data), "--output", str(out), "--resolution", "32",
            "--clip-resolution", "32", "--batch-size", "1", "--gradient-accumulation", "1", "--lora-rank", "64",
            "--lora-alpha", "64", "--sample-every", "100", "--sample-steps", "1", "--max-new-tokens", "40",
            "--device", "cpu"]


def test_an_output_that_is_a_file_is_one_line_before_the_model_loads(tiny_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("train.setup.load_model", lambda *a: pytest.fail("the model was loaded"))
    data, out = make_folder_data(tmp_path / "data"), tmp_path / "run"
    out.write_text("a file")
    code, err = run(capsys, *base_args(tiny_root, data, out))
    assert code == 2 and err == f"error: --output {out} is a file; it writes into a folder: give a folder name\n"


def test_a_run_with_every_memory_option_resumes_without_repeating_them_and_refuses_other_values(tiny_root, tmp_path,
                                                                                            capsys):
    data, out = make_folder_data(tmp_path / "data"), tmp_path / "run"
    low = ["--llm-quant", "int8", "--gradient-checkpointing", "--optimizer", "adamw8bit", "--cache-latents"]
    code, err = run(capsys, *base_args(tiny_root, data, out), *low, "--max-steps", "2", "--save-every", "2")
    assert code == 0, err
    saved = (out / "config.json").read_bytes()
    code, err = run(capsys, "--output", str(out), "--data", str(data), "--resume", "latest", "--lora-rank", "8")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--lora-rank 8 (the run's: 64)" in err and "leave them out" in err
    assert (out / "config.json").read_bytes() == saved  # nothing in the run folder changed
    code, err = run(capsys, "--output", str(out), "--data", str(data), "--resume", "latest", "--max-steps", "3")
    assert code == 0, err  # its own options: the 8-bit optimizer states load into the 8-bit optimizer
    config = json.loads((out / "config.json").read_text())
    assert (config["optimizer"], config["llm_quant"], config["max_steps"]) == ("adamw8bit", "int8", 3)
    assert sorted(p.name for p in (out / "checkpoints").iterdir())[-1] == "step-000003"


def test_resume_without_a_run_to_go_on_from_is_one_line(tmp_path, capsys):
    code, err = run(capsys, "--data", str(tmp_path), "--output", str(tmp_path / "nothing"), "--resume", "latest")
    assert code == 2 and "holds no config.json, so no run to go on from" in err


def test_pairs_of_different_shapes_are_named_and_refused_and_sizes_of_one_shape_resized(tmp_path, caplog):
    from mgie_core.formats.pairs import read_triplets

    data = make_folder_data(tmp_path / "data", count=3)
    Image.new("RGB", (100, 37)).save(data / "target" / "s1.png")  # a 40x32 input's target: another shape
    Image.new("RGB", (80, 64)).save(data / "target" / "s2.png")  # the same shape, twice the size
    with caplog.at_level(logging.INFO, logger="mgie.train"):
        report = read_triplets(data)
    assert [t.name for t in report.triplets] == ["s0", "s2"]
    assert report.skipped == ["s1: the input is 40x32 and the target 100x37: of different shapes, their crops would "
                              "show different parts of the scene; give a target of the input's shape"]
    assert "s2: the input is 40x32 and the target 80x64; both are resized to the training size alike" in caplog.text
    with pytest.raises(Exception, match="bad training sample .*s1: the input is 40x32 and the target 100x37"):
        read_triplets(data, strict=True)


def test_the_memory_plan_says_its_sizes_readably(tiny_root, tmp_path, caplog):
    import torch

    from mgie_core import load_model
    from train.config import TrainConfig
    from train.memory import apply_plan

    with caplog.at_level(logging.INFO, logger="mgie.train"):
        apply_plan(load_model(tiny_root), TrainConfig(data="d", output="o", resolution=32), torch.device("cpu"),
                   torch.float32)
    line = next(r.message for r in caplog.records if r.message.startswith("estimated device memory"))
    figures = re.findall(r"([\d.]+) (GiB|MiB|KiB)", line)
    assert len(figures) == 5 and all(float(value) >= 1 for value, _ in figures), line  # no "0.0 GiB" for a tiny model


def test_a_card_no_plan_fits_is_refused_before_training(tiny_root):
    import torch

    from mgie_core import load_model
    from mgie_core.errors import InputError
    from train.config import TrainConfig
    from train.memory import apply_plan

    config = TrainConfig(data="d", output="o", resolution=512, batch_size=64, memory="1")
    with pytest.raises(InputError, match="no memory plan fits a 1 GB card .* the leanest needs .*lower --resolution"):
        apply_plan(load_model(tiny_root), config, torch.device("cpu"), torch.float32)


def test_a_run_draws_its_losses_and_tensorboard_reads_what_report_to_wrote(tmp_path, capsys):
    """Every run writes losses.png at each save; --report-to tensorboard writes event files TensorBoard reads: both
    losses and the learning rate at every step, and the sample edits."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pairs = Path(__file__).resolve().parents[2] / "images" / "sepia-pairs"
    out = tmp_path / "run"
    code, err = run(capsys, "--data", str(pairs), "--output", str(out), "--max-steps", "4", "--save-every", "2",
                    "--sample-every", "2", "--sample-steps", "1", "--device", "cpu", "--report-to", "tensorboard")
    assert code == 0, err
    plot = Image.open(out / "losses.png")
    assert plot.size == (720, 524) and len(set(plot.getdata())) > 3  # two panels, drawn
    events = EventAccumulator(str(out / "logs" / "mgie"), size_guidance={"images": 0})
    events.Reload()
    assert {"loss_ins", "loss_edit", "loss", "learning_rate"} <= set(events.Tags()["scalars"])
    losses = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("loss_ins")] == \
           [(r["step"], round(r["loss_ins"], 5)) for r in losses]
    assert [(i.step, i.width, i.height) for i in events.Images("sample_edit")] == [(2, 192, 64), (4, 192, 64)]


def test_report_to_a_tracker_that_is_not_installed_is_one_line_before_loading(tmp_path, capsys, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    monkeypatch.setattr("train.setup.load_model", lambda *a: pytest.fail("the model was loaded"))
    pairs = Path(__file__).resolve().parents[2] / "images" / "sepia-pairs"
    code, err = run(capsys, "--data", str(pairs), "--output", str(tmp_path / "run"), "--report-to", "wandb")
    assert code == 2 and "--report-to wandb needs the wandb package, which is not installed: pip install wandb" in err


def test_data_that_is_not_there_or_not_a_manifest_is_said_as_such(tmp_path):
    from mgie_core.errors import InputError
    from mgie_core.formats.pairs import read_triplets

    with pytest.raises(InputError, match=r"--data .*nowhere: not found \(looked in .*\); give a folder"):
        read_triplets(tmp_path / "nowhere")
    (tmp_path / "pairs.txt").write_text("a.png b.png")
    with pytest.raises(InputError, match=r"pairs.txt is a file but not a .jsonl manifest"):
        read_triplets(tmp_path / "pairs.txt")
