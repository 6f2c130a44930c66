"""The Python API: a loaded, placed model that edits pictures through the one edit runner (:mod:`..runner`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..config import AUTO, DEFAULT_SEED, EditSettings, PlacementSettings, SampleConfig
from ..errors import InputError
from ..formats import load_model
from ..images import ImageLike
from ..model.mgie import MGIEModel
from ..runner import Edit, EditResult, OneBar, as_image_list, run_edit, sample_pictures
from ..runtime.devices import dtype_name
from ..runtime.placement import PlacedModel, Placement, resolve_placement
from ..runtime.progress import ProgressCallback
from ..stages.derive import Derivation, derive
from ..stages.imagine import Imagination, imagine


class MGIEPipeline(PlacedModel):
    """MGIE on a device, ready to edit.

    The placement options are :class:`mgie_core.PlacementSettings` fields, as the CLI's flags and Load MGIE's
    widgets: ``memory`` is your GPU's size in GB (``"8"``), or ``auto`` (this GPU's; on a CPU every part stays as
    loaded), and the fastest placement that fits is chosen from the model's shapes; ``dtype`` ``auto`` is fp16 on a
    GPU and fp32 elsewhere; ``compile`` runs decoding and denoising under torch.compile (every part resident);
    ``llm_quant`` and ``staged`` override the plan. The edit's settings are :class:`mgie_core.EditSettings`.
    """

    def __init__(self, model: MGIEModel, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
                 memory: str | int = AUTO, compile: bool = False, placement: Placement | None = None,
                 llm_quant: str = AUTO, staged: str = AUTO):
        if placement is None:
            name = dtype_name(dtype) if isinstance(dtype, torch.dtype) else dtype or AUTO
            settings = PlacementSettings(memory=str(memory), llm_quant=llm_quant, staged=staged, compile=compile,
                                         dtype=name)
            placement = resolve_placement(Placement.make(settings, device), model)
        super().__init__(model, placement)
        self.dtype = placement.dtype

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype | None = None, vision_tower: str | Path | None = None,
                        memory: str | int = AUTO, compile: bool = False, llm_quant: str = AUTO,
                        staged: str = AUTO) -> MGIEPipeline:
        """Load a model (Apple's folder, a bundle, or the embedded mgie-mini when ``path`` is None) and place it."""
        return cls(load_model(path, vision_tower=vision_tower), device, dtype, memory, compile, None, llm_quant, staged)

    def sample_config(self, settings: EditSettings | None = None) -> SampleConfig:
        """``settings`` resolved for this model (0 / auto: its recommendation, or the preset's)."""
        return (settings or EditSettings()).sample_config(self.model.recommended_sampling)

    def __call__(self, images: ImageLike | Sequence[ImageLike], instructions: str | Sequence[str],
                 settings: EditSettings | None = None, *, seed: int | Sequence[int] | None = None,
                 expressive: str | Sequence[str | None] | None = None, callback: ProgressCallback | None = None,
                 mask: torch.Tensor | None = None) -> EditResult:
        """Edit pictures by instructions (one for all, or one per picture), with ``settings`` (default: the model's
        recommended ones). ``seed``: one for all, or one per picture, instead of ``settings.seed``. ``mask``:
        (H, W), (B, H, W) or (B, 1, H, W) floats in [0, 1], 1 where to edit, any size."""
        settings, seeds = _seeds(settings, seed)
        return self._run(Edit.of(images, instructions, expressive, seeds, mask), settings, callback)[-1]

    def edit_in_chain(self, images: ImageLike | Sequence[ImageLike], instructions: str | Sequence[str],
                      settings: EditSettings | None = None, *, seed: int | Sequence[int] | None = None,
                      callback: ProgressCallback | None = None, mask: torch.Tensor | None = None) -> list[EditResult]:
        """A chain of instructions (a list, or a text with one per line): each edits the previous result, with
        the same seed and mask, as chained edits would. One result per instruction; the last holds the final
        pictures."""
        settings, seeds = _seeds(settings, seed)
        return self._run(Edit.of(images, instructions, None, seeds, mask, chained=True), settings, callback)

    def _run(self, edit: Edit, settings: EditSettings, callback: ProgressCallback | None) -> list[EditResult]:
        sample_config = self.sample_config(settings)
        bar = OneBar(callback, len(edit.images) * settings.max_new_tokens, sample_config.num_inference_steps,
                     len(edit.chain))
        return run_edit(self, edit, settings.derive_config(), sample_config, bar)

    # The stages one by one, for scripts that look between them.
    def derive(self, images: Sequence[ImageLike], instructions: Sequence[str], settings: EditSettings | None = None,
               expressive: Sequence[str | None] | None = None, callback: ProgressCallback | None = None) -> Derivation:
        self.place("derive")
        return derive(self.model, images, instructions, (settings or EditSettings()).derive_config(), expressive,
                      callback, compiled=self.compiled)

    def imagine(self, derivation: Derivation) -> Imagination:
        self.place("imagine")
        return imagine(self.model.edit_head, derivation)

    def sample(self, images: ImageLike | Sequence[ImageLike], imagination: Imagination,
               settings: EditSettings | None = None, *, seed: int | Sequence[int] | None = None,
               callback: ProgressCallback | None = None, mask: torch.Tensor | None = None):
        settings, seeds = _seeds(settings, seed)
        self.place("sample")
        return sample_pictures(self, as_image_list(images), imagination, self.sample_config(settings),
                               tuple(seeds) if isinstance(seeds, Sequence) else (seeds,), mask, callback)


def _seeds(settings: EditSettings | None, seed: int | Sequence[int] | None) -> tuple[EditSettings, int | Sequence[int]]:
    """The settings and the seed(s) of a call: ``seed`` (one, or one per picture) where given, else ``settings.seed``;
    two different seeds, one set in the settings and one given as ``seed=``, are refused."""
    settings = settings or EditSettings()
    if seed is None:
        return settings, settings.seed
    if settings.seed not in (DEFAULT_SEED, seed):
        raise InputError(f"the seed is given twice, {settings.seed} in the settings and {seed!r} as seed=: give it "
                         "once (EditSettings(seed=...) for one seed, seed=[...] for one per picture)")
    return settings, seed
