"""The whole edit in one call: derive -> imagine -> sample, for scripts, the CLI and tests."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .compiled import compile_unet
from .config import DEFAULT_SEED, DeriveConfig, SampleConfig, sample_config_for
from .derive import Derivation, derive
from .devices import resolve_device, resolve_dtype
from .errors import InputError
from .formats import load_model
from .images import ImageLike, fit_for_vae, fit_mask, tensor_to_pil
from .imagine import Imagination, imagine
from .model import MGIEModel
from .progress import ProgressCallback, offset
from .quant import check_llm_quant, quantize_llm
from .residency import Residency
from .sample import SampleOutput, sample
from .steps import parse_steps

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EditResult:
    """images: B edited PIL images; the intermediate values of each stage ride along."""

    images: list[Image.Image]
    derivation: Derivation
    imagination: Imagination
    output: SampleOutput

    @property
    def expressive_instructions(self) -> tuple[str, ...]:
        return self.derivation.expressive_instructions


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator: the same seed gives the same noise on every device."""
    generator = torch.Generator("cpu")
    generator.manual_seed(DEFAULT_SEED if seed is None else int(seed))
    return generator


def make_generators(seed: int | Sequence[int] | None) -> torch.Generator | list[torch.Generator]:
    """One generator for a seed; a generator per image for a list of seeds (each image's noise is its own,
    whatever batch it is edited in)."""
    if isinstance(seed, Sequence):
        return [make_generator(s) for s in seed]
    return make_generator(seed)


