"""Frozen configuration of each stage. Defaults reproduce the paper and Apple's demo.

Validation names the bad field, so the CLI and the nodes can show the message as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InputError, SettingError
from .schedulers import SCHEDULERS

DEFAULT_SEED = 13331  # the seed of Apple's demo notebook
VAE_TILING = ("auto", "on", "off")


@dataclass(frozen=True)
class DeriveConfig:
    """Greedy derivation of the expressive instruction (MGIE.md §2.5)."""

    max_new_tokens: int = 96
    no_repeat_ngram_size: int = 3  # applied over prompt + answer, as transformers' generate did

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, 1, 4096)
        _check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, 0, 64)


@dataclass(frozen=True)
class SampleConfig:
    """Dual-guidance denoising (MGIE.md §2.9), the knobs of diffusers' InstructPix2Pix pipeline."""

    num_inference_steps: int = 100
    guidance_scale: float = 7.5  # pushes the edit towards the visual imagination
    image_guidance_scale: float = 1.5  # keeps the result close to the input image
    scheduler: str = "euler_ancestral"
    max_side: int = 1024  # longer image sides are scaled down to this before encoding; 0 = no limit
    vae_tiling: str = "auto"  # auto: VAE in tiles above 1024 px (sample.TILE_ABOVE); on; off

    def __post_init__(self) -> None:
        _check_int("num_inference_steps", self.num_inference_steps, 1, 1000)
        _check_float("guidance_scale", self.guidance_scale, 0.0, 100.0)
        _check_float("image_guidance_scale", self.image_guidance_scale, 0.0, 100.0)
        if self.scheduler not in SCHEDULERS:
            raise SettingError("scheduler", f"must be one of {', '.join(SCHEDULERS)}", self.scheduler)
        if self.max_side != 0:
            _check_int("max_side", self.max_side, 8, 16384)
        if self.vae_tiling not in VAE_TILING:
            raise SettingError("vae_tiling", f"must be one of {', '.join(VAE_TILING)}", self.vae_tiling)

    @property
    def do_classifier_free_guidance(self) -> bool:
        # The same condition as diffusers' pipeline: otherwise only the imagination branch runs.
        return self.guidance_scale > 1.0 and self.image_guidance_scale >= 1.0


# Sampling presets. "paper": MGIE's release. "fast": a quarter of the steps with a second-order sampler, which
# edited mgie-mini's held-out scenes as well as "paper" did (docs/mgie-mini.md, "Fewer steps"); measured on
# mgie-mini, not on MGIE-7B.
SAMPLING_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"scheduler": "euler_ancestral", "num_inference_steps": 100},
    "fast": {"scheduler": "dpmpp_2m_karras", "num_inference_steps": 25},
}


def preset_settings(preset: str | None, **settings: Any) -> dict[str, Any]:
    """``settings`` with the preset's scheduler and steps wherever ``settings`` leave them out or None."""
    if preset is None:
        return settings
    if preset not in SAMPLING_PRESETS:
        raise SettingError("preset", f"must be one of {', '.join(SAMPLING_PRESETS)}", preset)
    return {**settings, **{k: v for k, v in SAMPLING_PRESETS[preset].items() if settings.get(k) is None}}


# What a model may recommend (a bundle's "sampling" metadata): the guidance it was tuned for, and its working size.
RECOMMENDABLE = ("guidance_scale", "image_guidance_scale", "max_side")


def check_recommended_sampling(sampling: object, where: str) -> dict[str, float | int]:
    """A model's recommended settings, checked: only :data:`RECOMMENDABLE` fields, each a valid value."""
    if not isinstance(sampling, Mapping) or set(sampling) - set(RECOMMENDABLE):
        raise InputError(f"{where}: recommended sampling must map {' / '.join(RECOMMENDABLE)} to numbers, "
                         f"got {sampling!r}")
    SampleConfig(**sampling)  # the same range checks as a user's values
    return {k: int(v) if k == "max_side" else float(v) for k, v in sampling.items()}


def sample_config_for(recommended: Mapping[str, Any], **settings: Any) -> SampleConfig:
    """``SampleConfig(**settings)``, with a model's ``recommended`` values wherever ``settings`` leave them
    out or None (the paper's 7.5 / 1.5 and a 1024 px limit when the model recommends nothing, as Apple's MGIE)."""
    given = {k: v for k, v in settings.items() if v is not None}
    return SampleConfig(**{**recommended, **given})


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingError(name, f"must be an integer from {low} to {high}", value)


def _check_float(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= float(value) <= high:
        raise SettingError(name, f"must be a number from {low} to {high}", value)
