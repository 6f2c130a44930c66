"""Stage 1: generation, hidden-state bookkeeping, the visual-token rule and its three branches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_image
from transformers import CLIPImageProcessor, LlamaForCausalLM

from mgie_core import DeriveConfig, InputError, derive
from mgie_core.errors import EditCancelled
from mgie_core.images import clip_pixel_values
from mgie_core.stages.derive import select_visual_tokens
from mgie_core.stages.prompt import build_prompt, clean_expressive

SHORT = DeriveConfig(max_new_tokens=40)  # answers of the tiny LM are 14-36 tokens; the story is longer


def reference_generate(model, instruction, image, config):
    """transformers' own ``generate`` on the same weights and embeddings: the behaviour to match."""
    lm = LlamaForCausalLM(model.mllm.llm.config)
    lm.model, lm.lm_head = model.mllm.llm, model.mllm.lm_head
    ids = torch.tensor([model.tokenizer.encode(build_prompt(instruction, model.spec))])
    pixels = clip_pixel_values(image, model.clip_image_config)[None]
    with torch.no_grad():
        embeds = model.mllm.embed(ids, model.mllm.image_features(pixels), model.spec.im_patch_token_id)
        out = lm.eval().generate(
            input_ids=ids, inputs_embeds=embeds, do_sample=False, num_beams=1, max_new_tokens=config.max_new_tokens,
            no_repeat_ngram_size=config.no_repeat_ngram_size, eos_token_id=model.spec.eos_token_id, pad_token_id=0,
            return_dict_in_generate=True, output_hidden_states=True,
        )
    states = torch.cat([step[-1] for step in out.hidden_states], dim=1)[0]  # last layer, after the final norm
    return out.sequences[0], states


def reference_rule(ids, states, img0):
    """docs/algorithm.md §2.6, written out literally."""
    ids = ids.tolist()
    p = min(ids.index(img0) - 1 if img0 in ids else len(states) - 9, len(states) - 9)
    return p, states[p : p + 8]


@pytest.mark.parametrize("instruction", ["make the sky blue", "tell me a story", "make it red", "add a hat"])
def test_matches_transformers_generate(tiny_model, image, instruction):
    ref_ids, ref_states = reference_generate(tiny_model, instruction, image, SHORT)
    d = derive(tiny_model, [image], [instruction], SHORT)
    assert torch.equal(d.token_ids[0], ref_ids)
    _, ref_visual = reference_rule(ref_ids, ref_states, tiny_model.spec.visual_token_ids[0])
    torch.testing.assert_close(d.visual_tokens[0], ref_visual, rtol=1e-5, atol=1e-5)


def test_one_state_fewer_than_tokens(tiny_model, image):
    import warnings

    from mgie_core.stages.decode import greedy_generate

    ids = torch.tensor([tiny_model.tokenizer.encode(build_prompt("make the sky blue", tiny_model.spec))])
    pixels = clip_pixel_values(image, tiny_model.clip_image_config)[None]
    with torch.no_grad():
        embeds = tiny_model.mllm.embed(ids, tiny_model.mllm.image_features(pixels), tiny_model.spec.im_patch_token_id)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            [(seq, states)] = greedy_generate(tiny_model, ids, embeds, SHORT)
        full = tiny_model.mllm.llm(inputs_embeds=tiny_model.mllm.embed(seq[None], tiny_model.mllm.image_features(pixels),
                                                                      tiny_model.spec.im_patch_token_id)).last_hidden_state[0]
    assert len(states) == len(seq) - 1
    # the cache goes in by the keyword this transformers reads (no deprecation, nothing dropped)
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    # cached decoding gives the states of one full forward pass over the sequence
    torch.testing.assert_close(states, full[:-1], rtol=1e-4, atol=1e-4)


def _branch(tiny_model, image, instruction):
    d = derive(tiny_model, [image], [instruction], SHORT)
    ids = d.token_ids[0].tolist()
    img = list(tiny_model.spec.visual_token_ids)
    return d, ids, img


def test_branch_img_tokens_generated(tiny_model, image):
    d, ids, img = _branch(tiny_model, image, "make the sky blue")
    i0 = ids.index(img[0])
    assert ids[i0 : i0 + 8] == img and ids[-1] == tiny_model.spec.eos_token_id
    _, states = reference_generate(tiny_model, "make the sky blue", image, SHORT)
    torch.testing.assert_close(d.visual_tokens[0], states[i0 - 1 : i0 + 7])


def test_branch_no_img_token(tiny_model, image):
    d, ids, img = _branch(tiny_model, image, "tell me a story")
    assert img[0] not in ids and len(ids) - d.prompt_lengths[0] == SHORT.max_new_tokens
    _, states = reference_generate(tiny_model, "tell me a story", image, SHORT)
    torch.testing.assert_close(d.visual_tokens[0], states[len(states) - 9 : len(states) - 1])


