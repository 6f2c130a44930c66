"""The one edit runner: derive -> imagine -> sample, for every front end.

The Python API (:class:`mgie_core.MGIEPipeline`), the CLI (one picture, a chain of instructions, a folder, a
manifest, several processes), the MGIE Edit node and training's preview edits all hand an :class:`Edit` to
:func:`run_edit`. It owns the sequence, the chain (each instruction edits the previous result), masks and the
per-picture generators; a front end only translates its inputs into an :class:`Edit` and shows the results.

The model comes as a *placed* model (:class:`mgie_core.runtime.placement.PlacedModel`, or the node pack's handle backed by
ComfyUI's model management): ``model``, ``place(stage)``, ``sampling_unet`` and ``compiled``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from PIL import Image
from torch import nn

from .config import DEFAULT_SEED, PAPER, SETTINGS, DeriveConfig, SampleConfig, check_setting
from .errors import InputError
from .images import ImageLike, fit_for_vae, fit_mask, mask_batch, tensor_to_pil, vae_size
from .model.mgie import MGIEModel
from .runtime.progress import ProgressCallback, offset
from .stages.chain import parse_chain
from .stages.derive import Derivation, derive, encode_prompt
from .stages.imagine import Imagination, imagine
from .stages.prompt import check_instruction, language_notices
from .stages.sample import SampleOutput, sample

logger = logging.getLogger(__name__)


class Placed(Protocol):
    model: MGIEModel
    sampling_unet: nn.Module
    compiled: bool

    def place(self, stage: str) -> None: ...


class AsIs:
    """A model used where it already is (training's preview edits): nothing to place, nothing compiled."""

    compiled = False

    def __init__(self, model: MGIEModel):
        self.model, self.sampling_unet = model, model.unet

    def place(self, stage: str) -> None:
        pass


@dataclass(frozen=True)
class Edit:
    """What to do to a batch of B pictures (PIL images, or (3, H, W) float tensors in [0, 1]).

    chain: one tuple per instruction of the chain, with that instruction for each picture (B entries); the
    second edits the first one's result, and so on. expressive: B texts replacing the derived expressive
    instruction (None: derive it), first instruction only. seeds: one seed, whose generator draws the whole batch's
    noise (as diffusers' pipeline does), or B seeds, one generator per picture (its picture is then the same in any
    batch). masks: None, or (1 or B, 1, H, W) in [0, 1], 1 where to edit.
    """

    images: tuple[ImageLike, ...]
    chain: tuple[tuple[str, ...], ...]
    expressive: tuple[str | None, ...] | None = None
    seeds: tuple[int, ...] = (DEFAULT_SEED,)
    masks: torch.Tensor | None = None

    @classmethod
    def of(cls, images: ImageLike | Sequence[ImageLike], instructions: str | Sequence[str],
           expressive: str | Sequence[str | None] | None = None, seed: int | Sequence[int] = DEFAULT_SEED,
           mask: torch.Tensor | None = None, chained: bool = False) -> Edit:
        """From what people pass: one picture or several; one instruction, or one per picture; one seed, or one
        per picture. ``chained``: ``instructions`` is a chain instead (a list, or a text with one per line), each
        applied in turn to every picture."""
        images = as_image_list(images)
        count = len(images)
        if chained:
            chain = tuple((text,) * count for text in parse_chain(instructions))
        else:
            chain = (tuple(broadcast(instructions, count, "instructions")),)
        seeds = tuple(broadcast(seed, count, "seeds")) if isinstance(seed, Sequence) else (seed,)
        overrides = None if expressive is None else tuple(broadcast(expressive, count, "expressive instructions"))
        return cls(tuple(images), chain, overrides, seeds, mask)

    def __post_init__(self) -> None:
        count = len(self.images)
        if not count:
            raise InputError("no images given")
        if not self.chain:
            raise InputError('the instruction is empty: describe the edit, e.g. "make it look like winter"')
        if any(len(step) != count for step in self.chain):
            raise InputError(f"each instruction of the chain needs one text per picture ({count})")
        if self.expressive is not None and len(self.chain) > 1 and any(t and t.strip() for t in self.expressive):
            raise InputError("the expressive instruction you give replaces the derived one of a one-instruction edit; "
                             "a chain of instructions derives each one's own: leave it empty")
        if len(self.seeds) not in (1, count):
            raise InputError(f"got {len(self.seeds)} seeds for {count} images; give one, or one per image")
        for seed in self.seeds:
            check_seed(seed)
        if self.masks is not None:
            object.__setattr__(self, "masks", mask_batch(self.masks))


@dataclass(frozen=True)
class EditResult:
    """One instruction's result: ``images`` (B PIL pictures), what each stage made on the way, and the notices the
    check gave (an instruction in a language the model does not know, a picture that will take long)."""

    images: list[Image.Image]
    derivation: Derivation
    imagination: Imagination
    output: SampleOutput
    notices: tuple[str, ...] = ()

    @property
    def expressive_instructions(self) -> tuple[str, ...]:
        return self.derivation.expressive_instructions


StageProgress = Callable[[str, int], "ProgressCallback | None"]  # (stage, chain index) -> that stage's callback


@dataclass
class OneBar:
    """A :data:`StageProgress` counting every stage of every instruction on one ``callback(step, total)``."""

    callback: ProgressCallback | None
    tokens: int  # B x the token budget: one derivation
    steps: int  # denoising steps: one sampling
    count: int = 1  # instructions in the chain
    total: int = field(init=False)

    def __post_init__(self) -> None:
        self.total = (self.tokens + self.steps) * self.count

    def __call__(self, stage: str, index: int) -> ProgressCallback | None:
        start = index * (self.tokens + self.steps) + (self.tokens if stage == "sample" else 0)
        return offset(self.callback, start, self.total)


def check_edit(placed: Placed, edit: Edit, derive_config: DeriveConfig, sample_config: SampleConfig) -> list[str]:
    """What can be checked once the model is known, before the LLM runs: every instruction (and its prompt's length),
    every picture's size, the masks' count. Returns what is worth saying first: instructions in a language (or, for
    a model of a closed world, words) it was not trained on, pictures that will take long."""
    model, notices = placed.model, []
    for step in edit.chain:
        for text in dict.fromkeys(step):
            encode_prompt(model, check_instruction(text, model.tokenizer), derive_config.max_new_tokens)
            notices += language_notices(text, model)
    for text in edit.expressive or ():
        if text and text.strip():
            check_instruction(text, model.tokenizer, what="expressive instruction")
    for size in dict.fromkeys(_size(image) for image in edit.images):
        edited = vae_size(*size, model.vae_scale_factor, sample_config.max_side)
        notices += size_notices(size, edited, model)
    if edit.masks is not None and edit.masks.shape[0] not in (1, len(edit.images)):
        raise InputError(f"{edit.masks.shape[0]} masks for {len(edit.images)} images: give one mask for all the "
                         "images, or one per image")
    return notices


def _size(image: ImageLike) -> tuple[int, int]:
    return image.size if isinstance(image, Image.Image) else (image.shape[-1], image.shape[-2])


LARGE = 4  # times the pixels of the model's working size: a picture above this gets a notice of what it costs


def size_notices(size: tuple[int, int], edited: tuple[int, int], model: MGIEModel) -> list[str]:
    """A notice when the picture is edited far above the model's working size: the time it will take, relatively."""
    side = model.recommended_sampling.get("max_side", PAPER["max_side"])
    ratio = edited[0] * edited[1] / side**2
    if ratio <= LARGE:
        return []
    return [f"the picture is edited at {edited[0]}x{edited[1]} ({edited[0] * edited[1] / 1e6:.1f} megapixels), "
            f"{ratio:.0f} times the pixels of this model's {side}x{side} working size: expect at least {ratio:.0f} "
            "times as long as an edit at that size, and more memory; lower max_side, or leave it at auto, to edit "
            "faster."]


def run_edit(placed: Placed, edit: Edit, derive_config: DeriveConfig, sample_config: SampleConfig,
             progress: StageProgress | None = None,
             on_result: Callable[[int, EditResult], None] | None = None) -> list[EditResult]:
    """Edit ``edit.images`` by each instruction of the chain in turn; one result per instruction.

    ``progress(stage, index)`` gives each stage its callback; ``on_result(index, result)`` sees each
    instruction's result as it comes (the CLI prints and saves it)."""
    notices = tuple(check_edit(placed, edit, derive_config, sample_config))
    for notice in notices:
        logger.warning("%s", notice)
    progress = progress or (lambda stage, index: None)
    current: Sequence[ImageLike] = edit.images
    results: list[EditResult] = []
    for index, instructions in enumerate(edit.chain):
        placed.place("derive")
        expressive = edit.expressive if index == 0 else None
        derivation = derive(placed.model, current, instructions, derive_config, expressive,
                            progress("derive", index), compiled=placed.compiled)
        for text in derivation.expressive_instructions:
            logger.info("expressive instruction: %s", text)
        placed.place("imagine")
        imagination = imagine(placed.model.edit_head, derivation)
        placed.place("sample")
        output = sample_pictures(placed, current, imagination, sample_config, edit.seeds, edit.masks,
                                 progress("sample", index))
        results.append(EditResult(tensor_to_pil(output.images), derivation, imagination, output, notices))
        if on_result is not None:
            on_result(index, results[-1])
        current = list(output.images)  # the sampler's float pixels, not 8-bit files, go on to the next instruction
    return results


def sample_pictures(placed: Placed, images: Sequence[ImageLike], imagination: Imagination, config: SampleConfig,
                    seeds: Sequence[int], masks: torch.Tensor | None,
                    callback: ProgressCallback | None = None) -> SampleOutput:
    """Denoise the pictures (all of one size) under their imaginations, with the generator(s) of ``seeds``."""
    model = placed.model
    pixels = [fit_for_vae(image if isinstance(image, Image.Image) else image[None], model.vae_scale_factor,
                          config.max_side) for image in images]  # each (1, 3, H, W)
    if len({tuple(p.shape) for p in pixels}) > 1:
        raise InputError(f"pictures of one edit must share a size, got {sorted({tuple(p.shape[-2:]) for p in pixels})}"
                         "; edit them separately")
    batch = torch.cat(pixels)
    mask = fit_mask(masks, tuple(batch.shape[-2:]), batch.shape[0]) if masks is not None else None
    generators = [make_generator(seed) for seed in seeds]
    return sample(placed.sampling_unet, model.vae, model.scheduler_config, batch, imagination, config,
                  generators if len(generators) > 1 else generators[0], callback, mask=mask)


def check_seed(seed: object) -> int:
    """A seed is an integer from 0 to 2^64-1 (what torch.Generator takes), wherever it comes from."""
    check_setting(SETTINGS["seed"], seed)
    return seed  # type: ignore[return-value]


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator: the same seed gives the same noise on every device."""
    generator = torch.Generator("cpu")
    generator.manual_seed(DEFAULT_SEED if seed is None else int(seed))
    return generator


def as_image_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, torch.Tensor):
        return list(images.unsqueeze(0) if images.ndim == 3 else images)
    return list(images)


def broadcast(values: object, count: int, what: str) -> list:
    if values is None or isinstance(values, (str, int)):
        return [values] * count
    values = list(values)  # type: ignore[arg-type]
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise InputError(f"got {len(values)} {what} for {count} images; give one, or one per image")
    return values
