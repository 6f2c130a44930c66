"""The chained pipeline: batches, tensor inputs, progress over both stages."""

from __future__ import annotations

import pytest
import torch
from conftest import make_image

from mgie_core import EditCancelled, EditSettings, InputError, MGIEPipeline
from mgie_core.images import pil_to_tensor

SETTINGS = EditSettings(max_new_tokens=40, num_inference_steps=3)


@pytest.fixture()
def pipe(tiny_model):
    return MGIEPipeline(tiny_model, "cpu", "fp32")


def test_batch_of_images_and_instructions_equals_single_edits(pipe):
    images = [make_image(32, 32, seed=1), make_image(32, 32, seed=2)]
    batch = pipe(images, ["make the sky blue", "make it red"], SETTINGS, seed=4)
    assert batch.expressive_instructions == ("paint the whole sky a deep blue.keep the rest as it is.", "turn the apple red.")
    for i, instruction in enumerate(["make the sky blue", "make it red"]):
        single = pipe.derive([images[i]], [instruction], SETTINGS)
        torch.testing.assert_close(batch.derivation.visual_tokens[i], single.visual_tokens[0])
    assert len(batch.images) == 2 and batch.images[0].size == (32, 32)


def test_one_instruction_for_a_tensor_batch(pipe):
    pixels = pil_to_tensor([make_image(16, 16, seed=s) for s in range(3)])  # (3, 3, 16, 16), as from ComfyUI
    result = pipe(pixels, "make it red", SETTINGS, seed=0)
    assert result.output.images.shape == (3, 3, 16, 16)
    assert len(set(result.expressive_instructions)) == 1
    with pytest.raises(InputError, match="got 2 instructions for 3 images"):
        pipe(pixels, ["a", "b"], SETTINGS)


def test_progress_spans_both_stages_and_cancel_works(pipe):
    seen = []
    pipe(make_image(16, 16), "make it red", SETTINGS, callback=lambda s, t: seen.append((s, t)))
    total = SETTINGS.max_new_tokens + SETTINGS.num_inference_steps
    assert all(t == total for _, t in seen) and seen[-1] == (total, total)
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    with pytest.raises(EditCancelled):
        pipe(make_image(16, 16), "make it red", SETTINGS, callback=lambda s, t: s > SETTINGS.max_new_tokens)


def test_dtype_names(tiny_model):
    assert MGIEPipeline(tiny_model, "cpu", "bf16").model.unet.dtype == torch.bfloat16
    with pytest.raises(InputError, match="dtype must be one of auto, fp16, bf16, fp32, got 'fp8'"):
        MGIEPipeline(tiny_model, "cpu", "fp8")


def test_a_chain_is_the_same_as_single_edits_one_after_another(pipe):
    image = make_image(32, 32, seed=3)
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1
    seen = []
    steps = pipe.edit_in_chain(image, "make the sky blue\n\n  make it red  \n", SETTINGS, seed=7, mask=mask,
                               callback=lambda step, total: seen.append((step, total)))
    assert [s.expressive_instructions[0] for s in steps] == ["paint the whole sky a deep blue.keep the rest as it is.",
                                                             "turn the apple red."]
    first = pipe(image, "make the sky blue", SETTINGS, seed=7, mask=mask)
    second = pipe(first.output.images, "make it red", SETTINGS, seed=7, mask=mask)  # on the float result
    assert torch.equal(steps[0].output.images, first.output.images)
    assert torch.equal(steps[1].output.images, second.output.images)
    assert not torch.equal(second.output.images, first.output.images)
    outside = (mask == 0).expand(1, 3, 32, 32)
    start = pil_to_tensor([image])
    assert torch.equal(steps[1].output.images[outside], start[outside])  # the mask holds at every step
    per_step = SETTINGS.max_new_tokens + SETTINGS.num_inference_steps
    assert seen[-1] == (2 * per_step, 2 * per_step) and all(total == 2 * per_step for _, total in seen)


@pytest.mark.parametrize("text, message", [("\n  \n", "the instruction is empty"),
                                           ("\n".join(["a"] * 17), "17 instructions given; a chain takes at most 16")])
def test_multi_step_bad_instructions(pipe, text, message):
    with pytest.raises(InputError, match=message):
        pipe.edit_in_chain(make_image(16, 16), text, SETTINGS)
