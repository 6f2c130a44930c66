"""One entry point for every model a user can point at: Apple's folders or an MGIE bundle."""

from __future__ import annotations

from pathlib import Path

from .bundle import is_bundle, load_bundle
from .checkpoint import is_apple_layout, load_apple_checkpoint
from .errors import CheckpointError
from .model import MGIEModel

DEFAULT_MODEL_ENV = "MGIE_DEFAULT_MODEL"


def default_model_path() -> Path:
    """The project's embedded default model (mgie-mini), shipped inside the package."""
    return Path(__file__).resolve().parent / "assets" / "mgie-mini.safetensors"


def load_model(
    path: str | Path | None = None,
    vision_tower: str | Path | None = None,
    instruct_pix2pix: str | Path | None = None,
) -> MGIEModel:
    """Load Apple's layout (a root folder) or a bundle (file or folder); ``None`` means the default model."""
    if path is None:
        path = default_model_path()
        if not path.is_file():
            raise CheckpointError(
                f"no model given and the embedded default model is missing ({path}); pass --model with Apple's "
                "MGIE folder or a converted bundle"
            )
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"model not found: {path} (give Apple's MGIE root folder or an MGIE .safetensors bundle)")
    if path.is_dir() and is_apple_layout(path):
        return load_apple_checkpoint(path, vision_tower=vision_tower, instruct_pix2pix=instruct_pix2pix)
    if path.suffix == ".safetensors" or (path.is_dir() and any(path.glob("*.safetensors"))):
        if vision_tower is not None:
            raise CheckpointError("--vision-tower only applies to Apple's folders: a bundle carries its vision tower")
        return load_bundle(path)
    raise CheckpointError(
        f"{path} is neither Apple's MGIE layout (LLaVA-7B-v1/, mgie_7b/, instruct-pix2pix/, the CLIP folder) "
        "nor an MGIE bundle (.safetensors made by 'python -m mgie_core convert')"
    )


__all__ = ["load_model", "default_model_path", "is_bundle"]
