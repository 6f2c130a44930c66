"""train/: LoRA invariants, the MGIE objective overfits, exact resume, data formats and bad data."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from conftest import make_image
from PIL import Image, ImageOps

from mgie_core import CheckpointError, EditSettings, InputError, MGIEPipeline, load_model
from mgie_core.formats.lora import apply_lora, read_lora, save_lora
from mgie_core.formats.pairs import read_triplets
from train.adapters import Trainable
from train.config import TrainConfig, config_from_args
from train.loop import train, write_lora

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = EditSettings(max_new_tokens=40, num_inference_steps=4)


def make_folder_data(root: Path, count: int = 3) -> Path:
    """input/NAME.png, target/NAME.png (the input, inverted) and NAME.txt."""
    (root / "input").mkdir(parents=True)
    (root / "target").mkdir()
    for i in range(count):
        image = make_image(40, 32, seed=i)
        image.save(root / "input" / f"s{i}.png")
        ImageOps.invert(image).save(root / "target" / f"s{i}.png")
        (root / f"s{i}.txt").write_text("make it red")
    (root / "s0.expressive.txt").write_text("turn the apple red.")
    return root


def config(tmp_path: Path, tiny_root: Path, data: Path, **overrides) -> TrainConfig:
    values = dict(model=str(tiny_root), data=str(data), output=str(tmp_path / "out"), max_steps=4, batch_size=2,
                  gradient_accumulation=1, resolution=32, clip_resolution=32, learning_rate=3e-3, warmup_steps=1,
                  lora_rank=4, lora_alpha=4.0, save_every=1000, sample_every=1000, sample_steps=2, max_new_tokens=40,
                  gradient_checkpointing=False)
    values.update(overrides)
    return TrainConfig(**values)


def edit(model, seed=3):
    pipe = MGIEPipeline(model, "cpu", "fp32")
    return pipe(make_image(32, 32, seed=9), "make it red", SETTINGS, seed=seed)


def test_fresh_lora_and_strength_zero_change_nothing(tiny_root, tmp_path, caplog):
    base = edit(load_model(tiny_root))
    model = load_model(tiny_root).to(dtype=torch.float32)
    fresh = Trainable(model, config(tmp_path, tiny_root, tmp_path))  # untrained: B = 0, copies of the rest
    path = save_lora(tmp_path / "fresh.safetensors", fresh.export_lora(),
                     {"rank": 4, "alpha": 4.0, "base_fingerprint": model.fingerprint()})
    for strength in (1.0, 0.0):
        with caplog.at_level("INFO", logger="mgie_core"):
            out = edit(apply_lora(load_model(tiny_root), path, strength))
        assert torch.equal(out.output.images, base.output.images)
        assert torch.equal(out.derivation.visual_tokens, base.derivation.visual_tokens)
    applied, unchanged = (r.getMessage() for r in caplog.records if "LoRA" in r.getMessage())
    layers = sum(k.endswith(".lora_A.weight") for k in read_lora(path).tensors)  # the UNet's and the LLM's attention
    assert layers > 0
    assert applied == f"applied LoRA {path} at strength 1 ({layers} adapted layers, the edit head and the [IMG] rows)"
    assert unchanged == f"LoRA {path} at strength 0: the model is unchanged"


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory):
    """A short fine-tuning run whose LoRA is shared by several tests."""
    tmp = tmp_path_factory.mktemp("trained")
    data = make_folder_data(tmp / "data")
    lora = train(config(tmp, tiny_root, data, max_steps=40, sample_every=40, learning_rate=1e-2, lora_unet_convs=True))
    return tmp, lora


def test_training_reduces_both_losses_and_the_lora_changes_the_edit(trained, tiny_root):
    tmp, lora = trained
    losses = [json.loads(line) for line in (tmp / "out" / "losses.jsonl").read_text().splitlines()]
    first, last = losses[:5], losses[-5:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    assert mean(last, "loss_ins") < 0.5 * mean(first, "loss_ins")
    assert mean(last, "loss_edit") < 0.7 * mean(first, "loss_edit")
    assert (tmp / "out" / "samples" / "step-000040.png").is_file()
    base = edit(load_model(tiny_root))
    tuned = edit(apply_lora(load_model(tiny_root), lora, 1.0))
    assert (tuned.output.images - base.output.images).abs().mean() > 1e-3
    meta = read_lora(lora).meta
    assert meta["rank"] == 4 and meta["base_fingerprint"] == load_model(tiny_root).fingerprint()
    assert meta["training_config"]["max_steps"] == 40


def test_merged_equals_unmerged(trained, tiny_root, tmp_path):
    tmp, lora = trained
    # unmerged: peft adapters active at run time, trained tensors loaded from the last checkpoint
    model = load_model(tiny_root).to(dtype=torch.float32)
    trainable = Trainable(model, config(tmp_path, tiny_root, tmp_path, lora_unet_convs=True))
    trainable.load_trainable_state(read_lora(lora).tensors)
    from train.loop import sync_rows

    sync_rows(trainable)
    unmerged = edit(model)
    merged = edit(apply_lora(load_model(tiny_root).to(dtype=torch.float32), lora, 1.0))
    torch.testing.assert_close(merged.derivation.visual_tokens, unmerged.derivation.visual_tokens, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(merged.output.images, unmerged.output.images, rtol=1e-3, atol=1e-3)
    # and a merged bundle gives the same edit as merging at load time
    from mgie_core.frontends.cli import main

    assert main(["merge", "--model", str(tiny_root), "--lora", f"{lora}:1", "--out", str(tmp_path / "m.safetensors"),
                 "--dtype", "fp32"]) == 0
    # (the CLI merges into the stored fp16 weights, the test above into fp32 copies: rounding apart)
    torch.testing.assert_close(edit(load_model(tmp_path / "m.safetensors")).output.images, merged.output.images,
                               rtol=1e-3, atol=1e-3)


def test_lora_for_another_base_is_refused(trained, tiny_root, tmp_path):
    _, lora = trained
    lf = read_lora(lora)
    save_lora(tmp_path / "other.safetensors", lf.tensors, {**lf.meta, "base_fingerprint": "0123456789abcdef"})
    with pytest.raises(CheckpointError, match="trained on another base model"):
        apply_lora(load_model(tiny_root), tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not an MGIE LoRA"):
        from mgie_core.formats.bundle import save_bundle

        apply_lora(load_model(tiny_root), save_bundle(load_model(tiny_root), tmp_path / "b.safetensors"))


def test_resume_continues_exactly(tiny_root, tmp_path):
    data = make_folder_data(tmp_path / "data")
    straight = config(tmp_path / "a", tiny_root, data, max_steps=4, save_every=2)
    train(straight)
    first = config(tmp_path / "b", tiny_root, data, max_steps=2, save_every=2)
    train(first)  # stops right after its step-2 checkpoint
    train(config(tmp_path / "b", tiny_root, data, max_steps=4, save_every=2, resume="latest"))
    from mgie_core.formats.weights import read_state_dict

    a = read_state_dict(tmp_path / "a" / "out" / "checkpoints" / "step-000004" / "trainable.safetensors")
    b = read_state_dict(tmp_path / "b" / "out" / "checkpoints" / "step-000004" / "trainable.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    mid = read_state_dict(tmp_path / "a" / "out" / "checkpoints" / "step-000002" / "trainable.safetensors")
    assert any(not torch.equal(mid[k], a[k]) for k in a)  # the second half really trained


def test_sample_edits_change_nothing_in_the_training(tiny_root, tmp_path):
    """A sample edit at every step trains the same LoRA as none (a sample once froze the adapters for good)."""
    from mgie_core.formats.weights import read_state_dict

    data = make_folder_data(tmp_path / "data")
    quiet = train(config(tmp_path / "quiet", tiny_root, data, max_steps=3, sample_every=1000))
    watched = train(config(tmp_path / "watched", tiny_root, data, max_steps=3, sample_every=1))
    assert len(list((watched.parent / "samples").glob("step-*.png"))) == 3
    a, b = read_state_dict(quiet), read_state_dict(watched)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_both_data_formats(tmp_path):
    folder = make_folder_data(tmp_path / "data")
    manifest = tmp_path / "data" / "train.jsonl"
    manifest.write_text("\n".join(json.dumps({"input": f"input/s{i}.png", "target": f"target/s{i}.png",
                                              "instruction": "make it red", **({"expressive": "turn the apple red."}
                                                                              if i == 0 else {})}) for i in range(3)))
    a, b = read_triplets(folder), read_triplets(manifest)
    assert [(t.input, t.target, t.instruction, t.expressive) for t in a.triplets] == \
           [(t.input, t.target, t.instruction, t.expressive) for t in b.triplets]
    assert a.triplets[0].expressive == "turn the apple red." and a.triplets[1].expressive is None
    # a folder that holds a manifest but no input/ (what train.mini.world writes): the error names the manifest
    shutil.rmtree(folder / "input")
    with pytest.raises(InputError, match=f"holds a manifest: give --data {re.escape(str(manifest))}$"):
        read_triplets(folder)


def test_bad_data_is_reported_by_file_and_strict_is_fatal(tmp_path):
    data = make_folder_data(tmp_path / "data", count=5)
    (data / "input" / "s1.png").write_bytes(b"not a png")
    (data / "target" / "s2.png").unlink()
    (data / "s3.txt").write_text("   ")
    Image.new("RGB", (8, 8)).save(data / "target" / "orphan.png")
    report = read_triplets(data)
    assert [t.name for t in report.triplets] == ["s0", "s4"]
    problems = "\n".join(report.skipped)
    assert len(report.skipped) == 4
    assert "s1: cannot read input" in problems and "s1.png" in problems
    assert "no target/s2.* to pair it with" in problems and "orphan.png: no input/orphan.*" in problems
    assert "s3: the instruction is empty" in problems
    with pytest.raises(InputError, match=r"bad training sample \(.*\); fix it or run without --strict"):
        read_triplets(data, strict=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a.png"}\nnot json\n')
    with pytest.raises(InputError, match="no usable training samples"):
        read_triplets(bad)


def test_missing_expressive_is_derived_once_and_cached(trained):
    tmp, _ = trained
    cache = json.loads((tmp / "out" / "expressive_cache.json").read_text())
    assert len(cache) == 2 and all(v == "turn the apple red." for v in cache.values())  # s0 had its own


def test_finetune_script_with_a_config_file(tiny_root, tmp_path, capsys):
    from train.finetune import main
    data = make_folder_data(tmp_path / "data", count=2)
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": str(tiny_root), "data": str(data), "max-steps": 2, "batch_size": 1,
                               "gradient_accumulation": 2, "resolution": 32, "clip_resolution": 32,
                               "save_every": 1, "sample_every": 100, "max_new_tokens": 40,
                               "no_gradient_checkpointing": None} | {}))
    cfg.write_text(json.dumps({k: v for k, v in json.loads(cfg.read_text()).items() if v is not None}))
    assert main(["--config", str(cfg), "--output", str(tmp_path / "o"), "--lora-rank", "2"]) == 0
    assert Path(capsys.readouterr().out.strip().splitlines()[-1]) == tmp_path / "o" / "lora.safetensors"
    assert read_lora(tmp_path / "o" / "lora.safetensors").meta["rank"] == 2
    assert sorted(p.name for p in (tmp_path / "o" / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert json.loads((tmp_path / "o" / "checkpoints" / "step-000002" / "config.json").read_text())["lora_rank"] == 2


def test_config_errors(tmp_path):
    with pytest.raises(InputError, match="--data is required"):
        config_from_args(["--output", str(tmp_path)])
    with pytest.raises(InputError, match="resolution must be a multiple of 8"):
        config_from_args(["--data", "d", "--output", "o", "--resolution", "30"])
    with pytest.raises(InputError, match="^--max-steps must be from 1 to 1,000,000, got 0$"):  # named by its flag
        config_from_args(["--data", "d", "--output", "o", "--max-steps", "0"])
    (tmp_path / "c.json").write_text('{"bogus": 1}')
    with pytest.raises(InputError, match="unknown option"):
        config_from_args(["--config", str(tmp_path / "c.json"), "--data", "d", "--output", "o"])


def test_every_option_is_described_with_its_default():
    from train.config import parser

    actions = [a for a in parser()._actions if a.option_strings and a.dest not in ("help", "config")]
    assert len(actions) == len(fields(TrainConfig))
    for action in actions:
        assert "default:" in action.help or "(required)" in action.help, action.dest


def test_the_sizes_and_accumulation_default_to_the_models(tiny_root):
    """mgie-mini trains at its working size, one micro-batch a step (5 steps take seconds on a CPU, not minutes);
    a model that recommends no size (Apple's layout) at MGIE-7B's reference 256 / 512 px, accumulating 4."""
    plain = TrainConfig(data="d", output="o")
    mini = plain.for_model(load_model())
    assert (mini.resolution, mini.clip_resolution, mini.gradient_accumulation) == (64, 64, 1)
    apple = plain.for_model(load_model(tiny_root))
    assert (apple.resolution, apple.clip_resolution, apple.gradient_accumulation) == (256, 512, 4)
    chosen = TrainConfig(data="d", output="o", resolution=128, gradient_accumulation=2).for_model(load_model())
    assert (chosen.resolution, chosen.clip_resolution, chosen.gradient_accumulation) == (128, 64, 2)


def test_write_lora_is_atomic(tiny_root, tmp_path):
    model = load_model(tiny_root).to(dtype=torch.float32)
    trainable = Trainable(model, config(tmp_path, tiny_root, tmp_path))
    path = write_lora(trainable, config(tmp_path, tiny_root, tmp_path), tmp_path / "x" / "lora.safetensors")
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    shutil.rmtree(tmp_path / "x")


def test_shared_prompt_prefix_runs_once_with_the_same_states_and_gradients(tiny_root):
    """The system prompt every row shares is run once and its cache repeated: same states, same gradients."""
    from train.objective import Sample, _embed, collate, llm_states, shared_prefix

    model = load_model(tiny_root).to(dtype=torch.float32)
    samples = [Sample(make_image(32, 32, seed=i), make_image(32, 32, seed=i + 5), text, f"{text}, really.")
               for i, text in enumerate(["make it red", "add a hat", "remove the dog"])]
    batch = collate(samples, model, 32, 32)
    prefix = shared_prefix(batch.input_ids, model.spec.im_patch_token_id)
    assert 10 < prefix < batch.input_ids.shape[1] - 1  # the system prompt, not the instructions
    other = batch.input_ids.clone()
    other[1, 1] += 1
    assert shared_prefix(other, model.spec.im_patch_token_id) == 1
    llm = model.mllm.llm.requires_grad_(True)
    embeds = _embed(model, batch.input_ids, None).detach()
    runs = []
    for n in (prefix, 0):
        llm.zero_grad()
        states = llm_states(llm, embeds, batch.attention_mask, n)
        (states * batch.attention_mask[..., None]).pow(2).mean().backward()
        runs.append((states.detach(), [p.grad.clone() for p in llm.parameters() if p.grad is not None]))
    (shared, shared_grads), (full, full_grads) = runs
    torch.testing.assert_close(shared, full, rtol=1e-4, atol=1e-5)
    assert len(shared_grads) == len(full_grads) > 10
    for a, b in zip(shared_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_a_rerun_after_a_kill_keeps_each_step_once_and_removes_half_written_checkpoints(tmp_path):
    from train.loop import clean_up

    (tmp_path / "checkpoints" / ".step-000004.ab12cd").mkdir(parents=True)  # killed while writing step 4
    (tmp_path / "checkpoints" / "step-000002").mkdir()
    lines = [json.dumps({"step": s, "loss_ins": 1.0, "loss_edit": 2.0}) for s in (1, 2, 3, 4)]
    (tmp_path / "losses.jsonl").write_text("\n".join(lines) + '\n{"step": 5, "loss')  # and a torn line
    clean_up(tmp_path, start=2)  # resumed from step 2: steps 3 and 4 are trained again
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000002"]
    assert [json.loads(line)["step"] for line in (tmp_path / "losses.jsonl").read_text().splitlines()] == [1, 2]


def test_ctrl_c_in_training_is_one_line_that_says_how_to_go_on(monkeypatch, capsys):
    import train.finetune as finetune

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "train", interrupted)
    monkeypatch.setattr(finetune, "config_from_args", lambda argv: None)
    assert finetune.main([]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume latest" in err and "Traceback" not in err
