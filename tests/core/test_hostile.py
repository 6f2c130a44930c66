"""Every input a person or a script can give, second round: each kind of case a hostile run found gets a clear line
or the right result, never a traceback, a black picture or a misleading message.

Kinds: a folder where a file is wanted (and the reverse), a missing folder, a bad strength, an output that would
replace its input, a LoRA that would wreck the model, instructions the model cannot read, an empty mask or manifest,
an animated picture, a picture far above the working size, a model that is not a model, a check against your own
text, a manifest whose bad line must not cost the good ones their pictures.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image
from lora_files import random_lora
from PIL import Image

from mgie_core import Edit, load_model
from mgie_core.config import EditSettings
from mgie_core.formats.lora import read_lora, save_lora
from mgie_core.frontends.cli import main
from mgie_core.runner import AsIs, check_edit

FAST = ["--steps", "2", "--max-new-tokens", "8"]


def edit(tiny_root: Path, image: Path, out: Path, *extra: str) -> list[str]:
    return ["edit", "--model", str(tiny_root), "--image", str(image), "--instruction", "make it red", "--out", str(out),
            *FAST, "--quiet", *extra]


def one_line(capsys, code: int, pattern: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


# -- a folder, a file, a place that is not there ----------------------------------------------------------------
@pytest.mark.parametrize("case, said", [
    ("mask is a folder", r"mask .* is a folder; give a file"),
    ("image is a folder of nothing", r"no pictures there"),
    ("out in a missing folder that cannot be made", r"the folder /proc/nope does not exist, and it cannot be made in /proc"),
    ("lora strength is not a number", r"--lora .*:abc: the strength after ':' must be a number, got 'abc'"),
    ("lora is a folder", r"LoRA .* is a folder; give the LoRA's \.safetensors file"),
    ("lora strength out of range", r"LoRA strength must be from -10 to 10, got 12"),
    ("out is the input", r"--out .* is the input picture: the edit would replace it"),
])
def test_each_misleading_line_now_names_the_real_problem(tiny_root, tiny_model, tmp_path, image_path, capsys, case, said):
    out, extra = tmp_path / "out.png", []
    if case == "mask is a folder":
        extra = ["--mask", str(tmp_path)]
    elif case == "image is a folder of nothing":
        image_path = tmp_path / "empty"
        image_path.mkdir()
        out = tmp_path / "outs"
    elif case == "out in a missing folder that cannot be made":
        out = Path("/proc/nope/x.png")
    elif case.startswith("lora"):
        lora = random_lora(tiny_model, tmp_path / "a.safetensors", seed=1)
        extra = ["--lora", {"lora strength is not a number": f"{lora}:abc", "lora is a folder": str(tmp_path),
                            "lora strength out of range": f"{lora}:12"}[case]]
    elif case == "out is the input":
        out = image_path
    before = image_path.read_bytes() if image_path.is_file() else None
    one_line(capsys, main(edit(tiny_root, image_path, out, *extra)), said)
    if before is not None:
        assert image_path.read_bytes() == before


def test_overwrite_lets_the_output_replace_its_input(tiny_root, tmp_path, capsys):
    picture = tmp_path / "p.png"
    make_image(32, 32).save(picture)
    before = picture.read_bytes()
    assert main(edit(tiny_root, picture, picture, "--overwrite")) == 0
    assert picture.read_bytes() != before


# -- a LoRA that would wreck the model --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, said", [("fp32", "would change .* by .* times its own size"),
                                         ("fp16", "past what float16 holds")])
def test_a_lora_scaled_up_a_million_times_is_refused_when_it_loads(tiny_root, tiny_model, tmp_path, image_path, capsys,
                                                                  dtype, said):
    real = read_lora(random_lora(tiny_model, tmp_path / "real.safetensors", seed=1))
    meta = {k: v for k, v in real.meta.items() if not k.startswith("format")}
    huge = save_lora(tmp_path / "huge.safetensors", {k: v * 1e6 for k, v in real.tensors.items()}, meta)
    out = tmp_path / "out.png"
    one_line(capsys, main(edit(tiny_root, image_path, out, "--lora", str(huge), "--dtype", dtype)), said)
    assert not out.exists()


def test_a_stage_that_produces_nan_stops_the_edit_and_writes_nothing(tiny_root, tmp_path, image_path, capsys,
                                                                     monkeypatch):
    import mgie_core.stages.sample as sample

    decode = sample.decode_latents
    monkeypatch.setattr(sample, "decode_latents", lambda *a: decode(*a) * float("nan"))  # a VAE gone wrong
    out = tmp_path / "out.png"
    one_line(capsys, main(edit(tiny_root, image_path, out)), "the VAE's decoding produced NaN or infinite values, so "
             "the picture would be black; nothing was written. Likely cause: a LoRA")
    assert not out.exists()


# -- what the model cannot read, and pictures worth a word --------------------------------------------------------
def test_an_instruction_mgie_mini_cannot_read_is_said_before_it_runs(tmp_path, caplog):
    model = load_model()
    picture = Image.open(Path(__file__).resolve().parents[2] / "images" / "scene.png").convert("RGB")
    settings = EditSettings()

    def notices(text: str) -> list[str]:
        return check_edit(AsIs(model), Edit.of(picture, text), settings.derive_config(),
                          settings.sample_config(model.recommended_sampling))

    assert notices("make the biggest shape red") == []
    assert "not in English, the only language mgie-mini was trained on" in notices("把最大的形状变成红色")[0]
    assert "knows only the words of its world of flat shapes, and not: healthier" in notices("make it healthier")[0]


def test_a_picture_far_above_the_working_size_says_what_it_will_cost(tiny_model):
    settings = EditSettings(max_side=-1)
    big = torch.rand(3, 2304, 2304)
    notices = check_edit(AsIs(tiny_model), Edit.of(big, "make it red"), settings.derive_config(),
                         settings.sample_config(tiny_model.recommended_sampling))
    assert len(notices) == 1 and "2304x2304 (5.3 megapixels), 5 times the pixels of this model's 1024x1024" in notices[0]
    default = EditSettings().sample_config(tiny_model.recommended_sampling)  # scaled to the working size: no word
    assert check_edit(AsIs(tiny_model), Edit.of(big, "make it red"), settings.derive_config(), default) == []


def test_an_empty_mask_and_an_animated_picture_are_said_in_one_line(tiny_root, tmp_path, caplog):
    frames = [make_image(32, 32, seed=i) for i in range(3)]
    animated = tmp_path / "a.gif"
    frames[0].save(animated, save_all=True, append_images=frames[1:])
    mask = tmp_path / "m.png"
    Image.new("L", (32, 32), 0).save(mask)
    out = tmp_path / "out.png"
    assert main(["edit", "--model", str(tiny_root), "--image", str(animated), "--instruction", "make it red", "--out",
                 str(out), "--mask", str(mask), *FAST]) == 0
    err = caplog.text
    assert "the picture is animated (3 frames): its first frame is edited" in err
    assert "the mask m.png is empty (nothing marked to edit): the picture comes back unchanged" in err
    first = np.asarray(Image.open(animated).convert("RGB").resize((32, 32)), int)
    assert np.abs(np.asarray(Image.open(out), int) - first).max() <= 1  # unchanged, as said


def test_an_empty_manifest_says_so_and_loads_nothing(tmp_path, caplog, monkeypatch):
    import mgie_core.formats as formats

    monkeypatch.setattr(formats, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    manifest = tmp_path / "edits.jsonl"
    manifest.write_text("\n\n")
    assert main(["edit", "--manifest", str(manifest), "--out", str(tmp_path / "out")]) == 0
    assert "holds no edits, so there is nothing to do" in caplog.text


# -- a bad line never costs the good ones their pictures ------------------------------------------------------------
def test_a_manifest_line_with_a_400_character_name_is_refused_and_the_good_line_is_written(tiny_root, tmp_path,
                                                                                         capsys, monkeypatch):
    import mgie_core.frontends.edit_cli as edit_cli

    loads = []
    place = edit_cli.place_model
    monkeypatch.setattr(edit_cli, "place_model", lambda *a: loads.append(1) or place(*a))
    make_image(32, 32).save(tmp_path / "p.png")
    manifest = tmp_path / "edits.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in [
        {"image": "p.png", "instruction": "make it red", "out": "x" * 400 + ".png"},
        {"image": "p.png", "instruction": "make it red", "out": "good.png"}]))
    assert main(["edit", "--model", str(tiny_root), "--manifest", str(manifest), "--out", str(tmp_path / "out"),
                 *FAST, "--quiet"]) == 1
    said = capsys.readouterr().out
    assert "done 1, skipped 0 (already there), failed 1" in said and "edits.jsonl:1: out: the name xxx" in said
    assert [p.name for p in (tmp_path / "out").glob("*.png")] == ["good.png"] and loads == [1]


def test_a_folder_run_writes_every_good_picture_whatever_output_cannot_be_written(tiny_root, tmp_path, capsys,
                                                                                 monkeypatch):
    import mgie_core.frontends.batch as batch

    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for i in range(4):
        make_image(32, 32, seed=i).save(source / f"p{i}.png")
    (out / "p1.png").mkdir(parents=True)  # refused before the model loads: a folder where the picture would go
    save = batch.save_image_atomic

    def full_for_p2(picture, path):  # and a write that fails only when its batch is written
        if Path(path).name == "p2.png":
            raise OSError(28, "No space left on device")
        return save(picture, path)

    monkeypatch.setattr(batch, "save_image_atomic", full_for_p2)
    assert main(["edit", "--model", str(tiny_root), "--image", str(source), "--instruction", "make it red", "--out",
                 str(out), "--batch-size", "2", *FAST, "--quiet"]) == 1
    said = capsys.readouterr().out
    assert "done 2, skipped 0 (already there), failed 2" in said
    assert "p1.png: out " in said and "is a folder" in said and "cannot write" in said and "No space left" in said
    assert sorted(p.name for p in out.glob("*.png") if p.is_file()) == ["p0.png", "p3.png"]
    records = [json.loads(line)["out"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(Path(r).name for r in records) == ["p0.png", "p3.png"]


# -- check: is --model a model, and whose text is it compared with -----------------------------------------------
@pytest.mark.parametrize("kind, said", [
    ("text file", r"is neither Apple's MGIE layout nor an MGIE bundle"),
    ("empty folder", r"is neither Apple's MGIE layout nor an MGIE bundle"),
    ("random safetensors", r"is a safetensors file but not an MGIE bundle"),
    ("a LoRA", r"is an MGIE LoRA, not a model: give the model it was trained on"),
])
def test_check_names_a_model_that_is_not_one_before_asking_for_a_picture(tiny_model, tmp_path, capsys, kind, said):
    from safetensors.torch import save_file

    path = {"text file": tmp_path / "notes.txt", "empty folder": tmp_path / "empty",
            "random safetensors": tmp_path / "r.safetensors", "a LoRA": tmp_path / "l.safetensors"}[kind]
    if kind == "text file":
        path.write_text("not a model")
    elif kind == "empty folder":
        path.mkdir()
    elif kind == "random safetensors":
        save_file({"w": torch.zeros(2)}, str(path))
    else:
        random_lora(tiny_model, path, seed=1)
    line = one_line(capsys, main(["check", "--model", str(path)]), said)
    assert "example picture" not in line and str(path) in line


def test_check_with_your_own_text_speaks_of_that_text_only(tmp_path, capsys):
    make_image(64, 64).save(tmp_path / "p.png")
    code = main(["check", "--model", str(Path(__file__).resolve().parents[2] / "mgie_core" / "assets" /
                                        "mgie-mini.safetensors"), "--image", str(tmp_path / "p.png"), "--instruction",
                 "make it red", "--expected", "a text of my own", "--quiet"])
    out = capsys.readouterr().out
    assert code == 1 and "different" in out and "not the text you expected" in out
    assert "Apple" not in out and "LLaMA" not in out