def test_branch_img_token_too_close_to_the_end(tiny_model, image):
    d, ids, img = _branch(tiny_model, image, "make it red")
    i0 = ids.index(img[0])
    assert ids[i0:] == img[:3] + [tiny_model.spec.eos_token_id]  # only 3 [IMG] tokens, then </s>
    _, states = reference_generate(tiny_model, "make it red", image, SHORT)
    p = len(states) - 9
    assert p < i0 - 1  # the clamp moved p back
    torch.testing.assert_close(d.visual_tokens[0], states[p : p + 8])


def test_select_rule_unit():
    states = torch.arange(20.0)[:, None]  # (20, 1): state i holds i
    seq = torch.tensor([5] * 21)
    assert select_visual_tokens(states, seq, 99, 8).flatten().tolist() == list(range(11, 19))  # not found
    seq[4] = 99
    assert select_visual_tokens(states, seq, 99, 8).flatten().tolist() == list(range(3, 11))  # found
    seq[4], seq[17] = 5, 99
    assert select_visual_tokens(states, seq, 99, 8).flatten().tolist() == list(range(11, 19))  # clamped
    with pytest.raises(InputError):
        select_visual_tokens(states[:5], seq[:6], 99, 8)


def test_ngram_ban_changes_an_answer(tiny_model, image):
    free = derive(tiny_model, [image], ["add a hat"], DeriveConfig(max_new_tokens=40, no_repeat_ngram_size=0))
    banned = derive(tiny_model, [image], ["add a hat"], DeriveConfig(max_new_tokens=40))
    answer = lambda d: d.token_ids[0][d.prompt_lengths[0]:].tolist()  # noqa: E731
    assert answer(free) != answer(banned)
    full = banned.token_ids[0].tolist()
    trigrams = [tuple(full[i : i + 3]) for i in range(len(full) - 2)]
    answer_trigrams = trigrams[banned.prompt_lengths[0] - 2 :]
    assert all(trigrams.index(t) >= banned.prompt_lengths[0] - 2 for t in answer_trigrams)  # no repeat of earlier ones
    free_answer = answer(free)
    free_trigrams = [tuple(free_answer[i : i + 3]) for i in range(len(free_answer) - 2)]
    assert len(set(free_trigrams)) < len(free_trigrams)  # without the ban, the answer repeats itself


def test_expressive_text_rule():
    assert clean_expressive("add a warm lamp. light the fire. open the door. alternative: x") == "add a warm lamp.light the fire."
    assert clean_expressive(" turn it red. [IMG0] [IMG1] </s>") == "turn it red."
    assert clean_expressive("An Alternative is blue") == "An."
    assert clean_expressive("no period") == "no period."
    assert clean_expressive("") == "."


def test_derived_text_uses_the_rule(tiny_model, image):
    d = derive(tiny_model, [image], ["make it cozy"], DeriveConfig(max_new_tokens=60))
    assert d.expressive_instructions[0] == "add a warm lamp.light the fire."


def test_override_recomputes_visual_tokens_by_teacher_forcing(tiny_model, image):
    derived = derive(tiny_model, [image], ["make the sky blue"], SHORT)
    text = tiny_model.tokenizer.decode(derived.token_ids[0][derived.prompt_lengths[0]:].tolist()).split(" [IMG0]")[0]
    forced = derive(tiny_model, [image], ["make the sky blue"], SHORT, expressive_overrides=[text])
    # the artist's text equals what the model said: same tokens, same visual tokens (cache vs full pass)
    assert torch.equal(forced.token_ids[0], derived.token_ids[0])
    torch.testing.assert_close(forced.visual_tokens, derived.visual_tokens, rtol=1e-4, atol=1e-4)
    assert forced.overridden == (True,) and forced.expressive_instructions == (text,)
    other = derive(tiny_model, [image], ["make the sky blue"], SHORT, expressive_overrides=["paint the apple red."])
    assert not torch.allclose(other.visual_tokens, derived.visual_tokens, atol=1e-3)
    ids = other.token_ids[0].tolist()
    assert ids[-9:] == list(tiny_model.spec.visual_token_ids) + [tiny_model.spec.eos_token_id]


def test_blank_override_means_derive(tiny_model, image):
    a = derive(tiny_model, [image], ["make the sky blue"], SHORT, expressive_overrides=["  "])
    b = derive(tiny_model, [image], ["make the sky blue"], SHORT)
    assert torch.equal(a.visual_tokens, b.visual_tokens) and a.overridden == (False,)


def test_batch_equals_single(tiny_model):
    images = [make_image(seed=1), make_image(48, 40, seed=2)]
    batch = derive(tiny_model, images, ["make the sky blue", "make it red"], SHORT)
    for i, ins in enumerate(["make the sky blue", "make it red"]):
        single = derive(tiny_model, [images[i]], [ins], SHORT)
        assert torch.equal(batch.token_ids[i], single.token_ids[0])
        torch.testing.assert_close(batch.visual_tokens[i], single.visual_tokens[0])


