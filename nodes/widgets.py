"""Widgets shared by several nodes; defaults, limits and tooltips mirror mgie_core's config fields."""

from __future__ import annotations

from comfy_api.latest import io

from ..mgie_core import DEFAULT_SEED, SCHEDULER_NAMES, DeriveConfig, InputError, SampleConfig, SettingError
from ..mgie_core.config import SAMPLING_PRESETS, sample_config_for

SEED_MAX = 0xFFFFFFFFFFFFFFFF
MODEL_DEFAULT = 0  # guidance and max_side widgets at 0 take what the loaded model recommends
WIDGETS = {"num_inference_steps": "steps"}  # config fields whose widget has another name


def instruction_input() -> io.String.Input:
    return io.String.Input("instruction", multiline=True, default="make it look like winter",
                           tooltip="A brief edit instruction. MGIE's LLM looks at the image and expands it into "
                                   "an expressive instruction before editing.")


def override_input() -> io.String.Input:
    return io.String.Input("expressive_override", multiline=True, default="", optional=True,
                           tooltip="Optional: your own expressive instruction. When set, it replaces the derived "
                                   "one and the visual tokens are recomputed from your text.")


def mask_input() -> io.Mask.Input:
    return io.Mask.Input("mask", optional=True,
                         tooltip="Optional: edit only where the mask is 1 (paint it in Load Image's mask editor). "
                                 "Pixels outside stay the input's; one mask for all images or one per image.")


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
        io.Float.Input("guidance_scale", default=MODEL_DEFAULT, min=0.0, max=30.0, step=0.1,
                       tooltip="Text (imagination) guidance: higher follows the edit more strongly. 0: what the "
                               f"model recommends (MGIE-7B: the paper's {d.guidance_scale}; mgie-mini: 2). "
                               "Values up to 1 turn guidance off."),
        io.Float.Input("image_guidance_scale", default=MODEL_DEFAULT, min=0.0, max=10.0, step=0.05,
                       tooltip="Image guidance: higher stays closer to the input image. 0: what the model "
                               f"recommends (MGIE-7B and mgie-mini: {d.image_guidance_scale})."),
        io.Combo.Input("scheduler", options=list(SCHEDULER_NAMES), default=d.scheduler,
                       tooltip="Sampler. euler_ancestral is what MGIE was released with."),
        io.Int.Input("max_side", default=MODEL_DEFAULT, min=0, max=16384, step=8,
                     tooltip="Images whose longer side exceeds this are scaled down first; sides are rounded down "
                             "to multiples of 8. 0: the model's working size (mgie-mini: 64 px, it edits small "
                             f"flat-shape scenes; MGIE-7B: {d.max_side} px)."),
    ]


AS_SET = "as set"  # the preset widget's default: steps and scheduler as their widgets say


def preset_input() -> io.Combo.Input:
    return io.Combo.Input("preset", options=[AS_SET, *SAMPLING_PRESETS], default=AS_SET, optional=True,
                          tooltip="as set: the steps and scheduler widgets. fast: dpmpp_2m_karras, 25 steps, which "
                                  "edited mgie-mini's test scenes as well as the paper's 100 euler_ancestral steps "
                                  "(measured on mgie-mini, not on MGIE-7B). paper: euler_ancestral, 100 steps.")


def sample_config(recommended: dict, steps: int, guidance_scale: float, image_guidance_scale: float, scheduler: str,
                  max_side: int, preset: str = AS_SET) -> SampleConfig:
    """The widgets' values as a SampleConfig; a guidance or max_side widget at 0 takes the model's ``recommended``;
    a ``preset`` other than "as set" replaces the steps and scheduler widgets."""
    if scheduler not in SCHEDULER_NAMES:  # ComfyUI does not validate V3 combo values
        raise InputError(f"scheduler {scheduler!r} is unknown; choose one of {', '.join(SCHEDULER_NAMES)}")
    if preset != AS_SET:
        if preset not in SAMPLING_PRESETS:
            raise InputError(f"preset {preset!r} is unknown; choose one of {AS_SET}, {', '.join(SAMPLING_PRESETS)}")
        steps, scheduler = SAMPLING_PRESETS[preset]["num_inference_steps"], SAMPLING_PRESETS[preset]["scheduler"]
    chosen = {"guidance_scale": guidance_scale, "image_guidance_scale": image_guidance_scale, "max_side": max_side}
    try:
        return sample_config_for(recommended, num_inference_steps=steps, scheduler=scheduler,
                                 **{k: None if v == MODEL_DEFAULT else v for k, v in chosen.items()})
    except SettingError as err:
        raise err.named(WIDGETS) from None


def settings_text(config: SampleConfig) -> str:
    """What the sampler used, shown on the node (widgets at 0 show here as the model's values)."""
    return (f"{config.scheduler}, {config.num_inference_steps} steps; guidance {config.guidance_scale:g} (text) / "
            f"{config.image_guidance_scale:g} (image), images up to {config.max_side or 'any'} px.")
