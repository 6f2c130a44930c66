"""Stage 3: the sampler equals diffusers' InstructPix2Pix pipeline; seeds, cancellation, precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_image
from diffusers import StableDiffusionInstructPix2PixPipeline

from mgie_core import EditCancelled, InputError, SampleConfig, make_generator, sample
from mgie_core.images import pil_to_tensor
from mgie_core.stages.imagine import Imagination
from mgie_core.stages.schedulers import SCHEDULER_NAMES, make_scheduler

STEPS = 8


def conditioning(batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Imagination(torch.randn(batch, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g).expand(batch, -1, -1))


def run_diffusers(model, images, cond, config, seed):
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=model.vae, text_encoder=None, tokenizer=None, unet=model.unet,
        scheduler=make_scheduler(config.scheduler, model.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    out = pipe(image=images, prompt_embeds=cond.imagination, negative_prompt_embeds=cond.null_imagination,
               num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
               image_guidance_scale=config.image_guidance_scale, generator=torch.Generator().manual_seed(seed),
               output_type="np")
    return out.images  # (B, H, W, 3) float in [0, 1]


def run_ours(model, images, cond, config, seed, callback=None):
    out = sample(model.unet, model.vae, model.scheduler_config, pil_to_tensor(images), cond, config,
                 make_generator(seed), callback)
    return out.images.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("scheduler", ["euler_ancestral", "ddim", "dpmpp_2m", "unipc"])
def test_equals_diffusers_pipeline(tiny_model, scheduler):
    images = [make_image(48, 32, seed=1)]
    config = SampleConfig(num_inference_steps=STEPS, scheduler=scheduler)
    ours = run_ours(tiny_model, images, conditioning(), config, 7)
    theirs = run_diffusers(tiny_model, images, conditioning(), config, 7)
    assert np.abs(ours - theirs).max() <= 2 / 255
    assert np.abs(ours - np.asarray(images[0]) / 255).mean() > 0.01  # it really edited something


def test_equals_diffusers_for_a_batch_and_other_scales(tiny_model):
    images = [make_image(32, 32, seed=1), make_image(32, 32, seed=2)]
    config = SampleConfig(num_inference_steps=STEPS, guidance_scale=3.0, image_guidance_scale=1.2)
    assert np.abs(run_ours(tiny_model, images, conditioning(2), config, 3)
                  - run_diffusers(tiny_model, images, conditioning(2), config, 3)).max() <= 2 / 255


def test_without_guidance_equals_diffusers(tiny_model):
    config = SampleConfig(num_inference_steps=STEPS, guidance_scale=1.0)
    assert not config.do_classifier_free_guidance
    images = [make_image(32, 24, seed=4)]
    assert np.abs(run_ours(tiny_model, images, conditioning(), config, 1)
                  - run_diffusers(tiny_model, images, conditioning(), config, 1)).max() <= 2 / 255


def test_every_scheduler_runs(tiny_model):
    images = [make_image(16, 16)]
    for name in SCHEDULER_NAMES:
        out = run_ours(tiny_model, images, conditioning(), SampleConfig(num_inference_steps=3, scheduler=name), 0)
        assert np.isfinite(out).all(), name


def test_one_imagination_conditions_a_batch(tiny_model):
    images, config = [make_image(16, 16, seed=1), make_image(16, 16, seed=2)], SampleConfig(num_inference_steps=3)
    one = run_ours(tiny_model, images, conditioning(1), config, 0)
    two = Imagination(*(t.expand(2, -1, -1) for t in (conditioning(1).imagination, conditioning(1).null_imagination)))
    assert np.array_equal(one, run_ours(tiny_model, images, two, config, 0))


def test_seed_determinism(tiny_model):
    images, config = [make_image(24, 24)], SampleConfig(num_inference_steps=4)
    a = run_ours(tiny_model, images, conditioning(), config, 11)
    b = run_ours(tiny_model, images, conditioning(), config, 11)
    c = run_ours(tiny_model, images, conditioning(), config, 12)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1 / 255


def test_cancellation_stops_within_one_step(tiny_model):
    calls = []
    original = tiny_model.unet.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    tiny_model.unet.forward = counting
    with pytest.raises(EditCancelled):
        run_ours(tiny_model, [make_image(16, 16)], conditioning(), SampleConfig(num_inference_steps=20), 0,
                 callback=lambda step, total: step >= 2)
    assert len(calls) == 2


def test_callback_exception_propagates(tiny_model):
    class Interrupted(Exception):
        pass

    def interrupt(step, total):
        raise Interrupted

    with pytest.raises(Interrupted):
        run_ours(tiny_model, [make_image(16, 16)], conditioning(), SampleConfig(num_inference_steps=5), 0, interrupt)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_sampling_runs(tiny_model, dtype):
    tiny_model.to(dtype=dtype)
    out = sample(tiny_model.unet, tiny_model.vae, tiny_model.scheduler_config, pil_to_tensor([make_image(16, 16)]),
                 conditioning(), SampleConfig(num_inference_steps=3), make_generator(0))
    assert out.images.dtype == torch.float32 and torch.isfinite(out.images).all()


def test_latents_decode_back_to_the_images(tiny_model):
    out = sample(tiny_model.unet, tiny_model.vae, tiny_model.scheduler_config, pil_to_tensor([make_image(16, 16)]),
                 conditioning(), SampleConfig(num_inference_steps=3), make_generator(0))
    with torch.no_grad():
        decoded = (tiny_model.vae.decode(out.latents).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(decoded, out.images)


def test_bad_inputs(tiny_model):
    with pytest.raises(InputError, match="not a multiple of 2"):
        sample(tiny_model.unet, tiny_model.vae, tiny_model.scheduler_config, torch.rand(1, 3, 15, 16), conditioning(),
               SampleConfig())
    with pytest.raises(InputError, match="2 imaginations cannot condition 3 images"):
        sample(tiny_model.unet, tiny_model.vae, tiny_model.scheduler_config, torch.rand(3, 3, 16, 16), conditioning(2),
               SampleConfig())
    with pytest.raises(InputError, match="scheduler must be one of euler_ancestral, .*, got 'nope'"):
        SampleConfig(scheduler="nope")
    with pytest.raises(InputError, match="num_inference_steps must be from 1 to 1,000, got 0"):
        SampleConfig(num_inference_steps=0)


def _masked(model, pixels, mask, cond, seed=4, scheduler="euler_ancestral"):
    config = SampleConfig(num_inference_steps=STEPS, scheduler=scheduler)
    return sample(model.unet, model.vae, model.scheduler_config, pixels, cond, config, make_generator(seed),
                  mask=mask).images


@pytest.mark.parametrize("scheduler", ["euler_ancestral", "ddim", "dpmpp_2m"])
def test_a_mask_keeps_the_input_outside_it_and_edits_inside(tiny_model, scheduler):
    pixels = pil_to_tensor([make_image(48, 32, seed=1)])  # (1, 3, 32, 48)
    mask = torch.zeros(1, 1, 32, 48)
    mask[..., 8:24, 12:36] = 1
    out = _masked(tiny_model, pixels, mask, conditioning(), scheduler=scheduler)
    assert torch.equal(out[..., mask[0, 0] == 0], pixels[..., mask[0, 0] == 0])  # outside: the input's own pixels
    inside = (out - pixels).abs()[..., 12:20, 18:30].mean()  # away from the feathered rim
    assert inside > 0.02


def test_a_full_mask_changes_nothing_and_an_empty_one_returns_the_input(tiny_model, caplog):
    pixels = pil_to_tensor([make_image(32, 32, seed=1), make_image(32, 32, seed=2)])
    free = sample(tiny_model.unet, tiny_model.vae, tiny_model.scheduler_config, pixels, conditioning(2),
                  SampleConfig(num_inference_steps=STEPS), make_generator(4)).images
    full = _masked(tiny_model, pixels, torch.ones(2, 1, 32, 32), conditioning(2))
    assert torch.equal(full, free)  # no mask draws no extra noise: the same picture as without one
    empty = torch.ones(2, 1, 32, 32)
    empty[1] = 0
    with caplog.at_level("INFO", logger="mgie_core.stages.sample"):
        out = _masked(tiny_model, pixels, empty, conditioning(2))
    assert torch.equal(out[1], pixels[1]) and torch.equal(out[0], free[0])
    assert "the mask of image 1 is empty: that image is returned unchanged" in caplog.text


def test_one_generator_per_image_gives_each_image_its_own_noise_whatever_the_batch(tiny_model):
    images = [make_image(32, 32, seed=1), make_image(32, 32, seed=2)]
    config = SampleConfig(num_inference_steps=STEPS)
    model = tiny_model

    def edit(pixels, cond, generator):
        return sample(model.unet, model.vae, model.scheduler_config, pixels, cond, config, generator).images

    both = edit(pil_to_tensor(images), conditioning(2), [make_generator(11), make_generator(12)])
    cond = conditioning(2)
    second = edit(pil_to_tensor(images[1:]), Imagination(cond.imagination[1:], cond.null_imagination[1:]),
                  [make_generator(12)])
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=0)  # the batch changes only rounding
    alone = edit(pil_to_tensor(images[1:]), Imagination(cond.imagination[1:], cond.null_imagination[1:]),
                 make_generator(12))
    assert torch.equal(second, alone)  # a list of one generator is that generator


def test_masks_are_checked_and_fitted_to_the_picture(tiny_model):
    from mgie_core.images import fit_mask

    pixels = pil_to_tensor([make_image(32, 32, seed=1)])
    with pytest.raises(InputError, match=r"mask must be \(B, 1, H, W\) like the pixels \(1, 3, 32, 32\), got \(1, 1, 16, 16\)"):
        _masked(tiny_model, pixels, torch.ones(1, 1, 16, 16), conditioning())
    fitted = fit_mask(torch.ones(16, 16), (32, 48))
    assert fitted.shape == (1, 1, 32, 48) and torch.equal(fitted, torch.ones(1, 1, 32, 48))
    with pytest.raises(InputError, match="a mask must be"):
        fit_mask(torch.ones(1, 2, 3, 4, 5), (8, 8))


def test_an_fp16_vae_overflow_is_decoded_again_in_fp32(tiny_model, caplog):
    from mgie_core.stages.sample import decode_latents

    vae = tiny_model.vae.to(torch.float16)
    latents = torch.randn(1, vae.config.latent_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    calls = []
    original = type(vae).decode

    def overflowing(self, z, return_dict=True):  # the first, half-precision call overflows
        calls.append(z.dtype)
        out = original(self, z, return_dict=return_dict)
        return (out[0].fill_(float("inf")),) if z.dtype == torch.float16 else out

    vae.decode = overflowing.__get__(vae)
    with caplog.at_level("WARNING"):
        pixels = decode_latents(vae, latents)
    assert calls == [torch.float16, torch.float32] and torch.isfinite(pixels).all()
    assert vae.dtype == torch.float16 and "overflowed in fp16" in caplog.text  # the VAE stays half, the log says why
    del vae.decode
    expected = original(vae.to(torch.float32), latents, return_dict=False)[0]
    torch.testing.assert_close(pixels, expected)
