"""Every setting, declared once: name, type, default, range, help.

:class:`EditSettings` is what a person or a script sets for an edit; :class:`PlacementSettings` is where the
model's parts live (the card's memory, precision, compile, a LoRA's strength). Their fields carry their declaration
(range, choices, help, the CLI flag and the node widget that set them), and every front end is made from them: the
CLI's flags and ``--help`` (:mod:`mgie_core.frontends.cli`), the nodes' widgets and tooltips (``nodes/widgets.py``),
fine-tuning's options that share them (``train/config.py``) and the Python API. Help texts take their ranges and
defaults from the declaration (``{range}``, ``{default}``), so a number is written once.

One rule for "decided for you": ``0`` for a number and ``"auto"`` for a choice. Guidance and ``max_side`` then
come from the model's recommendation (a bundle's metadata; Apple's MGIE recommends nothing and gets the paper's
values), and steps and scheduler from the preset. "No size limit" is ``-1``.

:class:`DeriveConfig` and :class:`SampleConfig` are the resolved values each stage runs with. They are made in one
place, :meth:`EditSettings.derive_config` and :meth:`EditSettings.sample_config`, and checked against the same
declarations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import InputError, SettingError
from .runtime.devices import DTYPES
from .runtime.quant import LLM_QUANTS
from .stages.schedulers import SCHEDULER_NAMES

DEFAULT_SEED = 13331  # the seed of Apple's demo notebook
SEED_MAX = 2**64 - 1  # a seed is any unsigned 64-bit integer, as torch.Generator.manual_seed takes
AUTO = "auto"  # a choice left to the model or the preset; numbers say it with 0
NO_LIMIT = -1  # max_side: never scale the picture down
VAE_TILING = ("auto", "on", "off")
TILE_ABOVE = 1024  # px: vae_tiling "auto" encodes and decodes longer sides than this in tiles

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

# Memory: the size of the card in GB. The node offers the common ones; the CLI and Python take any whole number.
MEMORY_SIZES = (24, 16, 12, 8, 6)
MEMORY_MAX_GB = 4096
# Load MGIE's memory labels before card sizes: each one a fixed placement (LLM quantization, staged), kept so that a
# workflow saved with one still loads and edits as it did.
LEGACY_MEMORY = {
    "24 GB (fp16, all on the GPU)": ("none", "off"),
    "16 GB (fp16, staged)": ("none", "on"),
    "8 GB (int8 LLM, staged)": ("int8", "on"),
    "6 GB (4-bit LLM, staged)": ("int4", "on"),
}


def setting(default: Any, help: str, *, low: float | None = None, high: float | None = None,  # noqa: A002
            choices: tuple[str, ...] = (), auto: bool = False, flag: str | None = None, widget: str | None = None,
            step: float | None = None, no_limit: bool = False, range_text: str | None = None,
            check: Callable[[Any], Any] | None = None, suggested: tuple[str, ...] = ()) -> Any:
    """A declared field. ``help`` is the CLI's help and the widget's tooltip; ``{range}`` and ``{default}`` in it are
    filled from the declaration. ``auto``: 0 (or "auto") means "decided for you"; ``no_limit``: -1 means no limit;
    ``check``: a value's own check (returns the value, normalised), for settings that are neither a number in a
    range nor one of a few choices; ``suggested``: the values a node offers for such a setting."""
    meta = {"low": low, "high": high, "choices": choices, "auto": auto, "step": step, "no_limit": no_limit,
            "flag": flag, "widget": widget, "range_text": range_text, "check": check, "suggested": suggested}
    meta["help"] = help.format(range=range_words(meta, resolved=False), default=_shown(default))
    return field(default=default, metadata=meta)


def like(declared: dataclasses.Field, default: Any = dataclasses.MISSING, help: str | None = None) -> Any:  # noqa: A002
    """The same setting used elsewhere (fine-tuning's seed, its preview steps): the declaration's type, range and
    help, with another default where that use needs one."""
    meta = dict(declared.metadata, flag=None, widget=None)  # named after the field that uses it
    if help is not None:
        meta["help"] = help.format(range=range_words(meta, resolved=False), default=_shown(default))
    return field(default=declared.default if default is dataclasses.MISSING else default, metadata=meta)


def range_words(meta: Mapping[str, Any], resolved: bool) -> str:
    """A number setting's range as its help and errors say it."""
    if meta["range_text"]:
        return meta["range_text"]
    if meta["low"] is None:
        return ""
    up_to = meta["auto"] and not resolved and meta["low"] == 0  # 0 is auto, not the lowest value
    low, high = (f"{v:,}" if isinstance(v, int) else f"{v:g}" for v in (meta["low"], meta["high"]))
    words = [f"up to {high}" if up_to else f"from {low} to {high}"]
    if meta["auto"] and not resolved:
        words.append("0 (auto)")
    if meta["no_limit"]:
        words.append(f"{NO_LIMIT} (no limit)")
    return ", or ".join(words)


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _memory(value: object) -> str:
    """``auto``, a card size in GB (``12``, ``"12"``, ``"12 GB"``) as its number's text, or a legacy label."""
    if value == AUTO or value in LEGACY_MEMORY:
        return value  # type: ignore[return-value]
    text = str(value).strip().removesuffix("GB").strip() if isinstance(value, (str, int)) and not isinstance(
        value, bool) else ""
    if not text.isdigit() or not 1 <= int(text) <= MEMORY_MAX_GB:
        raise SettingError("memory", f"must be auto or your GPU's memory in GB, a whole number from 1 to "
                           f"{MEMORY_MAX_GB}", value)
    return str(int(text))


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SettingError(name, "must be a name", value)
    return value


@dataclass(frozen=True)
class EditSettings:
    """The settings of an edit, as a person sets them (0 / "auto": decided by the model or the preset)."""

    seed: int = setting(DEFAULT_SEED, "Noise seed, {range}. Noise is drawn on the CPU, so a seed gives the same image "
                        "on every device. Default: {default}, as Apple's demo.", low=0, high=SEED_MAX,
                        range_text="an integer from 0 to 2^64-1")
    preset: str = setting("paper", f"paper: {SAMPLING_PRESETS['paper']['scheduler']}, "
                          f"{SAMPLING_PRESETS['paper']['num_inference_steps']} steps, as MGIE was released. fast: "
                          f"{SAMPLING_PRESETS['fast']['scheduler']}, {SAMPLING_PRESETS['fast']['num_inference_steps']} "
                          "steps, which edited mgie-mini's test scenes as well (measured on mgie-mini, not on "
                          "MGIE-7B). Steps and scheduler set to anything but auto win over the preset.",
                          choices=tuple(SAMPLING_PRESETS))
    num_inference_steps: int = setting(0, "Denoising steps, {range}: the preset's (paper "
                                       f"{SAMPLING_PRESETS['paper']['num_inference_steps']}, fast "
                                       f"{SAMPLING_PRESETS['fast']['num_inference_steps']}).", low=1, high=1000,
                                       auto=True, flag="--steps", widget="steps")
    guidance_scale: float = setting(0.0, "Text guidance, how strongly the edit follows the visual imagination, {range}: "
                                    "the model's recommendation (the paper's "
                                    f"{PAPER['guidance_scale']:g} for MGIE-7B). Values up to 1 turn guidance off.",
                                    low=0.0, high=100.0, auto=True, step=0.1)
    image_guidance_scale: float = setting(0.0, "Image guidance, how strongly the result stays close to the input image, "
                                          "{range}: the model's recommendation (the paper's "
                                          f"{PAPER['image_guidance_scale']:g} for MGIE-7B). Values under 1 turn "
                                          "guidance off.", low=0.0, high=100.0, auto=True, step=0.05)
    scheduler: str = setting(AUTO, "Sampler. auto: the preset's ("
                             f"{SAMPLING_PRESETS['paper']['scheduler']}, as MGIE was released, for paper).",
                             choices=(AUTO, *SCHEDULER_NAMES), auto=True)
    max_side: int = setting(0, "Longest side, in pixels, of the picture the model edits, {range}: a larger picture "
                            "is scaled down first (sides are rounded down to multiples of 8). auto is the model's "
                            f"working size (the paper's {PAPER['max_side']} px for MGIE-7B).", low=8, high=16384,
                            auto=True, no_limit=True, step=8)
    vae_tiling: str = setting("auto", f"Encode and decode in tiles: auto does it above {TILE_ABOVE} px, to bound the "
                              "VAE's memory on large pictures.", choices=VAE_TILING)
    max_new_tokens: int = setting(96, "Token budget of the derived expressive instruction, {range} (the paper: "
                                  "{default}).", low=1, high=1024)

    def __post_init__(self) -> None:
        check_fields(self)

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
        return front_names(cls, front)

    def replace(self, **changes: Any) -> EditSettings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class PlacementSettings:
    """Where MGIE's parts live, as a person sets it: the card's memory (auto, or its size in GB), precision, compile,
    and the expert overrides of the memory plan. :class:`mgie_core.runtime.placement.Placement` is its resolution."""

    memory: str = setting(AUTO, "Your GPU's memory in GB (any whole number), or auto: this GPU's. MGIE estimates "
                          "from the model's shapes what each placement needs and takes the fastest that fits: every "
                          "part on the GPU; else staged (the LLM and the UNet take turns on it); else staged with the "
                          "LLM's linear layers in int8; else in 4 bits (CUDA only). On a CPU, auto places nothing.",
                          check=_memory, suggested=(AUTO, *(f"{size} GB" for size in MEMORY_SIZES)))
    llm_quant: str = setting(AUTO, "Expert: the LLM's linear layers in int8 or 4 bits (4 bits: CUDA only), or none, "
                             "whatever the memory plan says. auto: the plan's.", choices=(AUTO, *LLM_QUANTS), auto=True)
    staged: str = setting(AUTO, "Expert: on keeps only the stage at work on the GPU (the LLM while it derives, the UNet "
                          "and the VAE while they denoise), off keeps every part there. auto: the plan's.",
                          choices=("auto", "on", "off"), auto=True)
    dtype: str = setting(AUTO, "Precision of the weights: auto is fp16 on a GPU, as Apple's demo runs MGIE, and fp32 "
                         "on a CPU.", choices=(AUTO, *DTYPES), auto=True)
    compile: bool = setting(False, "torch.compile the LLM's decoding and the UNet (CUDA graphs on a GPU). The first "
                            "edit at each image size compiles (a minute or more), the next ones are faster. Needs every "
                            "part on the GPU (a plan without staging).")
    device: str = setting(AUTO, "cpu, cuda, cuda:1, mps ...; auto: a CUDA GPU, else Apple's GPU, else the CPU "
                          "(ComfyUI's nodes use ComfyUI's device).", check=lambda value: _text("device", value))
    lora_strength: float = setting(1.0, "Strength of the LoRA, {range}: 0 leaves the model unchanged, 1 applies the "
                                   "LoRA as trained.", low=-10.0, high=10.0, step=0.05)

    def __post_init__(self) -> None:
        check_fields(self)
        legacy = LEGACY_MEMORY.get(self.memory)
        if legacy is not None:  # a fixed placement of an old workflow: memory auto with that quantization and staging
            given = [name for name in ("llm_quant", "staged") if getattr(self, name) != AUTO]
            if given:
                raise SettingError("memory", f"is an old workflow's fixed placement, which sets {' and '.join(given)} "
                                   "itself: choose a card size instead", self.memory)
            object.__setattr__(self, "memory", AUTO)
            object.__setattr__(self, "llm_quant", legacy[0])
            object.__setattr__(self, "staged", legacy[1])

    @property
    def memory_gb(self) -> int | None:
        """The card's size in GB; None for auto."""
        return None if self.memory == AUTO else int(self.memory)

    @classmethod
    def named(cls, front: str) -> dict[str, str]:
        return front_names(cls, front)


SETTINGS = {f.name: f for cls in (EditSettings, PlacementSettings) for f in fields(cls)}
TRACKERS = ("none", "tensorboard", "wandb", "trackio", "all")  # accelerate's trackers that fine-tuning offers


@dataclass(frozen=True)
class TrainSettings:
    """The settings of fine-tuning that ``train/finetune.py`` and the Train MGIE LoRA node share (the others are
    ``train/config.py``'s own): declared here, so both are made from one declaration."""

    max_steps: int = setting(500, "Optimizer steps of the run, {range} (default: {default}).", low=1, high=1_000_000,
                             widget="training_steps")
    learning_rate: float = setting(1e-4, "Peak learning rate of AdamW, {range} (default: {default}).", low=1e-7,
                                   high=1.0, step=1e-5)
    lora_rank: int = setting(16, "Rank of the LoRA adapters on the UNet and the LLM, {range} (default: {default}).",
                             low=1, high=1024)
    seed: int = like(SETTINGS["seed"], 0, "Seed of the adapters' initialisation, the data order, the noise and "
                     "the sample edits, {range} (default: {default}).")
    memory: str = like(SETTINGS["memory"], help=SETTINGS["memory"].metadata["help"] + " For "
                       "fine-tuning, the plan also decides gradient checkpointing, 8-bit optimizer states and cached "
                       "latents, and is printed at the start.")
    sample_every: int = setting(100, "Edit the first training input with the weights so far every this many steps "
                                "(and at the end), {range} (default: {default}).", low=1, high=1_000_000)
    sample_steps: int = like(SETTINGS["num_inference_steps"], 20, "Denoising steps of those sample edits, "
                             "{range} (default: {default}); their guidance and size are the model's, as an edit's.")
    report_to: str = setting("none", "Also log the losses, the learning rate and the sample edits as the run goes to "
                             "TensorBoard (in OUTPUT/logs), Weights & Biases or Trackio, with accelerate's trackers (the "
                             "tracker's package installed); every run writes losses.jsonl and losses.png anyway.",
                             choices=TRACKERS)

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def named(cls, front: str) -> dict[str, str]:
        return front_names(cls, front)


def front_names(cls: type, front: str) -> dict[str, str]:
    """Field name -> the name a front end ("flag" or "widget") gives it, where that differs."""
    return {f.name: f.metadata[front] for f in fields(cls) if f.metadata[front]}


TRAIN_SETTINGS = {f.name: f for f in fields(TrainSettings)}


def check_fields(settings: object) -> None:
    """Every field of a settings dataclass against its declaration (a ``check`` may normalise the value)."""
    for f in fields(settings):
        value = check_setting(f, getattr(settings, f.name))
        if value is not getattr(settings, f.name):
            object.__setattr__(settings, f.name, value)


def check_setting(declared: dataclasses.Field, value: object, resolved: bool = False) -> Any:
    """``value`` against its declaration; ``resolved``: the value a stage runs with (no auto left). Returns the
    value (as the declaration's own ``check`` normalises it)."""
    meta, name = declared.metadata, declared.name
    if meta["check"] is not None:
        return meta["check"](value)
    if meta["choices"]:
        allowed = tuple(c for c in meta["choices"] if not (resolved and meta["auto"] and c == AUTO))
        if value not in allowed:
            raise SettingError(name, f"must be one of {', '.join(allowed)}", value)
        return value
    kind = declared.type.replace(" | None", "") if isinstance(declared.type, str) else declared.type.__name__
    if kind == "bool":
        if not isinstance(value, bool):
            raise SettingError(name, "must be true or false", value)
        return value
    ok_type = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise SettingError(name, f"must be {'an integer' if kind == 'int' else 'a number'}", value)
    if (meta["auto"] and not resolved and value == 0) or (meta["no_limit"] and value == NO_LIMIT):
        return value
    if not meta["low"] <= value <= meta["high"]:
        raise SettingError(name, f"must be {range_words(meta, resolved)}", value)
    return value


@dataclass(frozen=True)
class DeriveConfig:
    """Greedy derivation of the expressive instruction (docs/algorithm.md §2.5), resolved. Made by
    :meth:`EditSettings.derive_config`."""

    max_new_tokens: int = SETTINGS["max_new_tokens"].default
    no_repeat_ngram_size: int = 3  # applied over prompt + answer, as transformers' generate did (not a user setting)

    def __post_init__(self) -> None:
        check_setting(SETTINGS["max_new_tokens"], self.max_new_tokens, resolved=True)
        if isinstance(self.no_repeat_ngram_size, bool) or not isinstance(self.no_repeat_ngram_size, int) \
                or not 0 <= self.no_repeat_ngram_size <= 64:
            raise SettingError("no_repeat_ngram_size", "must be an integer from 0 to 64", self.no_repeat_ngram_size)


@dataclass(frozen=True)
class SampleConfig:
    """Dual-guidance denoising (docs/algorithm.md §2.9), resolved: every value set, none left to auto (the defaults
    are the paper's). Made by :meth:`EditSettings.sample_config`, which applies the preset and the model's
    recommendation; only tests build one by hand."""

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
    for name, value in sampling.items():
        check_setting(SETTINGS[name], value, resolved=True)  # the same range checks as a user's values
    return {k: int(v) if k == "max_side" else float(v) for k, v in sampling.items()}
