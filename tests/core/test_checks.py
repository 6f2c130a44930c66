"""Everything is checked before any work, and every front end says what is wrong in one line.

One case (or more) per class of fault a hostile user found: damaged LoRA files, incomplete bundle metadata,
seeds out of range, outputs that cannot be written, logs after a crash, EXIF orientation, file names that look
like globs, manifest fields of the wrong type, and errors found too late (after the LLM ran).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_image
from PIL import Image

from mgie_core import CheckpointError, Edit, EditSettings, InputError, MGIEPipeline, load_model
from mgie_core.formats.bundle import save_bundle
from mgie_core.formats.lora import read_lora, save_lora
from mgie_core.frontends.cli import main
from mgie_core.images import load_image, load_mask

FAST = ["--steps", "2", "--max-new-tokens", "8", "--quiet"]
LAYER = "layers.0.self_attn.q_proj"


def edit_args(tiny_root: Path, image: Path, out: Path, *extra: str) -> list[str]:
    return ["edit", "--model", str(tiny_root), "--image", str(image), "--instruction", "make it red",
            "--out", str(out), *FAST, *extra]


def one_line_error(capsys, code: int, pattern: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err  # one line, no traceback, no blank line before
    assert pytest.importorskip("re").search(pattern, lines[0]), lines[0]
    return lines[0]


# -- damaged LoRA files ---------------------------------------------------------------------------------------
def lora_file(path: Path, model, down=None, up=None, **meta) -> Path:
    weight = model.mllm.llm.get_submodule(LAYER).weight  # (out, in)
    rank = 2
    tensors = {f"mllm.llm.{LAYER}.lora_A.weight": torch.randn(rank, weight.shape[1]) if down is None else down,
               f"mllm.llm.{LAYER}.lora_B.weight": torch.randn(weight.shape[0], rank) if up is None else up}
    header = {"rank": rank, "alpha": 2.0, "base_fingerprint": model.fingerprint(), "base_source": "test", **meta}
    return save_lora(path, tensors, {k: v for k, v in header.items() if v is not None})


def damaged(model, kind: str, path: Path) -> Path:
    weight = model.mllm.llm.get_submodule(LAYER).weight
    out_features, in_features = weight.shape
    cases = {
        "shape": dict(down=torch.randn(2, in_features + 3)),
        "elements only": dict(down=torch.randn(2, in_features).reshape(in_features, 2).contiguous()),
        "rank A/B": dict(up=torch.randn(out_features, 3)),
        "rank metadata": dict(rank=4),
        "no rank": dict(rank=None),
        "zero alpha": dict(alpha=0),
        "nan": dict(up=torch.full((out_features, 2), math.nan)),
        "inf": dict(down=torch.full((2, in_features), math.inf)),
    }
    return lora_file(path, model, **cases[kind])


@pytest.mark.parametrize("kind", ["shape", "elements only", "rank A/B", "rank metadata", "no rank", "zero alpha", "nan",
                                  "inf"])
def test_a_damaged_lora_is_refused_in_one_line_and_writes_nothing(tiny_root, tiny_model, tmp_path, image_path, capsys,
                                                                  kind):
    lora = damaged(tiny_model, kind, tmp_path / "bad.safetensors")
    out = tmp_path / "out.png"
    one_line_error(capsys, main(edit_args(tiny_root, image_path, out, "--lora", str(lora))), str(lora))
    bundle = tmp_path / "merged.safetensors"
    one_line_error(capsys, main(["merge", "--model", str(tiny_root), "--lora", str(lora), "--out", str(bundle)]),
                   str(lora))
    assert not out.exists() and not bundle.exists()


def test_a_lora_that_does_not_fit_leaves_the_model_untouched(tiny_model, tmp_path):
    """The shapes of every adapter are checked before any weight changes: no half-merged model."""
    good = lora_file(tmp_path / "good.safetensors", tiny_model)
    lf = read_lora(good)
    other = tiny_model.mllm.llm.get_submodule("layers.1.self_attn.q_proj").weight
    tensors = {**lf.tensors, "mllm.llm.layers.1.self_attn.q_proj.lora_A.weight": torch.randn(2, other.shape[1] + 1),
               "mllm.llm.layers.1.self_attn.q_proj.lora_B.weight": torch.randn(other.shape[0], 2)}
    bad = save_lora(tmp_path / "bad.safetensors", tensors, {k: v for k, v in lf.meta.items() if "format" not in k})
    before = tiny_model.mllm.llm.get_submodule(LAYER).weight.clone()
    from mgie_core.formats import apply_lora

    with pytest.raises(CheckpointError, match="do not fit"):
        apply_lora(tiny_model, bad)
    assert torch.equal(tiny_model.mllm.llm.get_submodule(LAYER).weight, before)


# -- bundle metadata --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("drop", ["unet_config", "tokenizer.eos_token"])
def test_incomplete_bundle_metadata_is_one_line(tiny_model, tmp_path, drop):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    bundle = save_bundle(tiny_model, tmp_path / "m.safetensors", dtype="fp32")
    with safe_open(str(bundle), framework="pt") as handle:
        meta = dict(handle.metadata())
    key, _, field = drop.partition(".")
    if field:
        inner = json.loads(meta[key])
        del inner[field]
        meta[key] = json.dumps(inner)
    else:
        del meta[key]
    save_file(load_file(str(bundle)), str(bundle), metadata=meta)
    with pytest.raises(CheckpointError, match=f"lacks {drop}.*convert the model again"):
        load_model(bundle)


# -- seeds ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", ["-1", str(2**64), "1.5"])
def test_a_seed_out_of_range_is_refused_before_the_model_loads(tmp_path, image_path, capsys, seed):
    out = tmp_path / "o.png"
    code = main(["edit", "--model", str(tmp_path / "no-model-here"), "--image", str(image_path), "--instruction", "x",
                 "--out", str(out), "--seed", seed]) if seed != "1.5" else None
    if seed == "1.5":
        with pytest.raises(SystemExit):  # argparse: "--seed: '1.5' is not an integer"
            main(["edit", "--image", str(image_path), "--instruction", "x", "--out", str(out), "--seed", seed])
        return
    one_line_error(capsys, code, r"--seed must be an integer from 0 to 2\^64-1")  # not "model not found"


def test_the_largest_seed_edits(tiny_model, image):
    pipe = MGIEPipeline(tiny_model, "cpu", "fp32")
    pipe(image, "make it red", EditSettings(num_inference_steps=1), seed=2**64 - 1)
    with pytest.raises(InputError, match="seed must be an integer from 0"):
        Edit.of(image, "x", seed=-1)


# -- outputs ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["folder", "long name", "parent is a file", "read-only place", "full disk"])
def test_an_output_that_cannot_be_written_is_refused_before_the_edit(tiny_root, tmp_path, image_path, capsys,
                                                                   monkeypatch, case):
    out = {"folder": tmp_path, "long name": tmp_path / ("x" * 300 + ".png"),
           "parent is a file": image_path / "out.png", "read-only place": Path("/proc/mgie-out.png"),
           "full disk": tmp_path / "o.png"}[case]
    if case == "full disk":
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    ran = []
    monkeypatch.setattr("mgie_core.frontends.edit_cli.place_model", lambda *a: ran.append(1))  # the model must not even load
    said = {"folder": "is a folder; give a file name", "long name": "takes at most", "parent is a file":
            "not a writable folder", "read-only place": "cannot write in /proc", "full disk": "MiB free"}[case]
    one_line_error(capsys, main(edit_args(tiny_root, image_path, out)), said)
    assert not ran


# -- logs after a crash -----------------------------------------------------------------------------------------
def test_results_hold_one_record_per_output_after_a_crash_and_a_rerun(tiny_root, tmp_path):
    from mgie_core.frontends.batch import RESULTS

    pictures = tmp_path / "in"
    pictures.mkdir()
    for i in range(3):
        make_image(seed=i).save(pictures / f"p{i}.png")
    out = tmp_path / "out"
    args = ["edit", "--model", str(tiny_root), "--image", str(pictures), "--instruction", "make it red", "--out",
            str(out), "--batch-size", "1", *FAST]
    assert main(args) == 0
    first = {json.loads(line)["out"]: line for line in (out / RESULTS).read_text().splitlines()}
    assert len(first) == 3
    # a crash after p1's picture was written but before its record, a torn line, a record whose picture is gone,
    # and a temporary file a killed writer left
    lines = [line for line in (out / RESULTS).read_text().splitlines() if "p1.png" not in line]
    (out / RESULTS).write_text("\n".join(lines) + '\n{"out": "' + str(out / "gone.png") + '"}\n{"out": "tor')
    (out / ".p2.png.0123abcd.tmp").write_bytes(b"half")
    before = (out / "p1.png").read_bytes()
    assert main(args) == 0
    records = [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]
    assert sorted(r["out"] for r in records) == sorted(str(out / f"p{i}.png") for i in range(3))  # one each
    assert (out / "p1.png").read_bytes() == before  # edited again, the same picture
    assert not list(out.glob(".*.tmp"))
    assert main(args) == 0  # a third run adds nothing
    assert len((out / RESULTS).read_text().splitlines()) == 3


def test_a_single_edit_removes_what_a_killed_run_left(tiny_root, tmp_path, image_path):
    stale = tmp_path / ".out.png.89abcdef.tmp"
    stale.write_bytes(b"half")
    other = tmp_path / ".notes.txt.89abcdef.tmp"  # another output's: left alone
    other.write_bytes(b"x")
    assert main(edit_args(tiny_root, image_path, tmp_path / "out.png")) == 0
    assert not stale.exists() and other.exists()


# -- pictures, masks and names ------------------------------------------------------------------------------------
def test_exif_orientation_is_applied_to_pictures_and_masks(tmp_path):
    picture = make_image(40, 20)
    exif = picture.getexif()
    exif[0x0112] = 6  # stored sideways: shown rotated by 90 degrees
    picture.save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg").size == (20, 40)
    mask = Image.new("L", (40, 20), 255)
    mask.save(tmp_path / "mask.png", exif=exif)
    assert load_mask(tmp_path / "mask.png").shape == (1, 40, 20)


def test_a_file_named_like_a_glob_is_one_picture(tiny_root, tmp_path, capsys):
    path = tmp_path / "photo [1]*?.png"
    make_image().save(path)
    assert main(edit_args(tiny_root, path, tmp_path / "edited.png")) == 0
    assert (tmp_path / "edited.png").is_file() and not (tmp_path / "results.jsonl").exists()


@pytest.mark.parametrize("line, said", [({"image": "p.png", "instruction": 5}, "instruction must be text, got 5"),
                                        ({"image": "p\u0000.png", "instruction": "x"}, "holds a NUL character"),
                                        ({"image": "p.png", "instruction": "x", "seed": "7"}, "seed must be an integer"),
                                        ({"image": "p.png", "instruction": "x", "seed": 2**64}, "from 0 to 2^64-1")])
def test_manifest_fields_of_the_wrong_type_are_named(tmp_path, line, said):
    from mgie_core.frontends.plan import check_inputs, plan_manifest

    make_image().save(tmp_path / "p.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(line) + "\n")
    plan = check_inputs(plan_manifest(manifest, tmp_path / "out", seed=1))
    assert not plan.items and said in plan.refused[0], plan.refused


def test_a_picture_too_small_is_refused_before_the_llm_runs(tiny_model, monkeypatch):
    calls = []
    monkeypatch.setattr("mgie_core.runner.derive", lambda *a, **k: calls.append(1))
    pipe = MGIEPipeline(tiny_model, "cpu", "fp32")
    with pytest.raises(InputError, match="too small"):
        pipe(make_image(1, 1), "make it red")
    with pytest.raises(InputError, match="instruction is too long"):
        pipe.edit_in_chain(make_image(), ["make it red", "go " * 500])
    assert not calls
