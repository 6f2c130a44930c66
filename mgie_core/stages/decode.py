"""Greedy decoding with a static KV cache: fixed shapes, no host sync per token, a decode step that can be captured.

The same answers as ``generate(do_sample=False, num_beams=1, no_repeat_ngram_size=n)``: the n-gram ban and the
end-of-answer test are tensor operations on the model's device, and the host looks at them only every
:data:`STOP_CHECK_EVERY` tokens (a row that ended keeps decoding until then, and is cut). The hidden states that
feed the visual tokens are the decoder's final-norm output, written into one preallocated buffer; no layer's
other states are kept. With ``compiled``, the one-token step runs under ``torch.compile(mode="reduce-overhead")``
(CUDA graphs on a GPU), one graph per batch size and cache length.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache as _memo
from inspect import signature

import torch
from transformers import Cache, StaticCache

from ..config import DeriveConfig
from ..runtime.progress import ProgressCallback, report

STOP_CHECK_EVERY = 8  # tokens between two looks (host syncs) at whether every row has ended
CACHE_BUCKET = 64  # the KV cache's length is rounded up to this, so prompts of near lengths share a compiled step


def ban_repeated_ngrams(scores: torch.Tensor, ids: torch.Tensor, n: int) -> torch.Tensor:
    """``scores`` (G, V) with -inf where the next token would repeat an n-gram of ``ids`` (G, T); on the device."""
    if n <= 0 or ids.shape[1] < n:
        return scores
    windows = ids.unfold(1, n, 1)  # (G, T - n + 1, n)
    seen = (windows[:, :, :-1] == ids[:, None, ids.shape[1] - n + 1 :]).all(-1)  # (G, W): prefix = the last n-1
    hits = torch.zeros_like(scores).scatter_add_(1, windows[:, :, -1], seen.to(scores.dtype))  # (G, V)
    return scores.masked_fill(hits > 0, float("-inf"))


def static_cache(llm: torch.nn.Module, length: int) -> StaticCache:
    """A cache for ``length`` positions, rounded up to :data:`CACHE_BUCKET` (unused positions are masked)."""
    return StaticCache(config=llm.config, max_cache_len=-(-length // CACHE_BUCKET) * CACHE_BUCKET)


@_memo
def _cache_keyword(llm_class: type) -> str:
    names = signature(llm_class.forward).parameters
    return "cache" if "cache" in names else "past_key_values"


def with_cache(llm: torch.nn.Module, cache: Cache) -> dict:
    """The keyword by which ``llm``'s forward takes a KV cache: ``cache`` in recent transformers 5
    releases (where ``past_key_values`` is deprecated and goes in 5.40), ``past_key_values`` before."""
    return {_cache_keyword(type(llm)): cache}


def _forward(llm: torch.nn.Module, embeds: torch.Tensor, positions: torch.Tensor, cache: dict) -> torch.Tensor:
    """The decoder on ``embeds`` (G, S, H) at ``positions`` (1, S), writing the cache that ``cache`` passes
    (:func:`with_cache`): final-norm states (G, S, H)."""
    return llm(inputs_embeds=embeds, position_ids=positions, use_cache=True, **cache).last_hidden_state


def decode_step(llm: torch.nn.Module, token: torch.Tensor, position: torch.Tensor, cache: dict) -> torch.Tensor:
    """One token per row: (G, 1) ids at ``position`` (1, 1) -> (G, 1, H) states. Shapes never change."""
    return _forward(llm, llm.embed_tokens(token), position, cache)


@_memo
def compiled_step() -> Callable:
    """:func:`decode_step` under ``torch.compile(mode="reduce-overhead")``: one wrapper for every LLM (the LLM is
    an argument; dynamo's guards keep a graph per model and shape)."""
    return torch.compile(decode_step, mode="reduce-overhead", dynamic=False)


@torch.no_grad()
def greedy_generate(model, prompt_ids: torch.Tensor, embeds: torch.Tensor, config: DeriveConfig,
                    callback: ProgressCallback | None = None,
                    compiled: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Greedy decoding for G prompts of one length L: per prompt, the full sequence (T,) and the final-norm
    states (T - 1, H) (every prompt position, then one per generated token but the last), as
    ``generate(do_sample=False, num_beams=1)`` would. Rows that ended keep decoding with the others (nothing
    is shared between rows) and are cut."""
    llm, eos, budget = model.mllm.llm, model.spec.eos_token_id, config.max_new_tokens
    rows, length = prompt_ids.shape
    device = embeds.device
    cache = with_cache(llm, static_cache(llm, length + budget))
    hidden = _forward(llm, embeds, torch.arange(length, device=device)[None], cache)  # (G, L, H)
    ids = torch.zeros(rows, length + budget, dtype=torch.long, device=device)
    ids[:, :length] = prompt_ids.to(device)
    states = hidden.new_zeros(rows, length + budget - 1, hidden.shape[-1])
    states[:, :length] = hidden
    lengths = torch.full((rows,), length, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    step_fn = compiled_step() if compiled else decode_step
    last = hidden[:, -1]  # (G, H)
    for step in range(budget):
        current = length + step
        scores = ban_repeated_ngrams(model.mllm.logits(last).float(), ids[:, :current], config.no_repeat_ngram_size)
        token = scores.argmax(dim=-1)  # (G,)
        ids[:, current] = token
        lengths += (~finished).long()
        finished |= token == eos
        report(callback, step + 1, budget)
        if step + 1 == budget or ((step + 1) % STOP_CHECK_EVERY == 0 and bool(finished.all())):
            break
        position = torch.full((1, 1), current, device=device)
        last = step_fn(llm, token[:, None], position, cache)[:, 0]  # (G, H)
        states[:, current] = last
    lengths = lengths.tolist()  # the one look at the answers' ends after the loop
    return [(ids[g, : lengths[g]].cpu(), states[g, : lengths[g] - 1]) for g in range(rows)]
