"""The static-cache decoder against the decoder it replaced, token for token, and its host syncs per token."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_image
from transformers import DynamicCache, NoRepeatNGramLogitsProcessor

from mgie_core import DeriveConfig
from mgie_core.images import clip_pixel_values
from mgie_core.stages.decode import STOP_CHECK_EVERY, ban_repeated_ngrams, greedy_generate, with_cache
from mgie_core.stages.derive import encode_prompt

CONFIG = DeriveConfig(max_new_tokens=40)
PROMPTS = ["make it red", "add a hat", "make it look like winter", "turn the sky green", "tell me a story"]


@torch.no_grad()
def dynamic_greedy_generate(model, prompt_ids, embeds, config):
    """The decoder before the static cache (2026-12-06), kept as it was: a DynamicCache, transformers' n-gram
    processor, and a host check of the end of every row at every token."""
    llm, eos = model.mllm.llm, model.spec.eos_token_id
    ban = NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size) if config.no_repeat_ngram_size > 0 else None
    cache = DynamicCache()
    hidden = llm(inputs_embeds=embeds, use_cache=True, **with_cache(llm, cache)).last_hidden_state
    states, ids = [hidden], prompt_ids
    lengths = torch.full((ids.shape[0],), ids.shape[1])
    finished = torch.zeros(ids.shape[0], dtype=torch.bool)
    for step in range(config.max_new_tokens):
        scores = model.mllm.logits(hidden[:, -1]).float()
        if ban is not None:
            scores = ban(ids, scores)
        next_id = scores.argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
        lengths += (~finished).long()
        finished |= next_id[:, 0].cpu() == eos
        if bool(finished.all()) or step + 1 == config.max_new_tokens:
            break
        hidden = llm(inputs_embeds=llm.embed_tokens(next_id), use_cache=True, **with_cache(llm, cache)).last_hidden_state
        states.append(hidden)
    states = torch.cat(states, dim=1)
    return [(ids[g, : lengths[g]], states[g, : lengths[g] - 1]) for g in range(ids.shape[0])]


def prompt_batch(model, prompts, seeds):
    ids = torch.cat([encode_prompt(model, p, CONFIG.max_new_tokens) for p in prompts])
    pixels = torch.stack([clip_pixel_values(make_image(seed=s), model.clip_image_config) for s in seeds])
    with torch.no_grad():
        return ids, model.mllm.embed(ids, model.mllm.image_features(pixels), model.spec.im_patch_token_id)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_same_tokens_and_states_as_the_dynamic_decoder(tiny_model, prompt):
    ids, embeds = prompt_batch(tiny_model, [prompt], [1])
    [(old_ids, old_states)] = dynamic_greedy_generate(tiny_model, ids, embeds, CONFIG)
    [(new_ids, new_states)] = greedy_generate(tiny_model, ids, embeds, CONFIG)
    assert torch.equal(new_ids, old_ids)
    torch.testing.assert_close(new_states, old_states, rtol=1e-5, atol=1e-5)


def test_a_batch_whose_rows_end_at_different_tokens(tiny_model):
    ids, embeds = prompt_batch(tiny_model, ["make it red", "add a hat", "make it red"], [1, 2, 3])
    old = dynamic_greedy_generate(tiny_model, ids, embeds, CONFIG)
    new = greedy_generate(tiny_model, ids, embeds, CONFIG)
    assert len({len(i) for i, _ in new}) > 1  # the rows really end apart
    for (a, sa), (b, sb) in zip(old, new):
        assert torch.equal(a, b)
        torch.testing.assert_close(sb, sa, rtol=1e-5, atol=1e-5)


def test_ngram_ban_equals_transformers_processor():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (4, 30), generator=generator)  # a small vocabulary: many repeated n-grams
    scores = torch.randn(4, 6, generator=generator)
    for n in (2, 3, 4):
        expected = NoRepeatNGramLogitsProcessor(n)(ids, scores.clone())
        assert torch.equal(ban_repeated_ngrams(scores, ids, n), expected)
        assert torch.isinf(expected).any()  # the case is not vacuous
    assert torch.equal(ban_repeated_ngrams(scores, ids[:, :2], 3), scores)  # shorter than an n-gram: no ban


def test_host_syncs_once_per_stop_check_not_per_token(tiny_model, monkeypatch):
    model = dataclasses.replace(tiny_model, spec=dataclasses.replace(tiny_model.spec, eos_token_id=-1))  # never ends
    ids, embeds = prompt_batch(model, ["make it red"], [1])
    looks = []
    for name in ("item", "tolist", "cpu", "__bool__", "__int__", "__index__", "__float__", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            looks.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    [(sequence, _)] = greedy_generate(model, ids, embeds, CONFIG)
    monkeypatch.undo()
    assert len(sequence) - ids.shape[1] == CONFIG.max_new_tokens
    # one look per STOP_CHECK_EVERY tokens, the lengths once, the answer's ids once to the CPU
    assert len(looks) <= CONFIG.max_new_tokens // STOP_CHECK_EVERY + 2, looks