def test_one_instruction_over_a_batch_decodes_together_and_equals_single(tiny_model):
    images = [make_image(seed=s) for s in range(3)]
    seen = []
    batch = derive(tiny_model, images, ["make the sky blue"] * 3, SHORT, callback=lambda s, t: seen.append((s, t)))
    assert seen[0] == (3, 3 * SHORT.max_new_tokens)  # one decoding step advances all three
    for i, image in enumerate(images):
        single = derive(tiny_model, [image], ["make the sky blue"], SHORT)
        assert torch.equal(batch.token_ids[i], single.token_ids[0])
        torch.testing.assert_close(batch.visual_tokens[i], single.visual_tokens[0], rtol=1e-5, atol=1e-5)


def test_rows_that_finish_early_are_cut(tiny_model, image):
    a, b = "make it red", "add a hat"  # prompts of one length: decoded together; a ends after 14 tokens, b later
    batch = derive(tiny_model, [image, image], [a, b], DeriveConfig(max_new_tokens=60))
    assert batch.prompt_lengths[0] == batch.prompt_lengths[1]
    assert len(batch.token_ids[0]) < len(batch.token_ids[1])
    for i, instruction in enumerate((a, b)):
        single = derive(tiny_model, [image], [instruction], DeriveConfig(max_new_tokens=60))
        assert torch.equal(batch.token_ids[i], single.token_ids[0])
        assert batch.expressive_instructions[i] == single.expressive_instructions[0]


def test_image_features_are_spliced_at_im_patch(tiny_model, image):
    torch.manual_seed(0)
    with torch.no_grad():
        tiny_model.mllm.mm_projector.weight.normal_()  # make features depend on the picture
    pixels = clip_pixel_values(image, tiny_model.clip_image_config)[None]
    features = tiny_model.mllm.image_features(pixels)
    out = tiny_model.mllm.vision_tower(pixels, output_hidden_states=True)
    expected = tiny_model.mllm.mm_projector(out.hidden_states[-2][:, 1:])  # layer -2, CLS dropped
    torch.testing.assert_close(features, expected)
    ids = torch.tensor([tiny_model.tokenizer.encode(build_prompt("make it red", tiny_model.spec))])
    embeds = tiny_model.mllm.embed(ids, features, tiny_model.spec.im_patch_token_id)[0]
    start = ids[0].tolist().index(tiny_model.spec.im_start_token_id)
    n = tiny_model.spec.num_image_patches
    torch.testing.assert_close(embeds[start + 1 : start + 1 + n], features[0])
    plain = tiny_model.mllm.llm.embed_tokens(ids)[0]
    torch.testing.assert_close(embeds[: start + 1], plain[: start + 1])
    torch.testing.assert_close(embeds[start + 1 + n :], plain[start + 1 + n :])


@pytest.mark.parametrize("size", [(40, 32), (17, 60), (224, 224), (5, 3)])
def test_clip_preprocessing_matches_transformers(tiny_model, size):
    image = make_image(*size, seed=3)
    ours = clip_pixel_values(image, tiny_model.clip_image_config)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    theirs = processor(image, return_tensors="pt")["pixel_values"][0]
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=2e-5)


def test_callback_counts_tokens_and_cancels(tiny_model, image):
    seen = []
    derive(tiny_model, [image], ["make it red"], SHORT, callback=lambda s, t: seen.append((s, t)))
    assert seen[0] == (1, SHORT.max_new_tokens) and seen[-1] == (SHORT.max_new_tokens, SHORT.max_new_tokens)
    calls = []

    def cancel(step, total):
        calls.append(step)
        return step >= 3

    with pytest.raises(EditCancelled):
        derive(tiny_model, [image], ["tell me a story"], SHORT, callback=cancel)
    assert calls == [1, 2, 3]  # stopped right after the step that asked


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_paths_run(tiny_root, image, dtype):
    from mgie_core import load_model

    model = load_model(tiny_root).to("cpu", dtype)
    d = derive(model, [image], ["make the sky blue"], SHORT)
    assert d.visual_tokens.dtype == dtype and torch.isfinite(d.visual_tokens.float()).all()
    assert list(model.spec.visual_token_ids) == [i for i in d.token_ids[0].tolist() if i in model.spec.visual_token_ids]


@pytest.mark.parametrize(
    "instruction, message",
    [("", "instruction is empty"), ("   ", "instruction is empty"),
     ("make it <im_patch> red", "control token '<im_patch>'"), (42, "must be text")],
)
def test_bad_instructions(tiny_model, image, instruction, message):
    with pytest.raises(InputError, match=message):
        derive(tiny_model, [image], [instruction], SHORT)


def test_absurdly_long_instruction_is_refused(tiny_model, image):
    with pytest.raises(InputError, match=r"instruction is too long: .* shorten the instruction by about \d+ tokens"):
        derive(tiny_model, [image], ["make it red " * 400], SHORT)
