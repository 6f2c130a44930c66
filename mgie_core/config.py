"""Every setting of an edit, declared once: name, type, default, range, help.

:class:`EditSettings` is what a person or a script sets. Its fields carry their declaration (range, choices,
help, the CLI flag and the node widget that set them), and every front end is made from it: the CLI's flags and
``--help`` (:func:`mgie_core.frontends.cli`), the nodes' widgets and tooltips (``nodes/widgets.py``) and the Python API.

One rule for "decided for you": ``0`` for a number and ``"auto"`` for a choice. Guidance and ``max_side`` then
come from the model's recommendation (mgie-mini recommends guidance 2 and its 64 px working size; Apple's MGIE
the paper's 7.5 / 1.5 and 1024 px), and steps and scheduler from the preset. "No size limit" is ``-1``.

:class:`DeriveConfig` and :class:`SampleConfig` are the resolved values each stage runs with; they are checked
against the same declarations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import InputError, SettingError
from .stages.schedulers import SCHEDULER_NAMES

DEFAULT_SEED = 13331  # the seed of Apple's demo notebook
SEED_MAX = 2**64 - 1  # a seed is any unsigned 64-bit integer, as torch.Generator.manual_seed takes
AUTO = "auto"  # a choice left to the model or the preset; numbers say it with 0
NO_LIMIT = -1  # max_side: never scale the picture down
VAE_TILING = ("auto", "on", "off")

# Sampling presets. "paper": MGIE's release. "fast": a quarter of the steps with a second-order sampler, which
# edited mgie-mini's held-out scenes as well as "paper" did (docs/mgie-mini.md, "Fewer steps"); measured on
# mgie-mini, not on MGIE-7B.
SAMPLING_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"scheduler": "euler_ancestral", "num_inference_steps": 100},
    "fast": {"scheduler": "dpmpp_2m_karras", "num_inference_steps": 25},
}

# What a model may recommend (a bundle's "sampling" metadata): the guidance it was tuned for, and its working size.
RECOMMENDABLE = ("guidance_scale", "image_guidance_scale", "max_side")
PAPER = {"guidance_scale": 7.5, "image_guidance_scale": 1.5, "max_side": 1024}  # when a model recommends nothing


def setting(default: Any, help: str, *, low: float | None = None, high: float | None = None,  # noqa: A002
            choices: tuple[str, ...] = (), auto: bool = False, flag: str | None = None, widget: str | None = None,
            step: float | None = None, no_limit: bool = False, range_text: str | None = None) -> Any:
    """A declared field: ``help`` is the CLI's help and the widget's tooltip; ``auto``: 0 (or "auto") means
    "decided for you"; ``no_limit``: -1 means no limit."""
    meta = {"help": help, "low": low, "high": high, "choices": choices, "auto": auto, "step": step,
            "no_limit": no_limit, "flag": flag, "widget": widget, "range_text": range_text}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class EditSettings:
    """The settings of an edit, as a person sets them (0 / "auto": decided by the model or the preset)."""

    seed: int = setting(DEFAULT_SEED, "Noise seed (0 to 2^64-1). Noise is drawn on the CPU, so a seed gives the same "
                        "image on every device. Default: 13331, as Apple's demo.", low=0, high=SEED_MAX,
                        range_text="an integer from 0 to 2^64-1")
    preset: str = setting("paper", "paper: euler_ancestral, 100 steps, as MGIE was released. fast: dpmpp_2m_karras, "
                          "25 steps, which edited mgie-mini's test scenes as well (measured on mgie-mini, not on "
                          "MGIE-7B). Steps and scheduler set to anything but auto win over the preset.",
                          choices=tuple(SAMPLING_PRESETS))
    num_inference_steps: int = setting(0, "Denoising steps, 1 to 1000. 0 = auto: the preset's (paper 100, fast 25).",
                                       low=1, high=1000, auto=True, flag="--steps", widget="steps")
    guidance_scale: float = setting(0.0, "Text guidance, how strongly the edit follows the visual imagination, up to "
                                    "100; values up to 1 turn guidance off. 0 = auto: the model's recommendation "
                                    "(MGIE-7B the paper's 7.5, mgie-mini 2).", low=0.0, high=100.0, auto=True, step=0.1)
    image_guidance_scale: float = setting(0.0, "Image guidance, how strongly the result stays close to the input "
                                          "image, up to 100; values under 1 turn guidance off. 0 = auto: the model's "
                                          "recommendation (1.5 for both models).", low=0.0, high=100.0, auto=True,
                                          step=0.05)
    scheduler: str = setting(AUTO, "Sampler. auto: the preset's (euler_ancestral, as MGIE was released, for paper).",
                             choices=(AUTO, *SCHEDULER_NAMES), auto=True)
    max_side: int = setting(0, "Pictures whose longer side exceeds this many pixels are scaled down first; sides are "
                            "rounded down to multiples of 8. 0 = auto: the model's working size (MGIE-7B 1024, "
                            "mgie-mini 64). -1 = no limit.", low=8, high=16384, auto=True, no_limit=True, step=8)
    vae_tiling: str = setting("auto", "Encode and decode in tiles: auto does it above 1024 px, to bound the VAE's "
                              "memory on large pictures.", choices=VAE_TILING)
    max_new_tokens: int = setting(96, "Token budget of the derived expressive instruction, 1 to 1024 (the paper: 96).",
                                  low=1, high=1024)

    def __post_init__(self) -> None:
        for f in fields(self):
            check_setting(f, getattr(self, f.name))

    def derive_config(self) -> DeriveConfig:
        return DeriveConfig(max_new_tokens=self.max_new_tokens)

    def sample_config(self, recommended: Mapping[str, Any] | None = None) -> SampleConfig:
        """The values the sampler runs with: what is set, else the preset's steps and scheduler and the model's
        ``recommended`` guidance and size (the paper's when it recommends nothing)."""
        chosen = {**PAPER, **(recommended or {}), **SAMPLING_PRESETS[self.preset]}
        for name in ("num_inference_steps", "guidance_scale", "image_guidance_scale", "scheduler", "max_side"):
            value = getattr(self, name)
            if value not in (0, AUTO):
                chosen[name] = value
        return SampleConfig(vae_tiling=self.vae_tiling, **chosen)

    @classmethod
    def named(cls, front: str) -> dict[str, str]:
        """Field name -> the name a front end ("flag" or "widget") gives it, where that differs."""
        return {f.name: f.metadata[front] for f in fields(cls) if f.metadata[front]}

    def replace(self, **changes: Any) -> EditSettings:
        return dataclasses.replace(self, **changes)


SETTINGS = {f.name: f for f in fields(EditSettings)}


def check_setting(declared: dataclasses.Field, value: object, resolved: bool = False) -> None:
    """``value`` against its declaration; ``resolved``: the value a stage runs with (no auto left)."""
    meta, name = declared.metadata, declared.name
    if meta["choices"]:
        allowed = tuple(c for c in meta["choices"] if not (resolved and meta["auto"] and c == AUTO))
        if value not in allowed:
            raise SettingError(name, f"must be one of {', '.join(allowed)}", value)
        return
    is_int = declared.type == "int"
    ok_type = isinstance(value, int) if is_int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise SettingError(name, f"must be {'an integer' if is_int else 'a number'}", value)
    if (meta["auto"] and not resolved and value == 0) or (meta["no_limit"] and value == NO_LIMIT):
        return
    if not meta["low"] <= value <= meta["high"]:
        raise SettingError(name, f"must be {_range(meta, resolved)}", value)


def _range(meta: Mapping[str, Any], resolved: bool) -> str:
    if meta["range_text"]:
        return meta["range_text"]
    words = [f"from {meta['low']:g} to {meta['high']:g}"]
    if meta["auto"] and not resolved:
        words.append("0 (auto)")
    if meta["no_limit"]:
        words.append(f"{NO_LIMIT} (no limit)")
    return ", or ".join(words)


@dataclass(frozen=True)
class DeriveConfig:
    """Greedy derivation of the expressive instruction (docs/algorithm.md §2.5)."""

    max_new_tokens: int = SETTINGS["max_new_tokens"].default
    no_repeat_ngram_size: int = 3  # applied over prompt + answer, as transformers' generate did (not a user setting)

    def __post_init__(self) -> None:
        check_setting(SETTINGS["max_new_tokens"], self.max_new_tokens, resolved=True)
        if isinstance(self.no_repeat_ngram_size, bool) or not isinstance(self.no_repeat_ngram_size, int) \
                or not 0 <= self.no_repeat_ngram_size <= 64:
            raise SettingError("no_repeat_ngram_size", "must be an integer from 0 to 64", self.no_repeat_ngram_size)


@dataclass(frozen=True)
class SampleConfig:
    """Dual-guidance denoising (docs/algorithm.md §2.9), resolved: the paper's values by default."""

    num_inference_steps: int = SAMPLING_PRESETS["paper"]["num_inference_steps"]
    guidance_scale: float = PAPER["guidance_scale"]  # pushes the edit towards the visual imagination
    image_guidance_scale: float = PAPER["image_guidance_scale"]  # keeps the result close to the input image
    scheduler: str = SAMPLING_PRESETS["paper"]["scheduler"]
    max_side: int = PAPER["max_side"]  # longer image sides are scaled down to this before encoding; -1 = no limit
    vae_tiling: str = SETTINGS["vae_tiling"].default

    def __post_init__(self) -> None:
        for f in fields(self):
            check_setting(SETTINGS[f.name], getattr(self, f.name), resolved=True)

    @property
    def do_classifier_free_guidance(self) -> bool:
        # The same condition as diffusers' pipeline: otherwise only the imagination branch runs.
        return self.guidance_scale > 1.0 and self.image_guidance_scale >= 1.0


def check_recommended_sampling(sampling: object, where: str) -> dict[str, float | int]:
    """A model's recommended settings, checked: only :data:`RECOMMENDABLE` fields, each a valid value."""
    if not isinstance(sampling, Mapping) or set(sampling) - set(RECOMMENDABLE):
        raise InputError(f"{where}: recommended sampling must map {' / '.join(RECOMMENDABLE)} to numbers, "
                         f"got {sampling!r}")
    SampleConfig(**sampling)  # the same range checks as a user's values
    return {k: int(v) if k == "max_side" else float(v) for k, v in sampling.items()}
