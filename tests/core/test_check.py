"""check: Apple's example through the model, compared word by word; the machinery on the tiny checkpoint (its
own example and expected text injected), since the real comparison needs the real weights."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import make_image
from safetensors.torch import load_file, save_file
from tiny_pieces import build_tiny_pieces

from mgie_core.config import PlacementSettings
from mgie_core.frontends.check import EXPECTED, NEAR, compare, run_check, word_similarity
from mgie_core.frontends.cli import main

TINY_INSTRUCTION = "make the sky blue"
TINY_EXPECTED = "paint the whole sky a deep blue.keep the rest as it is."  # what the tiny model learnt, cleaned


def test_compare_says_identical_near_or_different():
    assert compare(EXPECTED).verdict == "identical" and compare(EXPECTED).similarity == 1.0
    one_word = EXPECTED.replace("luxurious", "lavish")
    near = compare(one_word)
    assert near.verdict == "near" and NEAR <= near.similarity < 1.0
    assert "fp16 numerics" in near.report() and f"word similarity {near.similarity:.2f}" in near.report()
    other = compare("Turn the house into a castle with towers.")
    assert other.verdict == "different" and not other.passed and "the base" in other.report()
    assert word_similarity("a b c d", "a b x d") == pytest.approx(0.75)


def test_right_model_passes(tiny_root, tmp_path, capsys):
    result = run_check(tiny_root, make_image(), TINY_INSTRUCTION, TINY_EXPECTED, PlacementSettings(device="cpu", dtype="fp32"))
    assert result.verdict == "identical" and result.derived == TINY_EXPECTED
    make_image().save(tmp_path / "example.png")
    args = ["check", "--model", str(tiny_root), "--image", str(tmp_path / "example.png"), "--instruction",
            TINY_INSTRUCTION, "--expected", TINY_EXPECTED.replace("deep", "dark"), "--device", "cpu", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"derived:  {TINY_EXPECTED}" in out and "near (word similarity 0.92)" in out


def test_apple_example_from_a_clone_fails_on_a_model_that_is_not_mgie_7b(tiny_root, tmp_path, capsys):
    (tmp_path / "ml-mgie" / "_input").mkdir(parents=True)
    make_image(seed=3).save(tmp_path / "ml-mgie" / "_input" / "3.jpg", format="JPEG")
    args = ["check", "--model", str(tiny_root), "--apple-repo", str(tmp_path / "ml-mgie"), "--device", "cpu", "--quiet"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert f"expected: {EXPECTED}" in out and "\ndifferent (word similarity" in out and "Assemble again" in out


def test_wrong_base_is_caught(tiny_root, tmp_path):
    """A base of the right shape but other weights assembles without complaint; check tells."""
    pieces = build_tiny_pieces(tiny_root, tmp_path / "pieces")
    generator = torch.Generator().manual_seed(0)
    for shard in pieces.llama.glob("*.safetensors"):
        state = load_file(shard)
        save_file({k: (v.float() + 0.3 * torch.randn(v.shape, generator=generator)).to(v.dtype) for k, v in state.items()},
                  shard, metadata={"format": "pt"})
    out = tmp_path / "wrong.safetensors"
    assert main(pieces.args(out)) == 0
    result = run_check(out, make_image(), TINY_INSTRUCTION, TINY_EXPECTED, PlacementSettings(device="cpu", dtype="fp32"))
    assert result.verdict == "different" and not result.passed
    shutil.rmtree(tmp_path / "pieces")


def test_no_example_picture_is_one_line(tiny_root, capsys):
    assert main(["check", "--model", str(tiny_root), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: check needs Apple's example picture: give --apple-repo")
