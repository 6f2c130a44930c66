"""The Python API: a loaded, placed model that edits pictures through the one edit runner (:mod:`.runner`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..config import DEFAULT_SEED, DeriveConfig, EditSettings, SampleConfig
from ..formats import load_model
from ..images import ImageLike
from ..model.mgie import MGIEModel
from ..runner import Edit, EditResult, OneBar, as_image_list, run_edit, sample_pictures
from ..runtime.placement import PlacedModel, Placement, resolve_placement
from ..runtime.progress import ProgressCallback
from ..stages.derive import Derivation, derive
from ..stages.imagine import Imagination, imagine


class MGIEPipeline(PlacedModel):
    """MGIE on a device, ready to edit. ``memory`` is the CLI's ``--memory`` and Load MGIE's choice: ``auto``
    (a GPU gets the fastest mode that fits it; elsewhere every part as loaded), ``24`` (fp16, every part on the
    GPU), ``16`` (staged), ``8`` (staged, int8 LLM) or ``6`` (staged, 4-bit LLM, CUDA only); see
    :mod:`.placement`. ``compile`` runs decoding and denoising under torch.compile (every part resident).
    ``dtype`` ``auto`` is fp16 on a CUDA GPU and fp32 elsewhere.
    """

    def __init__(self, model: MGIEModel, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
                 memory: str = "auto", compile: bool = False, placement: Placement | None = None):
        placement = placement or resolve_placement(Placement.make(device, dtype, memory, compile), model)
        super().__init__(model, placement)
        self.dtype = placement.dtype

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype | None = None, vision_tower: str | Path | None = None,
                        memory: str = "auto", compile: bool = False) -> MGIEPipeline:
        """Load a model (Apple's folder, a bundle, or the embedded mgie-mini when ``path`` is None) and place it."""
        return cls(load_model(path, vision_tower=vision_tower), device, dtype, memory, compile)

    def default_sample_config(self) -> SampleConfig:
        """The paper's sampling, with the settings the model recommends where it does (mgie-mini: guidance
        2 / 1.5 and its 64 px working size)."""
        return EditSettings().sample_config(self.model.recommended_sampling)

    def sample_config(self, settings: EditSettings) -> SampleConfig:
        """``settings`` resolved for this model (0 / auto: its recommendation, or the preset's)."""
        return settings.sample_config(self.model.recommended_sampling)

    def __call__(self, images: ImageLike | Sequence[ImageLike], instructions: str | Sequence[str],
                 derive_config: DeriveConfig = DeriveConfig(), sample_config: SampleConfig | None = None,
                 seed: int | Sequence[int] = DEFAULT_SEED, expressive: str | Sequence[str | None] | None = None,
                 callback: ProgressCallback | None = None, mask: torch.Tensor | None = None) -> EditResult:
        """Edit pictures by instructions (one for all, or one per picture). ``mask``: (H, W), (B, H, W) or
        (B, 1, H, W) floats in [0, 1], 1 where to edit, any size. Without a ``sample_config``, the model's
        recommended settings."""
        return self._run(Edit.of(images, instructions, expressive, seed, mask), derive_config, sample_config,
                         callback)[-1]

    def edit_in_chain(self, images: ImageLike | Sequence[ImageLike], instructions: str | Sequence[str],
                      derive_config: DeriveConfig = DeriveConfig(), sample_config: SampleConfig | None = None,
                      seed: int | Sequence[int] = DEFAULT_SEED, callback: ProgressCallback | None = None,
                      mask: torch.Tensor | None = None) -> list[EditResult]:
        """A chain of instructions (a list, or a text with one per line): each edits the previous result, with
        the same seed and mask, as chained edits would. One result per instruction; the last holds the final
        pictures."""
        return self._run(Edit.of(images, instructions, None, seed, mask, chained=True), derive_config, sample_config,
                         callback)

    def _run(self, edit: Edit, derive_config: DeriveConfig, sample_config: SampleConfig | None,
             callback: ProgressCallback | None) -> list[EditResult]:
        sample_config = sample_config or self.default_sample_config()
        bar = OneBar(callback, len(edit.images) * derive_config.max_new_tokens, sample_config.num_inference_steps,
                     len(edit.chain))
        return run_edit(self, edit, derive_config, sample_config, bar)

    # The stages one by one, for scripts that look between them.
    def derive(self, images: Sequence[ImageLike], instructions: Sequence[str], config: DeriveConfig = DeriveConfig(),
               expressive: Sequence[str | None] | None = None, callback: ProgressCallback | None = None) -> Derivation:
        self.place("derive")
        return derive(self.model, images, instructions, config, expressive, callback, compiled=self.compiled)

    def imagine(self, derivation: Derivation) -> Imagination:
        return imagine(self.model.edit_head, derivation)

    def sample(self, images: ImageLike | Sequence[ImageLike], imagination: Imagination,
               config: SampleConfig | None = None, seed: int | Sequence[int] = DEFAULT_SEED,
               callback: ProgressCallback | None = None, mask: torch.Tensor | None = None):
        pictures = as_image_list(images)
        seeds = tuple(seed) if isinstance(seed, Sequence) else (seed,)
        self.place("sample")
        return sample_pictures(self, pictures, imagination, config or self.default_sample_config(), seeds, mask,
                               callback)
