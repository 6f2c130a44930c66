"""The legacy (transformers 4.28 slow) LLaMA tokenization rule, checked chunk by chunk."""

from __future__ import annotations

import shutil

import pytest

from mgie_core.errors import CheckpointError
from mgie_core.model.mgie import visual_token_names
from mgie_core.model.tokenizer import LegacyLlamaTokenizer
from mgie_core.stages.prompt import build_prompt


@pytest.fixture()
def tok(tiny_root):
    tokenizer = LegacyLlamaTokenizer.from_folder(tiny_root / "LLaVA-7B-v1")
    tokenizer.add_tokens(visual_token_names(8))
    return tokenizer


def sp(tok, text):
    return tok.sp.encode(text)


def test_added_token_ids_follow_the_vocabulary(tok):
    base = tok.sp.get_piece_size()
    assert tok.added_tokens["<im_patch>"] == base
    assert tok.added_tokens["<im_start>"] == base + 1
    assert tok.added_tokens["<im_end>"] == base + 2
    assert [tok.added_tokens[t] for t in visual_token_names(8)] == list(range(base + 3, base + 11))
    assert tok.vocab_size == base + 11
    assert tok.add_tokens(["[IMG0]"]) == [base + 3]  # re-adding keeps the id


@pytest.mark.parametrize(
    "text, chunks",
    [
        ("hello<im_patch>world", ["hello", "<im_patch>", "world"]),
        ("a cat \n <im_start> sits", ["a cat", "<im_start>", "sits"]),  # both neighbours stripped
        ("<im_patch><im_patch>", ["<im_patch>", "<im_patch>"]),
        ("x <im_patch>  <im_end> y", ["x", "<im_patch>", "<im_end>", "y"]),  # whitespace-only chunk vanishes
        ("  leading and trailing  ", ["  leading and trailing  "]),  # no token: nothing stripped
        ("double  space\ttab", ["double  space\ttab"]),
        ("emoji 😀 here", ["emoji 😀 here"]),
        ("put [IMG0] [IMG1]after", ["put", "[IMG0]", "[IMG1]", "after"]),
        ("[IMG partial <im_patch", ["[IMG partial <im_patch"]),  # incomplete tokens are plain text
        ("done.</s>", ["done.", "</s>"]),
        ("digits 2024 and 3.14", ["digits 2024 and 3.14"]),
    ],
)
def test_legacy_rule(tok, text, chunks):
    assert tok.split(text) == chunks
    expected = [tok.bos_token_id]
    for chunk in chunks:
        expected += [tok.token_to_id(chunk)] if chunk in tok.no_split_tokens else sp(tok, chunk)
    assert tok.encode(text) == expected
    assert tok.encode(text, add_bos=False) == expected[1:]


def test_each_chunk_gets_its_own_dummy_prefix(tok):
    # "world" after a token is encoded as "▁world", exactly like a fresh string would be
    ids = tok.encode("hello<im_patch>world", add_bos=False)
    assert ids[-len(sp(tok, "world")):] == sp(tok, "world")
    assert tok.sp.id_to_piece(sp(tok, "world")[0]).startswith("\u2581")


def test_prompt_newline_and_assistant(tok, tiny_model):
    spec = tiny_model.spec
    ids = tok.encode(build_prompt("make it red", spec))
    start, end = ids.index(spec.im_start_token_id), ids.index(spec.im_end_token_id)
    assert ids[start + 1 : end] == [spec.im_patch_token_id] * spec.num_image_patches
    # the "\n" before <im_start> produces no token; " ASSISTANT:" is encoded as "ASSISTANT:"
    assert tok.sp.piece_to_id("<0x0A>") not in ids
    assert ids[:start] == [tok.bos_token_id] + sp(tok, build_prompt("make it red", spec).split("\n")[0])
    assert ids[end + 1 :] == sp(tok, "ASSISTANT:")
    assert ids[end + 1 :] != sp(tok, " ASSISTANT:")


def test_no_eos_appended_and_bos_first(tok):
    ids = tok.encode("make it red")
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids


def test_decode_writes_added_tokens(tok):
    ids = tok.encode("turn it red. [IMG0] [IMG1]</s>", add_bos=False)
    assert tok.decode(ids) == "turn it red. [IMG0] [IMG1] </s>"


def test_find_special_text(tok):
    assert tok.find_special_text("make it <im_patch> red") == "<im_patch>"
    assert tok.find_special_text("paint [IMG3]") == "[IMG3]"
    assert tok.find_special_text("nothing special <im_") is None


def test_corrupt_tokenizer_model_is_a_clear_error(tiny_root, tmp_path):
    folder = tmp_path / "llava"
    shutil.copytree(tiny_root / "LLaVA-7B-v1", folder)
    (folder / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(CheckpointError, match="tokenizer.model is not a valid SentencePiece model"):
        LegacyLlamaTokenizer.from_folder(folder)


def test_missing_tokenizer_model(tmp_path):
    with pytest.raises(CheckpointError, match="SentencePiece model not found: .*tokenizer.model"):
        LegacyLlamaTokenizer.from_folder(tmp_path)


def test_added_token_gap_is_rejected(tiny_root):
    proto = (tiny_root / "LLaVA-7B-v1" / "tokenizer.model").read_bytes()
    with pytest.raises(CheckpointError, match="expected"):
        LegacyLlamaTokenizer(proto, {"<im_patch>": 999999})