class MGIEPipeline:
    """Chains the three stages on one device and dtype (``auto``: fp16 on a CUDA GPU, fp32 elsewhere).

    For small GPUs: ``llm_quant`` (``int8``, or ``int4`` on CUDA) quantizes the LLM's linear layers as the model
    is placed (see :mod:`.quant`); ``low_vram`` stages the parts, so the LLM and the UNet are never on the GPU
    together (see :mod:`.residency`). The defaults (``none``, False) keep every part on the device as loaded.
    ``compile`` runs decoding and denoising under torch.compile (see :mod:`.compiled`), for GPUs that keep every
    part resident; the first edit at each size pays for compiling.
    """

    def __init__(self, model: MGIEModel, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
                 llm_quant: str = "none", low_vram: bool = False, compile: bool = False):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        check_llm_quant(llm_quant, self.device)
        if compile and low_vram:
            raise InputError("compile and low_vram do not go together: compiled graphs keep the parts where they were "
                             "compiled, staging moves them at every edit; choose compile on a card that holds MGIE "
                             "whole, low_vram on a small one")
        # Quantizing or staging starts from the CPU, so the full-precision LLM is never whole on the GPU.
        home = "cpu" if low_vram or llm_quant != "none" else self.device
        self.model = model.to(home, self.dtype).eval()
        quantize_llm(self.model.mllm.llm, llm_quant, self.device)
        self.residency = Residency(self.model, self.device, staged=low_vram)
        self.compile = compile
        self.sampling_unet = compile_unet(self.model.unet) if compile else self.model.unet  # what denoises

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype | None = None, vision_tower: str | Path | None = None,
                        llm_quant: str = "none", low_vram: bool = False, compile: bool = False) -> MGIEPipeline:
        return cls(load_model(path, vision_tower=vision_tower), device=device, dtype=dtype, llm_quant=llm_quant,
                   low_vram=low_vram, compile=compile)

    def default_sample_config(self) -> SampleConfig:
        """The paper's sampling, with the settings the model recommends where it does (mgie-mini: guidance
        2 / 1.5 and its 64 px working size)."""
        return sample_config_for(self.model.recommended_sampling)

    def derive(self, images: Sequence[ImageLike], instructions: Sequence[str], config: DeriveConfig = DeriveConfig(),
               expressive: Sequence[str | None] | None = None, callback: ProgressCallback | None = None) -> Derivation:
        self.residency.place("derive")
        return derive(self.model, images, instructions, config, expressive, callback, compiled=self.compile)

    def imagine(self, derivation: Derivation) -> Imagination:
        return imagine(self.model.edit_head, derivation)

    def sample(self, images: ImageLike | Sequence[Image.Image], imagination: Imagination,
               config: SampleConfig | None = None, seed: int | Sequence[int] | None = None,
               callback: ProgressCallback | None = None, mask: torch.Tensor | None = None) -> SampleOutput:
        """Denoise; without a ``config``, the model's recommended settings (see :meth:`default_sample_config`).
        ``seed``: one for the batch, or one per image. ``mask``: where to edit, resized to the pictures."""
        config = config or self.default_sample_config()
        pixels = fit_for_vae(images, self.model.vae_scale_factor, config.max_side)
        mask = fit_mask(mask, tuple(pixels.shape[-2:]), pixels.shape[0]) if mask is not None else None
        m = self.model
        self.residency.place("sample")
        return sample(self.sampling_unet, m.vae, m.scheduler_config, pixels, imagination, config, make_generators(seed), callback,
                      mask=mask)

    def __call__(
        self,
        images: ImageLike | Sequence[Image.Image],
        instructions: str | Sequence[str],
        derive_config: DeriveConfig = DeriveConfig(),
        sample_config: SampleConfig | None = None,
        seed: int | Sequence[int] | None = None,
        expressive: str | Sequence[str | None] | None = None,
        callback: ProgressCallback | None = None,
        mask: torch.Tensor | None = None,
    ) -> EditResult:
        """Edit images by instructions (one instruction for all images, or one per image); without a
        ``sample_config``, the model's recommended guidance applies."""
        sample_config = sample_config or self.default_sample_config()
        image_list = as_image_list(images)
        instructions = broadcast(instructions, len(image_list), "instructions")
        overrides = broadcast(expressive, len(image_list), "expressive instructions") if expressive is not None else None
        total = len(image_list) * derive_config.max_new_tokens + sample_config.num_inference_steps
        derivation = self.derive(image_list, instructions, derive_config, overrides, offset(callback, 0, total))
        for text in derivation.expressive_instructions:
            logger.info("expressive instruction: %s", text)
        imagination = self.imagine(derivation)
        start = len(image_list) * derive_config.max_new_tokens
        pixels = torch.stack(image_list) if isinstance(images, torch.Tensor) else image_list
        out = self.sample(pixels, imagination, sample_config, seed, offset(callback, start, total), mask)
        return EditResult(tensor_to_pil(out.images), derivation, imagination, out)

    def edit_in_steps(
        self,
        images: ImageLike | Sequence[Image.Image],
        steps: str | Sequence[str],
        derive_config: DeriveConfig = DeriveConfig(),
        sample_config: SampleConfig | None = None,
        seed: int | Sequence[int] | None = None,
        callback: ProgressCallback | None = None,
        mask: torch.Tensor | None = None,
    ) -> list[EditResult]:
        """A multi-step edit: each instruction of ``steps`` (a list, or a text with one per line) edits the
        previous step's result, with the same seed and mask, as chained edits would. One result per step;
        the last one holds the final images."""
        steps = parse_steps(steps)
        sample_config = sample_config or self.default_sample_config()
        per_step = len(as_image_list(images)) * derive_config.max_new_tokens + sample_config.num_inference_steps
        results: list[EditResult] = []
        current = images
        for index, instruction in enumerate(steps):
            progress = offset(callback, index * per_step, per_step * len(steps))
            results.append(self(current, instruction, derive_config, sample_config, seed, callback=progress, mask=mask))
            current = results[-1].output.images  # the sampler's float pixels, not 8-bit files
        return results


def as_image_list(images: ImageLike | Sequence[Image.Image]) -> list[ImageLike]:
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        return list(images)
    images = list(images)
    if not images:
        raise InputError("no images given")
    return images


def broadcast(values: str | Sequence[str | None] | None, count: int, what: str) -> list:
    if values is None or isinstance(values, str):
        return [values] * count
    values = list(values)
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise InputError(f"got {len(values)} {what} for {count} images; give one, or one per image")
    return values
