"""Stage 1, derive: image + brief instruction -> expressive instruction + visual tokens (docs/algorithm.md §2.1-2.7).

The MLLM reads the prompt with the image's CLIP features spliced in at ``<im_patch>``, answers
greedily (``no_repeat_ngram_size`` over prompt and answer), and the final-norm hidden states
that *predict* ``[IMG0]..[IMG{K-1}]`` become the visual tokens. An artist-edited expressive
instruction replaces the answer: the visual tokens are then read off one teacher-forced pass,
by the same rule, as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..config import DeriveConfig
from ..errors import InputError
from ..images import ImageLike, clip_pixel_values
from ..model.mgie import MGIEModel
from ..runtime.progress import ProgressCallback, report
from .decode import greedy_generate
from .finite import check_finite
from .prompt import build_conversation, build_prompt, check_instruction, clean_expressive


@dataclass(frozen=True)
class Derivation:
    """What the MLLM derived for a batch of B edits.

    token_ids: B sequences (T_b,), prompt included; generated ones end at ``</s>`` or the token budget.
    prompt_lengths: B prompt lengths (the answer starts there).
    visual_tokens: (B, K, H) hidden states behind the ``[IMG]`` tokens, in the LLM's dtype.
    expressive_instructions: B display texts.
    overridden: B flags, True where the artist's text replaced the derived one.
    """

    token_ids: tuple[torch.Tensor, ...]
    prompt_lengths: tuple[int, ...]
    visual_tokens: torch.Tensor
    expressive_instructions: tuple[str, ...]
    overridden: tuple[bool, ...]

    def __len__(self) -> int:
        return len(self.token_ids)


def derive(
    model: MGIEModel,
    images: Sequence[ImageLike],
    instructions: Sequence[str],
    config: DeriveConfig,
    expressive_overrides: Sequence[str | None] | None = None,
    callback: ProgressCallback | None = None,
    compiled: bool = False,
) -> Derivation:
    """Derive expressive instructions and visual tokens for ``len(images)`` edits.

    ``instructions`` (and ``expressive_overrides``) hold one entry per image; an override that is
    ``None`` or blank means "derive it". ``compiled``: the decode step under torch.compile (a GPU's CUDA graphs).
    """
    images, instructions = list(images), list(instructions)
    overrides = list(expressive_overrides) if expressive_overrides is not None else [None] * len(images)
    if not images or len(instructions) != len(images) or len(overrides) != len(images):
        raise InputError(
            f"derive needs one instruction (and override) per image, got {len(images)} images, "
            f"{len(instructions)} instructions, {len(overrides)} overrides"
        )
    tokenizer, spec, mllm = model.tokenizer, model.spec, model.mllm
    instructions = [check_instruction(text, tokenizer) for text in instructions]
    pixels = torch.stack([clip_pixel_values(im, model.clip_image_config) for im in images])  # (B, 3, S, S)
    features = mllm.image_features(pixels)  # (B, N, H)

    results: dict[int, tuple] = {}
    for b, override in enumerate(overrides):
        if override is not None and override.strip():
            check_instruction(override, tokenizer, what="expressive instruction")
            results[b] = _teacher_forced(model, instructions[b], override.strip(), features[b : b + 1])
    # Prompts of equal length (always, for one instruction over an image batch) decode together.
    prompts = {b: encode_prompt(model, instructions[b], config.max_new_tokens)
               for b in range(len(images)) if b not in results}
    groups: dict[int, list[int]] = {}
    for b, ids in prompts.items():
        groups.setdefault(ids.shape[1], []).append(b)
    done, total = len(results), len(images) * config.max_new_tokens
    for members in groups.values():
        step_callback = _batch_callback(callback, done, len(members), len(images), config.max_new_tokens)
        for b, item in zip(members, _generated(model, torch.cat([prompts[b] for b in members]),
                                               features[members], config, step_callback, compiled)):
            results[b] = item
        done += len(members)
        report(callback, done * config.max_new_tokens, total)
    ids, prompt_lengths, states, texts, flags = zip(*(results[b] for b in range(len(images))))
    visual = torch.stack([select_visual_tokens(s, t, spec.visual_token_ids[0], spec.num_visual_tokens)
                          for s, t in zip(states, ids)])  # (B, K, H)
    check_finite(visual, "the LLM", mllm.dtype)
    return Derivation(tuple(ids), tuple(prompt_lengths), visual, tuple(texts), tuple(flags))


def _batch_callback(callback: ProgressCallback | None, done: int, members: int, count: int,
                    per_item: int) -> ProgressCallback | None:
    """Token steps of a group of ``members`` items decoded together, counted over the whole batch."""
    if callback is None:
        return None
    return lambda step, total: callback(done * per_item + step * members, count * per_item)


def select_visual_tokens(states: torch.Tensor, token_ids: torch.Tensor, first_visual_id: int, count: int) -> torch.Tensor:
    """The ``count`` states that predict ``[IMG0]..``: (S, H) -> (count, H) (docs/algorithm.md §2.6).

    ``p`` is one before the first ``[IMG0]`` in the full sequence, or ``len(states) - count - 1``
    when none was generated; then ``p = min(p, len(states) - count - 1)``.
    """
    ids = token_ids.tolist()
    last = len(states) - (count + 1)
    p = ids.index(first_visual_id) - 1 if first_visual_id in ids else last
    p = min(p, last)
    if p < 0:
        raise InputError(f"sequence of {len(states)} hidden states is too short for {count} visual tokens")
    return states[p : p + count]


def encode_prompt(model: MGIEModel, instruction: str, budget: int) -> torch.Tensor:
    """The prompt's token ids (1, T) for ``instruction``; refused when it and ``budget`` new tokens exceed the
    model's context."""
    return _encode(model, build_prompt(instruction, model.spec), budget)


def _encode(model: MGIEModel, text: str, budget: int) -> torch.Tensor:
    ids = model.tokenizer.encode(text)
    patches = sum(1 for i in ids if i == model.spec.im_patch_token_id)
    if patches != model.spec.num_image_patches:
        raise InputError(f"prompt holds {patches} image patch tokens, expected {model.spec.num_image_patches}")
    limit = model.spec.max_position_embeddings
    if len(ids) + budget > limit:
        extra = len(ids) + budget - limit
        raise InputError(
            f"instruction is too long: the prompt takes {len(ids)} tokens and {budget} more are needed, "
            f"over the model's {limit}; shorten the instruction by about {extra} tokens"
        )
    return torch.tensor([ids], device=model.mllm.device)  # (1, T)


@torch.no_grad()
def _generated(model: MGIEModel, prompt_ids: torch.Tensor, features: torch.Tensor, config: DeriveConfig,
               callback: ProgressCallback | None, compiled: bool = False) -> list[tuple]:
    """Derive for prompts of one length: (G, L) ids, (G, N, H) image features -> G result tuples."""
    embeds = model.mllm.embed(prompt_ids, features, model.spec.im_patch_token_id)  # (G, L, H)
    out = []
    first_visual = model.tokenizer.id_to_token(model.spec.visual_token_ids[0])
    for ids, states in greedy_generate(model, prompt_ids, embeds, config, callback, compiled):
        answer = model.tokenizer.decode(ids[prompt_ids.shape[1]:].tolist())
        text = clean_expressive(answer, first_visual, model.tokenizer.eos_token)
        out.append((ids.cpu(), prompt_ids.shape[1], states, text, False))
    return out


@torch.no_grad()
def _teacher_forced(model: MGIEModel, instruction: str, expressive: str, features: torch.Tensor):
    prompt_length = len(model.tokenizer.encode(build_prompt(instruction, model.spec)))
    text = build_conversation(instruction, expressive, model.spec, model.tokenizer.eos_token)
    ids = _encode(model, text, 0)  # (1, T)
    embeds = model.mllm.embed(ids, features, model.spec.im_patch_token_id)
    states = model.mllm.llm(inputs_embeds=embeds).last_hidden_state[0]  # (T, H)
    return ids[0].cpu(), prompt_length, states, expressive, True
