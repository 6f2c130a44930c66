"""train/mini/derivation.py: the sorting of wrong expressive instructions, and the command."""

from __future__ import annotations

import random

import pytest

from mgie_core import default_model_path
from train.mini import derivation, world


def _scene_edit() -> world.Edit:
    """A recolour of the only triangle, in a scene that also holds a large blue square."""
    objects = (world.Obj("triangle", "red", "small", 0), world.Obj("square", "blue", "large", 4),
               world.Obj("circle", "green", "large", 8))
    scene = world.Scene("light", objects)
    return world.recolour_edit(random.Random(0), scene, objects[0], "make the triangle {new}", "recolour")


@pytest.mark.parametrize("words, expected", [
    ("turn the small red triangle {new}.", None),
    ("turn the small red triangle {other}.", "wrong change"),
    ("turn the small red circle {new}.", "wrong shape"),
    ("turn the small yellow triangle {new}.", "wrong colour"),
    ("turn the large blue square {new}.", "another object"),
    ("turn the large purple circle {new}.", "not in the scene"),
    ("brighten the whole image.", "no object named"),
])
def test_wrong_answers_are_sorted_by_what_they_name(words, expected):
    edit = _scene_edit()
    other = next(c for c in world.COLOURS if c not in (edit.new_colour, "red"))
    assert derivation.miss(edit, words.format(new=edit.new_colour, other=other)) == expected


def test_breakdown_splits_by_family_and_target_size():
    edits = world.edits(3, 50)
    texts = [e.expressive for e in edits]
    texts[0] = "nothing at all."  # one recolour wrong
    table = derivation.breakdown(edits, texts)
    assert table["all"] == {"n": 50, "accuracy": 49 / 50}
    size = f"recolour, {edits[0].target.size} target"
    assert table[size]["misses"] == {"no object named": 1}
    assert table["recolour"]["n"] == 10 and table["recolour"]["accuracy"] == 0.9
    assert sum(table[f"recolour, {s} target"]["n"] for s in ("small", "large") if f"recolour, {s} target" in table) == 10
    assert not any(name.startswith("add,") or name.startswith("global,") for name in table)  # no target size there
    assert list(table)[-1] == "all"
    # a wrong answer that names the target's colour on another shape
    edit = edits[0]
    text = f"turn the {edit.target.size} {edit.target.colour} {next(s for s in world.SHAPES if s != edit.target.shape)} red."
    assert derivation.breakdown([edit], [text])[f"recolour, {edit.target.size} target"]["misses"] == {"wrong shape": 1}


@pytest.mark.skipif(not default_model_path().is_file(), reason="mgie-mini is not built")
def test_command_prints_the_table_for_the_shipped_model(capsys):
    assert derivation.main(["--count", "10"]) == 0
    out = capsys.readouterr().out
    assert "scenes: 10 (seed 777)" in out and "| all | 10 |" in out and "| recolour, " in out


def test_a_count_below_one_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        derivation.main(["--count", "0"])
    assert "--count must be at least 1" in capsys.readouterr().err
