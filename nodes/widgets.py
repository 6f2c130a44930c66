"""Widgets shared by several nodes; defaults, limits and tooltips mirror mgie_core's config fields."""

from __future__ import annotations

from comfy_api.latest import io

from ..mgie_core import DEFAULT_SEED, SCHEDULER_NAMES, DeriveConfig, InputError, SampleConfig

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def instruction_input() -> io.String.Input:
    return io.String.Input("instruction", multiline=True, default="make it look like winter",
                           tooltip="A brief edit instruction. MGIE's LLM looks at the image and expands it into "
                                   "an expressive instruction before editing.")


def override_input() -> io.String.Input:
    return io.String.Input("expressive_override", multiline=True, default="", optional=True,
                           tooltip="Optional: your own expressive instruction. When set, it replaces the derived "
                                   "one and the visual tokens are recomputed from your text.")


def max_new_tokens_input() -> io.Int.Input:
    return io.Int.Input("max_new_tokens", default=DeriveConfig.max_new_tokens, min=1, max=512,
                        tooltip="Token budget of the derived expressive instruction (the paper uses 96).")


def sampling_inputs() -> list:
    d = SampleConfig()
    return [
        io.Int.Input("seed", default=DEFAULT_SEED, min=0, max=SEED_MAX, control_after_generate=True,
                     tooltip="Noise seed; noise is drawn on the CPU so a seed gives the same image on every GPU."),
        io.Int.Input("steps", default=d.num_inference_steps, min=1, max=1000,
                     tooltip="Denoising steps (the paper uses 100)."),
        io.Float.Input("guidance_scale", default=d.guidance_scale, min=0.0, max=30.0, step=0.1,
                       tooltip="Text (imagination) guidance: higher follows the edit more strongly "
                               "(paper, for MGIE-7B: 7.5; mgie-mini edits best at 2)."),
        io.Float.Input("image_guidance_scale", default=d.image_guidance_scale, min=0.0, max=10.0, step=0.05,
                       tooltip="Image guidance: higher stays closer to the input image (paper and mgie-mini: 1.5)."),
        io.Combo.Input("scheduler", options=list(SCHEDULER_NAMES), default=d.scheduler,
                       tooltip="Sampler. euler_ancestral is what MGIE was released with."),
        io.Int.Input("max_side", default=d.max_side, min=0, max=8192, step=8,
                     tooltip="Images whose longer side exceeds this are scaled down first (0: no limit); "
                             "sides are rounded down to multiples of 8."),
    ]


def sample_config(steps: int, guidance_scale: float, image_guidance_scale: float, scheduler: str,
                  max_side: int) -> SampleConfig:
    if scheduler not in SCHEDULER_NAMES:  # ComfyUI does not validate V3 combo values
        raise InputError(f"scheduler {scheduler!r} is unknown; choose one of {', '.join(SCHEDULER_NAMES)}")
    return SampleConfig(num_inference_steps=steps, guidance_scale=guidance_scale,
                        image_guidance_scale=image_guidance_scale, scheduler=scheduler, max_side=max_side)
