"""Fine-tuning in the graph: MGIE Training Pairs, Train MGIE LoRA, Save MGIE LoRA, loaded as ComfyUI loads the pack.

Training runs train/finetune.py in a child process, on the embedded mgie-mini and the shipped sepia pairs: the LoRA
equals the command line's bit for bit, Cancel leaves no file behind, a saved LoRA is listed and changes the edit.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image
from PIL import Image

from mgie_core.formats.lora import read_lora

ROOT = Path(__file__).resolve().parents[2]
PAIRS = ROOT / "images" / "sepia-pairs"
STEPS = dict(training_steps=3, learning_rate=3e-3, lora_rank=4, seed=5, memory="auto", sample_every=100)


def picture_batch(count: int, seed: int = 0) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(make_image(32, 32, seed=seed + i), np.float32) / 255)
                        for i in range(count)])


def mini(nodes):
    return nodes["MGIELoader"].execute(model="mgie-mini (embedded)", dtype="fp32").values[0]


def test_pairs_come_from_a_folder_or_the_graph_and_bad_ones_are_each_named(comfy):
    nodes, tmp_path = comfy[0], comfy[-1]
    pairs = nodes["MGIETrainingPairs"]
    shipped = pairs.execute(folder="sepia-pairs").values[0]  # the pack's example, found where it ships
    assert shipped.count == 6 and shipped.data == PAIRS
    (tmp_path / "input").mkdir()
    mine = shutil.copytree(PAIRS, tmp_path / "input" / "mine")
    (mine / "input" / "p001.png").write_bytes(b"not a picture")
    (mine / "p002.txt").write_text("  ")
    Image.new("RGB", (100, 37)).save(mine / "target" / "p003.png")
    with pytest.raises(ValueError) as refused:
        pairs.execute(folder="mine")
    lines = str(refused.value).splitlines()
    assert lines[0].startswith("3 of the pairs in") and len(lines) == 4  # one line each
    assert "p001: cannot read input" in lines[1] and "p002: the instruction is empty" in lines[2]
    assert "p003: the input is 64x64 and the target 100x37" in lines[3]
    built = pairs.execute(input_images=picture_batch(2), target_images=picture_batch(2, seed=5),
                          instructions="make it red").values[0]
    assert built.count == 2 and built.data.is_relative_to(tmp_path / "temp")
    assert (built.data / "pair-0001.txt").read_text() == "make it red"
    for bad, said in [(dict(folder=""), "no training pairs"), (dict(folder="nowhere"), "training pairs not found"),
                      (dict(input_images=picture_batch(2), target_images=picture_batch(1)), "2 input pictures and 1"),
                      (dict(input_images=picture_batch(2), target_images=picture_batch(2), instructions="a\nb\nc"),
                       "3 instructions for 2 pairs"),
                      (dict(folder="mine", input_images=picture_batch(1), target_images=picture_batch(1)), "not both")]:
        with pytest.raises(ValueError, match=said):
            pairs.execute(**bad)


def test_training_in_the_graph_gives_the_command_lines_lora_and_edits_with_it(comfy, tmp_path, monkeypatch):
    import comfy.utils as progress

    from train.finetune import main

    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # the node's child, as many threads as here
    nodes, base = comfy[0], comfy[-1]
    handle = mini(nodes)
    pairs = nodes["MGIETrainingPairs"].execute(folder="sepia-pairs").values[0]
    trained, model, vae, loss, lora = nodes["MGIETrainLoRA"].execute(mgie_model=handle, pairs=pairs, **STEPS).values
    assert len(loss["loss"]) == 3 and len(set(loss["loss"])) > 1  # Plot Loss Graph draws any two different values
    assert all(isinstance(v, float) for v in loss["loss"]) and loss["loss"][0] == pytest.approx(
        loss["loss_ins"][0] + 0.5 * loss["loss_edit"][0])
    assert (3, 3) in progress.updates and progress.previews[-1][0] == "PNG"
    assert progress.previews[-1][1].size == (192, 64)  # input | sample edit | target
    assert not list((base / "temp").glob("mgie-run-*"))  # the run's folder went once its LoRA was read

    # the terminal's finetune.py with the same options: the same LoRA, bit for bit
    out = tmp_path / "cli"
    assert main(["--data", str(PAIRS), "--output", str(out), "--max-steps", "3", "--learning-rate", "0.003",
                 "--lora-rank", "4", "--lora-alpha", "4", "--seed", "5", "--sample-every", "100", "--save-every", "3",
                 "--device", "cpu"]) == 0
    cli = read_lora(out / "lora.safetensors")
    assert cli.tensors.keys() == lora.tensors.keys()
    assert all(torch.equal(cli.tensors[k], lora.tensors[k]) for k in cli.tensors)
    assert {k: cli.meta[k] for k in ("rank", "alpha", "base_fingerprint")} == \
           {k: lora.meta[k] for k in ("rank", "alpha", "base_fingerprint")}

    # saved into models/mgie_loras: Load MGIE lists it, and it changes the edit
    said = nodes["MGIESaveLoRA"].execute(lora=lora, name="sepia").ui["text"][0]
    saved = base / "models" / "mgie_loras" / "sepia.safetensors"
    assert said == f"Saved {saved}." and torch.equal(read_lora(saved).tensors["visual_rows.lm_head"],
                                                     lora.tensors["visual_rows.lm_head"])
    options = next(i for i in nodes["MGIELoader"].define_schema().inputs if i.id == "lora").extra["options"]
    assert "sepia.safetensors" in options
    image = torch.from_numpy(np.asarray(Image.open(PAIRS / "input" / "p000.png").convert("RGB"), np.float32) / 255)[None]
    args = dict(image=image, instruction="make it look like an old photograph", seed=1, steps=4, guidance_scale=0,
                image_guidance_scale=0, scheduler="auto", max_side=0)
    edited = nodes["MGIEEdit"].execute(mgie_model=trained, **args)
    plain = nodes["MGIEEdit"].execute(mgie_model=mini(nodes), **args)
    with_lora, without = edited.values[0], plain.values[0]
    assert "old, photograph: not words of mgie-mini's own world; they work only if its LoRA" in edited.ui["text"][0]
    assert "mgie-mini knows only the words of its world of flat shapes, and not: old, photograph" in plain.ui["text"][0]
    assert float((with_lora - without).abs().mean()) > 1e-3
    assert "sepia.safetensors" in sys.modules["ComfyUI-MGIE.nodes.runtime"].list_loras()


def test_cancel_during_training_stops_it_and_leaves_no_file_behind(comfy, monkeypatch):
    import comfy.model_management as mm
    import comfy.utils as progress

    nodes, base = comfy[0], comfy[-1]
    update = progress.ProgressBar.update_absolute

    def cancel_after_the_first_step(self, value, total=None, preview=None):
        update(self, value, total, preview)
        if value >= 1:
            mm.interrupt_current_processing()  # the artist presses Cancel

    monkeypatch.setattr(progress.ProgressBar, "update_absolute", cancel_after_the_first_step)
    pairs = nodes["MGIETrainingPairs"].execute(folder="sepia-pairs").values[0]
    with pytest.raises(mm.InterruptProcessingException):
        nodes["MGIETrainLoRA"].execute(mgie_model=mini(nodes), pairs=pairs, **{**STEPS, "training_steps": 200})
    assert max(step for step, _ in progress.updates) < 200  # stopped, not run to the end
    assert not list((base / "temp").glob("mgie-run-*")) and not (base / "models" / "mgie_loras").exists()


def test_a_bad_training_input_is_a_readable_error_on_the_node(comfy):
    nodes = comfy[0]
    handle = nodes["MGIELoader"].execute(model="tiny", dtype="fp32").values[0]  # Apple's layout: not mgie-mini
    pairs = nodes["MGIETrainingPairs"].execute(folder="sepia-pairs").values[0]
    with pytest.raises(ValueError, match="fine-tuning MGIE-7B on a CPU would take days"):
        nodes["MGIETrainLoRA"].execute(mgie_model=handle, pairs=pairs, **STEPS)
    assert nodes["MGIETrainLoRA"].validate_inputs(memory="12 GB") is True
    assert "memory must be auto or your GPU's memory" in nodes["MGIETrainLoRA"].validate_inputs(memory="lots")
    with pytest.raises(ValueError, match="must be a plain file name"):
        nodes["MGIESaveLoRA"].execute(lora=None, name="../escape")
