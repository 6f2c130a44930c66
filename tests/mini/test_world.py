"""The edit world and its checks (train/mini/world.py, checks.py): no model needed."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from mgie_core.formats.pairs import read_triplets
from train.mini import world
from train.mini.checks import edit_ok, expressive_ok
from train.mini.evaluate import Result, ambiguous_group, paired, sign_test, stored

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
