"""The edit world and its checks (train/mini/world.py, checks.py): no model needed."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.data import read_triplets
from train.mini import world
from train.mini.checks import edit_ok, expressive_ok
from train.mini.evaluate import COLUMNS, Result, ambiguous_group, format_paired, format_table, paired, sign_test, stored

EDITS = world.edits(7, 60)  # every family, twelve each


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, np.int16)


def _with_error(image: Image.Image, amplitude: int, seed: int) -> Image.Image:
    """``image`` plus uniform noise: what a VAE round trip does to every pixel."""
    noise = np.random.default_rng(seed).integers(-amplitude, amplitude + 1, size=_array(image).shape)
    return Image.fromarray(np.clip(_array(image) + noise, 0, 255).astype(np.uint8))


def test_edits_are_deterministic_by_seed_and_cover_every_family():
    again = world.edits(7, 60)
    assert again == EDITS
    assert all((_array(a) == _array(b)).all() for e in EDITS[:10] for a, b in zip(world.images(e), world.images(e)))
    assert {e.family for e in EDITS} == set(world.FAMILIES)
    assert world.edits(8, 60) != EDITS


def test_edits_of_chosen_families_only():
    ambiguous = world.edits(7, 20, ("ambiguous",))
    assert {e.family for e in ambiguous} == {"ambiguous"} and ambiguous == world.edits(7, 20, ("ambiguous",))
    assert len({ambiguous_group(e) for e in ambiguous}) == 5  # every kind shows up
    assert world.edits(7, 60, world.FAMILIES) == EDITS  # the default is every family in turn
    assert [e.family for e in world.edits(7, 4, ("add", "remove"))] == ["add", "remove", "add", "remove"]
    with pytest.raises(ValueError, match="recolour, remove, add, global, ambiguous; got smallest"):
        world.edits(7, 4, ("smallest",))


@pytest.mark.parametrize("edit", EDITS, ids=lambda e: f"{e.family}-{e.kind}")
def test_ground_truth_passes_and_doing_nothing_fails(edit):
    before, target = world.images(edit)
    assert edit_ok(edit, before, target, target).ok
    assert not edit_ok(edit, before, before, target).ok


@pytest.mark.parametrize("edit", [e for e in EDITS if e.target is not None][:12], ids=lambda e: e.kind)
def test_a_local_edit_through_a_lossy_autoencoder_still_counts(edit):
    """About 4/255 of error on every pixel (what mgie-mini's VAE round trip costs) must not hide a right local edit."""
    before, target = world.images(edit)
    assert edit_ok(edit, before, _with_error(target, 7, 0), target).ok


def test_a_wrong_colour_fails_the_region_and_a_changed_rest_fails_the_rest():
    edit = next(e for e in EDITS if e.kind == "recolour" and len(e.before.objects) >= 2)
    before, target = world.images(edit)
    wrong = next(c for c in world.COLOURS if c not in (edit.new_colour, edit.target.colour))
    check = edit_ok(edit, before, world.render(replace(edit.after, objects=tuple(
        replace(o, colour=wrong) if o.cell == edit.target.cell else o for o in edit.after.objects))), target)
    assert not check.region and not check.ok
    other = next(o for o in edit.after.objects if o.cell != edit.target.cell)
    moved = world.render(replace(edit.after, objects=tuple(
        replace(o, colour=wrong if o.colour != wrong else edit.new_colour) if o == other else o for o in edit.after.objects)))
    check = edit_ok(edit, before, moved, target)
    assert check.region and not check.rest and not check.ok


def test_painting_every_shape_does_not_pass_for_the_ambiguous_one():
    edit = next(e for e in EDITS if e.family == "ambiguous" and e.target is not None and len(e.before.objects) >= 3)
    before, target = world.images(edit)
    painted = tuple(replace(o, colour=edit.new_colour) for o in edit.before.objects)
    everything = world.render(replace(edit.before, objects=painted))
    assert not edit_ok(edit, before, everything, target).ok


def test_a_global_edit_must_move_the_picture_the_right_way():
    edit = next(e for e in EDITS if e.kind == "darker")
    before, target = world.images(edit)
    assert not edit_ok(edit, before, world.apply_effect(before, "brighter"), target).ok
    assert edit_ok(edit, before, world.apply_effect(before, "darker"), target).ok


def test_expressive_check_wants_the_right_words_in_order():
    edit = next(e for e in EDITS if e.kind == "recolour")
    assert expressive_ok(edit, edit.expressive)
    old, new = edit.target.colour, edit.new_colour
    third = next(c for c in world.COLOURS if c not in (old, new))
    assert not expressive_ok(edit, edit.expressive.replace(f" {new}.", f" {third}."))
    assert not expressive_ok(edit, f"turn the {new} {edit.target.shape} {old}.")  # colours swapped


@pytest.mark.parametrize("kind, size", [("biggest", "large"), ("smallest", "small")])
def test_ambiguous_instructions_resolve_to_the_unique_object(kind, size):
    for seed in range(20):
        edit = world.make_ambiguous(random.Random(seed), kind)
        assert [o.size for o in edit.before.objects].count(size) == 1 and edit.target.size == size
        assert edit.target.colour in edit.expressive and edit.target.shape in edit.expressive
        assert kind not in edit.expressive  # the expressive instruction names the object, not the riddle


def test_leftmost_and_odd_one_out_name_the_right_object():
    for seed in range(20):
        edit = world.make_ambiguous(random.Random(seed), "leftmost")
        columns = [o.cell % world.GRID for o in edit.before.objects]
        assert edit.target.cell % world.GRID == min(columns) and columns.count(min(columns)) == 1
        edit = world.make_ambiguous(random.Random(seed), "odd_one_out")
        shapes = [o.shape for o in edit.before.objects]
        assert shapes.count(edit.target.shape) == 1 and len(set(shapes)) == 2


def test_written_dataset_is_read_by_the_training_loader(tmp_path):
    manifest = world.write_dataset(tmp_path, seed=3, count=10)
    report = read_triplets(manifest, strict=True)
    assert len(report.triplets) == 10 and not report.skipped
    first = world.edits(3, 10)[0]
    assert report.triplets[0].instruction == first.instruction and report.triplets[0].expressive == first.expressive
    assert (_array(Image.open(report.triplets[0].target)) == _array(world.images(first)[1])).all()


SETTINGS = ("families", "count", "seed", "steps", "guidance_scale", "image_guidance_scale")
EARLIER = "edit success (v17)"  # the README's column for the previous model


@pytest.mark.parametrize("name, guidance, earlier, twin", [
    ("mini-eval.json", 7.5, "mini-eval-v17.json", "mini-eval-v17-twin.json"),
    ("mini-eval-g2.json", 2.0, "mini-eval-v17-g2.json", "mini-eval-v17-twin-g2.json"),
    ("mini-eval-ambiguous.json", 7.5, None, None), ("mini-eval-ambiguous-g2.json", 2.0, None, None),
    ("mini-eval-ambiguous-v17-twin.json", 7.5, None, None), ("mini-eval-ambiguous-v17-twin-g2.json", 2.0, None, None),
    ("mini-eval-ambiguous-v18.json", 7.5, None, None), ("mini-eval-ambiguous-v18-g2.json", 2.0, None, None),
    ("mini-eval-ambiguous-v18-seed4242-g2.json", 2.0, None, None),
    ("mini-fast-eval-g2.json", 2.0, None, None), ("mini-fast-eval-ambiguous-g2.json", 2.0, None, None),
    ("mini-fast5-eval-g2.json", 2.0, None, None), ("mini-fast5-eval-ambiguous-g2.json", 2.0, None, None)])
def test_readme_table_is_the_one_in_bench_mini_eval_json(name, guidance, earlier, twin):
    """The README's mgie-mini figures are exactly those evaluate wrote to bench/ (paper's guidance, and 2;
    every family, beside the previous model's run and the twin's stored run); so are docs/mgie-mini.md's for
    the ambiguous family alone, with the scene-by-scene comparison against the twin, and for the one-hour build."""
    root = Path(__file__).resolve().parents[1]
    figures = json.loads((root / "bench" / name).read_text())
    readme = (root / ("docs/mgie-mini.md" if "ambiguous" in name or "fast" in name else "README.md")).read_text()
    assert figures.get("guidance_scale", 7.5) == guidance
    others = {k: figures.get(k) for k in COLUMNS}
    if earlier:
        before, twins = (json.loads((root / "bench" / f).read_text()) for f in (earlier, twin))
        for other in (before, twins):  # the same scenes and sampler
            assert {k: other[k] for k in SETTINGS} == {k: figures[k] for k in SETTINGS}
        others = {"given_expressive": figures["given_expressive"], "earlier": before["mgie_mini"],
                  "ip2p_twin": twins["ip2p_twin"], "vae_ceiling": figures["vae_ceiling"]}
        # the pairing with the earlier model is the one their stored outcomes give
        assert figures["paired_against"]["file"] == f"bench/{earlier}:mgie_mini"
        ours, theirs = figures["outcomes"]["mgie_mini"], before["outcomes"]["mgie_mini"]
        assert figures["paired_against"]["all"]["only_first"] == sum(a > b for a, b in zip(ours, theirs))
        assert figures["paired_against"]["all"]["only_second"] == sum(a < b for a, b in zip(ours, theirs))
    assert format_table(figures["mgie_mini"], others, {"earlier": EARLIER}) in readme
    if "ambiguous" in name:
        assert figures["families"] == ["ambiguous"] and figures["mgie_mini"]["all"]["n"] == 200
        assert format_paired(figures["paired_ip2p_twin"], "MGIE-mini", "IP2P twin") in readme


@pytest.mark.parametrize("name", ["b8", "snr", "snr-ema", "lr1e-3", "lr2e-3"])
def test_faster_twin_rows_are_their_bench_runs_paired_with_the_hours_twin(name):
    """docs/mgie-mini.md's rows for the twins trained other ways in the hour's budget: each one's edit success and
    its scene-by-scene pairing with the batch-32 twin, as their stored outcomes give them."""
    root = Path(__file__).resolve().parents[1]
    path, base = (root / "bench" / f for f in (f"mini-fast-twin-{name}-ambiguous-g2.json", "mini-fast-eval-ambiguous-g2.json"))
    variant = json.loads(path.read_text())
    settings = {k: variant[k] for k in SETTINGS}
    edits = world.edits(variant["seed"], variant["count"], tuple(variant["families"]))
    rows = paired(stored(edits, f"{path}:ip2p_twin", settings), stored(edits, f"{base}:ip2p_twin", settings))["all"]
    share = round(100 * variant["ip2p_twin"]["all"]["edit_success"])
    assert f"| {share}% | {rows['only_first']} | {rows['only_second']} | {rows['p']:.2g} |" in (
        root / "docs" / "mgie-mini.md").read_text()


@pytest.mark.parametrize("name", ["mini-fast5-eval-g2.json", "mini-fast5-eval-ambiguous-g2.json"])
def test_hours_build_at_lr_1e3_is_paired_with_the_second_try_as_the_docs_say(name):
    """docs/mgie-mini.md's pairing of the hour's build at lr 1e-3 with the second try (lr 5e-4) is the one their
    stored outcomes give; and its twin, on the same VAE, edits scene for scene as the second try's twin at 1e-3."""
    root = Path(__file__).resolve().parents[1]
    figures = json.loads((root / "bench" / name).read_text())
    rows = stored_pairing_holds(name)
    docs = (root / "docs" / "mgie-mini.md").read_text()
    said = rf"\b{rows['only_first']} scenes (only it edited right )?against {rows['only_second']}, p = {rows['p']:.2g}\b"
    assert re.search(said, docs.replace("\n", " ")), said
    if "ambiguous" in name:
        assert rows["only_first"] < rows["only_second"] and rows["p"] < 0.05  # behind the second try, beyond chance
        twin = json.loads((root / "bench" / "mini-fast-twin-lr1e-3-ambiguous-g2.json").read_text())
        assert figures["outcomes"]["ip2p_twin"] == twin["outcomes"]["ip2p_twin"]


def pair(name: str, against: str, column: str = "mgie_mini") -> dict:
    """Two stored runs in bench/ (``against``'s ``column``), scene by scene, over all their scenes."""
    bench = Path(__file__).resolve().parents[1] / "bench"
    figures = json.loads((bench / name).read_text())
    settings = {k: figures[k] for k in SETTINGS}
    edits = world.edits(figures["seed"], figures["count"], tuple(figures["families"]))
    return paired(stored(edits, str(bench / name), settings), stored(edits, f"{bench / against}:{column}", settings))["all"]


def stored_pairing_holds(name: str) -> dict:
    """A bench/ run's stored pairing (``paired_against``) is the one the two runs' stored outcomes give; returns it."""
    figures = json.loads((Path(__file__).resolve().parents[1] / "bench" / name).read_text())
    rows = pair(name, figures["paired_against"]["file"].removeprefix("bench/").removesuffix(":mgie_mini"))
    assert {k: figures["paired_against"]["all"][k] for k in ("only_first", "only_second")} == {
        k: rows[k] for k in ("only_first", "only_second")}
    return rows


def test_hours_build_with_the_unets_own_rate_is_paired_as_the_docs_say():
    """docs/mgie-mini.md's figures for the hour's build with --unet-lr 1e-3 are its stored runs': edit success, and
    scene by scene against the second try, the build at lr 1e-3 and both twins, as their stored outcomes give."""
    root = Path(__file__).resolve().parents[1]
    docs = (root / "docs" / "mgie-mini.md").read_text().replace("\n", " ")
    held, ambiguous = "mini-fast6-eval-g2.json", "mini-fast6-eval-ambiguous-g2.json"
    for name in (held, ambiguous):
        figures = json.loads((root / "bench" / name).read_text())
        assert figures["model"].endswith("mgie-mini-hour-gpu.safetensors") and figures["guidance_scale"] == 2.0
        stored_pairing_holds(name)
    second, second_ambiguous = pair(held, "mini-fast-eval-g2.json"), pair(ambiguous, "mini-fast-eval-ambiguous-g2.json")
    assert (f"{second['only_first']} held-out scenes only this build edited right against {second['only_second']} "
            f"(p = {second['p']:.2g}) and {second_ambiguous['only_first']} ambiguous ones against "
            f"{second_ambiguous['only_second']}") in docs
    fast5, fast5_ambiguous = pair(held, "mini-fast5-eval-g2.json"), pair(ambiguous, "mini-fast5-eval-ambiguous-g2.json")
    assert (f"{fast5['only_first']} against {fast5['only_second']} held out (p = {fast5['p']:.2g}) and "
            f"{fast5_ambiguous['only_first']} against {fast5_ambiguous['only_second']} ambiguous "
            f"(p = {fast5_ambiguous['p']:.2g})") in docs
    for row, suffix in (("held out, guidance 2", "g2"), ("200 ambiguous, guidance 2", "ambiguous-g2")):
        shares = [json.loads((root / "bench" / f"mini-{run}-eval-{suffix}.json").read_text())["mgie_mini"]["all"]
                  ["edit_success"] for run in ("fast", "fast5", "fast6")]
        assert f"| {row}: edit success | " + " | ".join(f"{100 * x:.0f}%" for x in shares) + " |" in docs
    given = json.loads((root / "bench" / "mini-fast6-eval-ambiguous-given-g2.json").read_text())
    ours = json.loads((root / "bench" / ambiguous).read_text())
    assert given["outcomes"]["mgie_mini"] == ours["outcomes"]["mgie_mini"]  # the same run, the true words beside it
    assert (f"it edits {100 * given['given_expressive']['all']['edit_success']:.0f}% of them, against "
            f"{100 * ours['mgie_mini']['all']['edit_success']:.0f}% with its own words") in docs
    twin = pair(ambiguous, "mini-fast-eval-ambiguous-g2.json", "ip2p_twin")
    twin_1e3 = pair(ambiguous, "mini-fast5-eval-ambiguous-g2.json", "ip2p_twin")
    assert twin["p"] < 1e-3 and twin_1e3["p"] < 1e-3
    assert (f"5e-4 by {twin['only_second']} scenes against {twin['only_first']}, the one at 1e-3 by "
            f"{twin_1e3['only_second']} against {twin_1e3['only_first']}") in docs


def test_hours_build_with_a_slower_llm_is_what_its_bench_runs_say():
    """docs/mgie-mini.md's tables and pairings for the hour's build with --lr 2e-4 --unet-lr 1e-3: against the second
    try, the build at 1e-3 (whose VAE it shares: the same scenes pass its round trip) and both twins."""
    root = Path(__file__).resolve().parents[1]
    docs = (root / "docs" / "mgie-mini.md").read_text()
    held, ambiguous = "mini-fast7-eval-g2.json", "mini-fast7-eval-ambiguous-g2.json"
    for name, fast5 in ((held, "mini-fast5-eval-g2.json"), (ambiguous, "mini-fast5-eval-ambiguous-g2.json")):
        figures, before = (json.loads((root / "bench" / f).read_text()) for f in (name, fast5))
        assert format_table(figures["mgie_mini"], {k: figures.get(k) for k in COLUMNS}) in docs
        assert figures["outcomes"]["vae_ceiling"] == before["outcomes"]["vae_ceiling"]
    flat = docs.replace("\n", " ")
    for (first, against), said in {
            (held, "mini-fast-eval-g2.json"): "({} scenes against {} over the second try, p = {})",
            (ambiguous, "mini-fast-eval-ambiguous-g2.json"): "the ambiguous ones ({} against {}, p = {})",
            (held, "mini-fast5-eval-g2.json"): "2e-4 against 1e-3: {} held-out scenes against {} (p = {})"}.items():
        rows = pair(first, against)
        assert said.format(rows["only_first"], rows["only_second"], f"{rows['p']:.2g}") in flat
    rows = pair(ambiguous, "mini-fast5-eval-ambiguous-g2.json")
    assert f"and {rows['only_first']} ambiguous ones against {rows['only_second']} (`bench/mini-fast7" in flat
    slower, slower_ambiguous = pair("mini-fast8-eval-g2.json", held), pair("mini-fast8-eval-ambiguous-g2.json", ambiguous)
    assert (f"({slower['only_first']} scenes against {slower['only_second']} for 2e-4, p = {slower['p']:.2g})") in flat
    assert (f"({slower_ambiguous['only_first']} against {slower_ambiguous['only_second']}, "
            f"p = {slower_ambiguous['p']:.2g}; `bench/mini-fast8") in flat
    again, again_ambiguous = pair("mini-fast7b-eval-g2.json", held), pair("mini-fast7b-eval-ambiguous-g2.json", ambiguous)
    assert f"({again['only_first']} scenes against {again['only_second']} for the first, p = {again['p']:.2g})" in flat
    assert (f"({again_ambiguous['only_first']} against {again_ambiguous['only_second']}, "
            f"p = {again_ambiguous['p']:.2g}; `bench/mini-fast7b") in flat
    for name in ("mini-fast8-eval-g2.json", "mini-fast8-eval-ambiguous-g2.json",  # their stored pairings are these
                 "mini-fast7b-eval-g2.json", "mini-fast7b-eval-ambiguous-g2.json"):
        stored_pairing_holds(name)
    twin, twin_1e3 = (pair(ambiguous, f, "ip2p_twin") for f in ("mini-fast-eval-ambiguous-g2.json",
                                                                 "mini-fast5-eval-ambiguous-g2.json"))
    assert (f"the one at 5e-4 by {twin['only_second']} scenes against {twin['only_first']} (p = {twin['p']:.2g}) and "
            f"the one at 1e-3 by {twin_1e3['only_second']} against {twin_1e3['only_first']}") in flat


def test_sign_test_is_the_exact_two_sided_binomial():
    assert sign_test(10, 0) == sign_test(0, 10) == pytest.approx(2 / 1024)
    assert sign_test(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert sign_test(3, 3) == sign_test(0, 0) == 1.0


def test_paired_counts_the_scenes_only_one_editor_got_right():
    edits = world.edits(7, 10)  # two of each family
    first = [Result(e, None, None, None, ok) for e, ok in zip(edits, [1, 1, 1, 0, 1, 1, 0, 0, 1, 1])]
    second = [Result(e, None, None, None, ok) for e, ok in zip(edits, [1, 0, 0, 0, 0, 1, 1, 0, 0, 0])]
    rows = paired(first, second)
    assert rows["all"] == {"n": 10, "only_first": 5, "only_second": 1, "p": pytest.approx(sign_test(5, 1))}
    assert (rows["ambiguous"]["only_first"], rows["ambiguous"]["only_second"]) == (2, 0)  # scenes 4 and 9
    assert rows["add"] == {"n": 2, "only_first": 1, "only_second": 0, "p": 1.0}
    with pytest.raises(AssertionError, match="same scenes"):
        paired(first, second[::-1])


def test_a_stored_run_that_is_missing_names_the_file(tmp_path):
    from mgie_core.errors import InputError

    for given in (f"{tmp_path / 'old.json'}", f"{tmp_path / 'old.json'}:ip2p_twin"):
        with pytest.raises(InputError, match=r"--against .*old\.json: cannot read it"):
            stored(world.edits(7, 5), given, {})
