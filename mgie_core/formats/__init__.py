"""File formats: Apple's released folders, MGIE bundles, LoRA files, and the readers and key tables under them."""

from .apple import is_apple_layout, load_apple_checkpoint
from .bundle import load_bundle, save_bundle
from .loader import default_model_path, example_image, is_embedded, load_model
from .lora import apply_lora, read_lora, save_lora

__all__ = [
    "apply_lora",
    "default_model_path",
    "example_image",
    "is_apple_layout",
    "is_embedded",
    "load_apple_checkpoint",
    "load_bundle",
    "load_model",
    "read_lora",
    "save_bundle",
    "save_lora",
]
