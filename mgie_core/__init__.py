"""mgie_core: Apple's MGIE (instruction-based image editing guided by a multimodal LLM), faithfully.

The edit flows through three stages, one module each:

    image + instruction --derive--> expressive instruction + visual tokens
                        --imagine--> visual imagination (Q x D conditioning)
                        --sample---> edited image (dual classifier-free guidance)

``runner.run_edit`` is the one place that chains them, for every front end (``MGIEPipeline`` for Python,
the CLI, the nodes, training's previews); ``config.EditSettings`` and ``config.PlacementSettings`` declare every
setting once, ``frontends.plan.check_inputs`` checks every input before a model loads, and
``runtime.placement.Placement`` decides once where the parts live. ``load_model`` reads Apple's folders, an MGIE
bundle or the embedded mgie-mini (``formats/`` holds every file format).
This package never imports ComfyUI.
"""

from . import quiet  # noqa: F401  (first: before any module imports diffusers)
from .config import DEFAULT_SEED, DeriveConfig, EditSettings, PlacementSettings, SampleConfig
from .errors import CheckpointError, EditCancelled, InputError, MGIEError, SettingError
from .formats import default_model_path, example_image, load_model
from .frontends.pipeline import MGIEPipeline
from .model.mgie import MGIEModel
from .runner import Edit, EditResult, make_generator, run_edit
from .runtime.placement import Placement
from .stages.derive import Derivation, derive
from .stages.imagine import Imagination, imagine
from .stages.sample import SampleOutput, sample
from .stages.schedulers import SCHEDULER_NAMES

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SEED",
    "SCHEDULER_NAMES",
    "CheckpointError",
    "Derivation",
    "DeriveConfig",
    "Edit",
    "EditCancelled",
    "EditResult",
    "EditSettings",
    "Imagination",
    "InputError",
    "MGIEError",
    "MGIEModel",
    "MGIEPipeline",
    "Placement",
    "PlacementSettings",
    "SampleConfig",
    "SampleOutput",
    "SettingError",
    "default_model_path",
    "example_image",
    "derive",
    "imagine",
    "load_model",
    "make_generator",
    "run_edit",
    "sample",
]
