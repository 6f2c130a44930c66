"""One entry point for every model a user can point at: Apple's folders, an MGIE bundle, or the embedded mgie-mini."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import CheckpointError
from ..model.mgie import MGIEModel
from .apple import is_apple_layout, load_apple_checkpoint
from .bundle import bundle_files, bundle_header, load_bundle, read_metadata
from .lora import FORMAT as LORA_FORMAT

logger = logging.getLogger(__name__)

WHERE_WEIGHTS_COME_FROM = (
    "'python -m mgie_core assemble' builds Apple's MGIE-7B from its downloads into one bundle (or give Apple's four "
    "folders LLaVA-7B-v1/, mgie_7b/, instruct-pix2pix/, clip-vit-large-patch14/): see the README, 'Getting the weights'"
)


def default_model_path() -> Path:
    """The project's embedded default model (mgie-mini), shipped inside the package."""
    return Path(__file__).resolve().parents[1] / "assets" / "mgie-mini.safetensors"


def example_image():
    """The example picture shipped with the library (images/scene.png of the repository: a 64 px scene of flat shapes,
    mgie-mini's world), wherever the library is installed: for the README's snippet and your first edit."""
    from ..images import load_image

    return load_image(default_model_path().parent / "scene.png")


def is_embedded(path: str | Path | None) -> bool:
    return path is None or Path(path).expanduser().resolve() == default_model_path()


def check_model(path: str | Path | None) -> str:
    """What ``path`` holds, told from its folders and file headers before anything loads: ``embedded``, ``apple`` or
    ``bundle``; anything else (a missing path, an empty folder, a LoRA, another safetensors or text file) is refused
    in one line that names it."""
    if is_embedded(path):
        return "embedded"
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"model not found: {path}. Give Apple's MGIE root folder or an MGIE .safetensors "
                              f"bundle; {WHERE_WEIGHTS_COME_FROM}")
    if path.is_dir() and is_apple_layout(path):
        return "apple"
    if path.suffix == ".safetensors" or (path.is_dir() and any(path.glob("*.safetensors"))):
        files = bundle_files(path)
        if read_metadata(files[0]).get("format") == LORA_FORMAT:
            raise CheckpointError(f"{files[0]} is an MGIE LoRA, not a model: give the model it was trained on, and the "
                                  "LoRA with --lora (Load MGIE's lora)")
        bundle_header(files)
        return "bundle"
    raise CheckpointError(
        f"{path} is neither Apple's MGIE layout nor an MGIE bundle (.safetensors made by 'python -m mgie_core "
        f"convert'). {WHERE_WEIGHTS_COME_FROM}"
    )


def load_model(
    path: str | Path | None = None,
    vision_tower: str | Path | None = None,
    instruct_pix2pix: str | Path | None = None,
) -> MGIEModel:
    """Load Apple's layout (a root folder) or a bundle (file or folder); ``None`` means the embedded mgie-mini."""
    kind = check_model(path)
    if kind == "embedded":
        return _load_embedded()
    path = Path(path).expanduser()
    if kind == "apple":
        return load_apple_checkpoint(path, vision_tower=vision_tower, instruct_pix2pix=instruct_pix2pix)
    if vision_tower is not None:
        raise CheckpointError("--vision-tower only applies to Apple's folders: a bundle carries its vision tower")
    return load_bundle(path)


def _load_embedded() -> MGIEModel:
    path = default_model_path()
    if not path.is_file():
        raise CheckpointError(f"no model given and the embedded mgie-mini is missing ({path}); reinstall the pack, "
                              f"or pass --model with Apple's MGIE folder or a bundle. {WHERE_WEIGHTS_COME_FROM}")
    model = load_bundle(path)
    side = model.recommended_sampling.get("max_side")
    logger.info("mgie-mini (embedded) edits small flat-shape scenes (%s px); photos need Apple's MGIE-7B weights "
                "(--model; README, 'Getting the weights')", side)
    return model
