"""Many edits in one run (``edit --image DIR|GLOB`` or ``--manifest``): planning, untrusted manifests, resuming a
killed run to the same files, per-item seeds and masks, and two processes under accelerate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import accelerate_launch, make_image
from PIL import Image

from mgie_core.frontends.cli import main
from mgie_core.frontends.plan import Item, check_inputs, plan_images, plan_manifest
from mgie_core.frontends.shares import batches, deal

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--steps", "3", "--max-new-tokens", "40", "--quiet"]


def pictures(folder: Path, count: int, size=(40, 32)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        make_image(*size, seed=i).save(folder / f"p{i}.png")
    return folder


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_a_folder_or_a_glob_plans_one_output_each_and_refuses_shared_names(tmp_path):
    source = pictures(tmp_path / "in", 3)
    (source / "notes.txt").write_text("not a picture")
    plan = check_inputs(plan_images(str(source), "make it red", tmp_path / "out", 7))
    assert [i.out.name for i in plan.items] == ["p0.png", "p1.png", "p2.png"] and not plan.refused
    assert {i.seed for i in plan.items} == {7}
    assert [i.out.name for i in plan_images(str(source / "p[01].png"), "x", tmp_path, 0).items] == ["p0.png", "p1.png"]
    make_image(8, 8).save(source / "p1.jpg")  # p1.png and p1.jpg would both write p1.png
    plan = check_inputs(plan_images(str(source), "make it red", tmp_path / "out", 7))
    assert [i.out.name for i in plan.items] == ["p0.png", "p2.png"]
    assert len(plan.refused) == 2 and all("its output p1.png is also another item's" in r for r in plan.refused)


def test_a_manifest_is_untrusted(tmp_path):
    data = pictures(tmp_path / "data", 2)
    (tmp_path / "secret.png").write_bytes((data / "p0.png").read_bytes())
    (data / "link.png").symlink_to(tmp_path / "secret.png")
    lines = [{"image": "p0.png", "instruction": "make it red", "seed": 3, "out": "a/b.png"},
             {"image": "../secret.png", "instruction": "x"}, {"image": str(tmp_path / "secret.png"), "instruction": "x"},
             {"image": "link.png", "instruction": "x"}, {"image": "p1.png", "instruction": "x", "out": "../escape.png"},
             {"image": "p1.png", "instruction": "x", "mask": "../secret.png"}, {"image": "p1.png", "instruction": "  "},
             {"image": "p1.png", "instruction": "x", "seed": -1}, {"image": "p1.png", "instructions": "typo"},
             {"image": "p1.png", "instruction": "x", "out": "same.png"},
             {"image": "p0.png", "instruction": "y", "out": "same.png"}]
    manifest = tmp_path / "data" / "edits.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n\nnot json\n")
    plan = check_inputs(plan_manifest(manifest, tmp_path / "out", seed=13331))
    assert [(i.where, i.out, i.seed) for i in plan.items] == [("edits.jsonl:1", tmp_path / "out" / "a" / "b.png", 3)]
    refused = {r.split(": ", 1)[0]: r.split(": ", 1)[1] for r in plan.refused}
    for line, said in [(2, "image '../secret.png' leaves the manifest's folder"), (3, "leaves the manifest's folder"),
                       (4, "image 'link.png' leaves the manifest's folder"), (5, "out '../escape.png' leaves the output folder"),
                       (6, "mask '../secret.png' leaves the manifest's folder"), (7, "the instruction is empty"),
                       (8, "seed must be an integer from 0 to 2^64-1, got -1"), (9, "unknown field(s) instructions"),
                       (10, "its output same.png is also another item's"), (11, "its output same.png is also another item's"),
                       (13, "Expecting value")]:
        assert said in refused[f"edits.jsonl:{line}"], line
    assert len(plan.refused) == 11


def test_batches_have_fixed_boundaries_and_are_dealt_round_robin():
    items = [Item(str(i), Path(f"{i}.png"), ("x",), (Path(f"o{i}.png"),)) for i in range(7)]
    assert [[i.where for i in b] for b in batches(items, 3)] == [["0", "1", "2"], ["3", "4", "5"], ["6"]]
    work = batches(items, 2)  # 4 batches over 3 processes: two rounds, the second with one batch
    dealt = [list(deal(work, rank, 3)) for rank in range(3)]
    assert [len(d) for d in dealt] == [2, 2, 2]  # every process takes part in every round
    assert dealt[0] == [work[0], work[3]] and dealt[1] == [work[1], None] and dealt[2] == [work[2], None]


def test_a_folder_run_writes_each_output_and_results_then_a_killed_run_ends_with_the_same_files(tiny_root, tmp_path, capsys):
    source, out = pictures(tmp_path / "in", 5), tmp_path / "out"
    argv = ["edit", "--model", str(tiny_root), "--image", str(source), "--instruction", "make it red", "--out", str(out),
            "--batch-size", "2", *FAST]
    assert main(argv) == 0
    assert "done 5, skipped 0 (already there), failed 0" in capsys.readouterr().out
    whole = files(out)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(whole) == 5 and [Path(r["out"]).name for r in results] == list(whole)
    assert results[0]["instruction"] == "make it red" and results[0]["understood_as"] == "turn the apple red."
    assert results[0]["seed"] == 13331
    assert results[0]["settings"]["num_inference_steps"] == 3 and results[0]["seconds"] > 0
    # killed after the first batch: batches 2 and 3 are edited again, whole, and give the same files
    for name in ("p2.png", "p4.png"):
        (out / name).unlink()
    assert main(argv) == 0
    assert "done 2, skipped 3 (already there), failed 0" in capsys.readouterr().out  # p3 was there: kept
    assert files(out) == whole
    assert main([*argv, "--overwrite"]) == 0 and "done 5, skipped 0" in capsys.readouterr().out


def test_a_bad_item_is_reported_and_the_run_goes_on_with_a_nonzero_exit(tiny_root, tmp_path, capsys):
    data = pictures(tmp_path / "data", 2)
    (data / "broken.png").write_bytes(b"not a png")
    Image.new("L", (40, 32), 255).save(data / "all.png")
    manifest = data / "edits.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in [
        {"image": "p0.png", "instruction": "make it red"}, {"image": "broken.png", "instruction": "make it red"},
        {"image": "p1.png", "instruction": "make it red", "mask": "missing.png"},
        {"image": "p1.png", "instruction": "make it red", "mask": "all.png", "out": "p1-masked.png"}]))
    assert main(["edit", "--model", str(tiny_root), "--manifest", str(manifest), "--out", str(tmp_path / "out"), *FAST]) == 1
    out = capsys.readouterr().out
    assert "done 2, skipped 0 (already there), failed 2" in out
    assert "failed: edits.jsonl:2: cannot read image" in out and "failed: edits.jsonl:3: mask not found" in out
    assert sorted(files(tmp_path / "out")) == ["p0.png", "p1-masked.png"]


def test_each_item_has_its_own_seed_and_mask(tiny_root, tmp_path, capsys):
    data = pictures(tmp_path / "data", 1)
    mask = np.zeros((32, 40), np.uint8)
    mask[8:24, 10:30] = 255
    Image.fromarray(mask).save(data / "mask.png")
    lines = [{"image": "p0.png", "instruction": "make it red", "seed": 1, "out": "s1.png"},
             {"image": "p0.png", "instruction": "make it red", "seed": 2, "out": "s2.png"},
             {"image": "p0.png", "instruction": "make it red", "seed": 1, "out": "masked.png", "mask": "mask.png"}]
    (data / "edits.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    argv = ["edit", "--model", str(tiny_root), "--manifest", str(data / "edits.jsonl"), "--out", str(tmp_path / "out"),
            *FAST]
    assert main(argv) == 0
    out = {n: np.asarray(Image.open(tmp_path / "out" / n), int) for n in ("s1.png", "s2.png", "masked.png")}
    source = np.asarray(Image.open(data / "p0.png"), int)
    assert np.abs(out["s1.png"] - out["s2.png"]).mean() > 1  # another seed, another picture
    assert (out["masked.png"][mask == 0] == source[mask == 0]).all()  # outside the mask: the input
    assert np.abs(out["masked.png"][12:20, 14:26] - source[12:20, 14:26]).mean() > 1  # inside: edited
    single = tmp_path / "single.png"  # the first item, edited on its own with its seed, is the same picture
    assert main(["edit", "--model", str(tiny_root), "--image", str(data / "p0.png"), "--instruction", "make it red",
                 "--out", str(single), "--seed", "1", *FAST]) == 0
    assert np.abs(np.asarray(Image.open(single), int) - out["s1.png"]).max() <= 1


@pytest.mark.parametrize("argv, message", [
    (["--out", "o.png", "--image", "DIR"], "editing several images writes into a folder"),
    (["--out", "o", "--image", "DIR", "--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--out", "o", "--image", "DIR"], "--instruction is empty"),
    (["--out", "o", "--image", "DIR/*.webp", "--instruction", "x"], "no pictures there"),
    (["--out", "o.png", "--instruction", "x"], "give --image (a file, a folder or a glob) or --manifest"),
])
def test_bad_options_are_one_line_errors(argv, message, tmp_path, capsys):
    folder = pictures(tmp_path / "in", 1)
    argv = [str(folder) + a[3:] if a.startswith("DIR") else a for a in argv]
    assert main(["edit", *argv, "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_two_processes_under_accelerate_write_what_one_writes(tiny_root, tmp_path):
    source = pictures(tmp_path / "in", 5)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # the same threads: the same rounding
    edit = ["-m", "mgie_core", "edit", "--model", str(tiny_root), "--image", str(source), "--instruction", "make it red",
            "--batch-size", "2", "--device", "cpu", *FAST]
    one = subprocess.run([sys.executable, *edit, "--out", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([*accelerate_launch(2), *edit, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                         text=True)
    assert two.returncode == 0, two.stderr
    assert files(tmp_path / "two") == files(tmp_path / "one") and len(files(tmp_path / "one")) == 5
    assert two.stdout.count("done 5, skipped 0 (already there), failed 0") == 1  # the main process's summary only
    results = (tmp_path / "two" / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(r)["out"] for r in results) == sorted(str(tmp_path / "two" / n) for n in files(tmp_path / "one"))


def test_a_run_of_several_processes_leaves_its_process_group(tmp_path):
    import torch.distributed as dist

    from mgie_core.runtime.devices import leave_process_group

    leave_process_group()  # none started: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        leave_process_group()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_outputs_of_another_edit_are_refused_before_the_model_loads_not_skipped(tiny_root, tmp_path, capsys, monkeypatch):
    source, out = pictures(tmp_path / "in", 3), tmp_path / "out"
    argv = ["edit", "--model", str(tiny_root), "--image", str(source), "--out", str(out), *FAST]
    assert main([*argv, "--instruction", "make it red"]) == 0
    first = files(out)
    capsys.readouterr()
    assert main([*argv, "--instruction", "make it red"]) == 0  # the same edit again: nothing to do
    assert "done 0, skipped 3" in capsys.readouterr().out
    import mgie_core.formats as formats

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(formats, "load_model", no_load)
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in first:
        Image.new("L", (40, 32), 255).save(masks / name)
    for other in (["--instruction", "make it blue"], ["--instruction", "make it red", "--seed", "5"],
                  ["--instruction", "make it red", "--mask", str(masks)]):
        err = main_error([*argv, *other], capsys)
        assert f"3 of the outputs are already in {out} from another edit: p0.png (" in err and "--overwrite" in err
        assert files(out) == first
    assert "instruction differ" in main_error([*argv, "--instruction", "make it blue"], capsys)
    monkeypatch.undo()
    # the settings are known once the model is: other steps are another edit too
    assert "settings differ" in main_error([*argv, "--instruction", "make it red", "--steps", "4"], capsys)
    assert main([*argv, "--instruction", "make it blue", "--overwrite"]) == 0
    assert files(out) != first and "done 3, skipped 0" in capsys.readouterr().out
    assert main([*argv, "--instruction", "make it blue"]) == 0 and "skipped 3" in capsys.readouterr().out


def main_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2  # a one-line input error
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    return err


KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import mgie_core.frontends.batch as batch
from mgie_core.frontends.cli import main
save, written = batch.save_image_atomic, []

def save_then_die(picture, path):  # killed in the middle of the second batch: its first picture written, no record
    save(picture, path)
    written.append(path)
    if len(written) == 3:
        os.kill(os.getpid(), signal.SIGKILL)

batch.save_image_atomic = save_then_die
sys.exit(main({argv!r}))
"""


def test_a_run_killed_in_the_middle_of_its_second_batch_ends_with_the_files_of_an_uninterrupted_run(tmp_path, capsys):
    """SIGKILL right after the first picture of batch 2 is written: the rerun edits batch 2 again, whole, and every
    file is the uninterrupted run's, byte for byte (on mgie-mini, the embedded model; the killed process with as many
    threads as this one)."""
    import torch

    source = pictures(tmp_path / "in", 6, size=(64, 64))
    edit = ["edit", "--image", str(source), "--instruction", "make it red", "--batch-size", "2", *FAST]
    assert main([*edit, "--out", str(tmp_path / "whole")]) == 0
    argv = [*edit, "--out", str(tmp_path / "killed")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed = subprocess.run([sys.executable, "-c", KILLER.format(root=str(ROOT), argv=argv)], env=env,
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr  # killed, as planned
    assert sorted(files(tmp_path / "killed")) == ["p0.png", "p1.png", "p2.png"]
    capsys.readouterr()
    assert main(argv) == 0
    assert "done 4, skipped 2 (already there), failed 0" in capsys.readouterr().out  # batch 2 again, whole, batch 3
    assert files(tmp_path / "killed") == files(tmp_path / "whole")
