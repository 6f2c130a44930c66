"""train/mini/derivation.py: the sorting of wrong expressive instructions, and the command."""

from __future__ import annotations

import random
import re

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
    assert table["all"] == {"n": 50, "accuracy": 49 / 50, "unsayable": 0}
    banned = derivation.breakdown(edits, texts, banned=[True] + [False] * 49)
    assert banned["all"]["unsayable"] == banned["recolour"]["unsayable"] == 1 and banned["global"]["unsayable"] == 0
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


@pytest.mark.skipif(not default_model_path().is_file(), reason="mgie-mini is not built")
def test_family_limits_the_scenes_to_it(capsys):
    assert derivation.main(["--count", "10", "--family", "ambiguous"]) == 0
    rows = [line.split(" | ")[0].lstrip("| ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    groups = {row.split(",")[0] for row in rows[1:]} - {"all"}
    assert groups and all(g.startswith("ambiguous/") for g in groups)


def test_a_count_below_one_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        derivation.main(["--count", "0"])
    assert "--count must be at least 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def shipped():
    if not default_model_path().is_file():
        pytest.skip("mgie-mini is not built")
    from mgie_core import load_model

    return load_model()


def _banned_by_transformers(model, edit, n: int) -> bool:
    """The oracle: transformers' own n-gram ban, asked at every answer position of the teacher-forced text."""
    import torch
    from transformers import NoRepeatNGramLogitsProcessor

    from train.objective import conversation_ids

    ids, start = conversation_ids(model, edit.instruction, edit.expressive)
    ban = NoRepeatNGramLogitsProcessor(n)
    for end in range(start, len(ids)):
        scores = ban(torch.tensor([ids[:end]]), torch.zeros(1, model.tokenizer.vocab_size))
        if scores[0, ids[end]] == float("-inf"):
            return True
    return False


@pytest.mark.parametrize("n", [2, 3])
def test_unsayable_agrees_with_the_ban_derivation_applies(shipped, n):
    edits = world.edits(777, 200)
    banned = [derivation.unsayable(shipped, e, n) for e in edits]
    assert banned == [_banned_by_transformers(shipped, e, n) for e in edits]
    if n == 2:  # a 2-gram ban forbids many answers, whatever the tokenizer
        assert any(banned) and not all(banned)


def test_an_unsayable_answer_is_never_derived_and_a_sayable_one_can_be(shipped):
    """Answers a 2-gram ban forbids: derivation under that ban never says them, and without it the same model
    says some of them."""
    from mgie_core import DeriveConfig, MGIEPipeline

    edits = [e for e in world.edits(777, 60) if derivation.unsayable(shipped, e, n=2)][:8]
    assert edits and not any(derivation.unsayable(shipped, e, n=0) for e in edits)
    pipe = MGIEPipeline(shipped, "cpu", "fp32")
    images, texts = [world.images(e)[0] for e in edits], [e.instruction for e in edits]
    said = {}
    for n in (2, 0):
        derived = pipe.derive(images, texts, DeriveConfig(max_new_tokens=48, no_repeat_ngram_size=n))
        said[n] = [answer == e.expressive for answer, e in zip(derived.expressive_instructions, edits)]
    assert not any(said[2]) and any(said[0])


def test_the_builds_tokenizer_has_every_word_whole_and_every_answer_sayable():
    """v8's 512-piece tokenizer spelt sunset s-u-ns-et (27 of 1,000 validation answers unsayable); the build's
    tokenizer now holds each word of the world and the template as one piece."""
    from train.mini.model import TEMPLATE, build_mini

    model = build_mini(0)
    edits = world.edits(777, 1000)
    words = {w for line in TEMPLATE + [t for e in edits for t in (e.instruction, e.expressive)]
             for w in re.findall(r"[A-Za-z]{2,}", line)}
    assert sorted(w for w in words if len(model.tokenizer.sp.encode(w)) > 1) == []
    assert [e.instruction for e in edits if derivation.unsayable(model, e)] == []
