"""The pieces as users download them, checked from their configs, indexes, tokenizers and tensor shapes
before any tensor is added: a wrong piece is refused with one line that names it and says what to give.

- ``--llama``: Meta's LLaMA-7B in the Hugging Face format (plain ``model_type`` llama, no ``mm_*`` field);
- ``--llava-delta``: liuhaotian/LLaVA-Lightning-7B-delta-v1-1 (LLaVA config, tokenizer with LLaVA's tokens);
- or ``--llava``: an already merged LLaVA-7B-v1;
- ``--ip2p``: the diffusers folder of timbrooks/instruct-pix2pix; ``--clip``: openai/clip-vit-large-patch14.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..files import read_json
from ..formats.keys import IGNORED_SUFFIXES
from ..images import ClipImageConfig
from ..model.mgie import IM_END, IM_PATCH, IM_START
from ..model.tokenizer import LegacyLlamaTokenizer
from .delta import PROJECTOR_KEYS, apply_delta, check_delta_fits
from .sources import TensorRef, folder_refs

logger = logging.getLogger(__name__)

LLM_STEMS = ("model", "pytorch_model")
SIZE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
NORM_KEY = "model.norm.weight"
DELTA_REPO = "liuhaotian/LLaVA-Lightning-7B-delta-v1-1"


@dataclass(frozen=True)
class LLaVAPiece:
    """LLaVA-7B-v1 as LLaVA's script would save it, not read yet: weights, config and tokenizer."""

    state: dict[str, TensorRef]
    config: dict[str, Any]
    tokenizer: LegacyLlamaTokenizer


@dataclass(frozen=True)
class DiffusionPiece:
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    vae: dict[str, TensorRef]


@dataclass(frozen=True)
class ClipPiece:
    config: dict[str, Any]
    image_config: ClipImageConfig
    state: dict[str, TensorRef]


def require_folder(path: Path, flag: str, what: str) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"{flag} {path}: folder not found; give {what} (or a Hugging Face repo id with --download)")
    return path


def model_config(folder: Path, flag: str) -> dict[str, Any]:
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{flag} {folder} has no config.json: it is not a Hugging Face model folder")
    return read_json(folder / "config.json")


def is_llava_config(config: dict[str, Any]) -> bool:
    return config.get("model_type") == "llava" or any(key.startswith("mm_") for key in config)


# -- LLaMA + delta, or LLaVA ----------------------------------------------------------------------
def open_llava_from_delta(llama: Path, delta: Path) -> LLaVAPiece:
    """LLaVA-7B-v1 = LLaMA-7B + the LLaVA delta, checked to fit before anything is read."""
    base_cfg = _llama_config(require_folder(llama, "--llama", "LLaMA-7B in the Hugging Face format"))
    delta_cfg = model_config(require_folder(delta, "--llava-delta", f"the folder of {DELTA_REPO}"), "--llava-delta")
    if not is_llava_config(delta_cfg):
        raise CheckpointError(f"--llava-delta {delta} is not a LLaVA delta (its config.json has no mm_vision_tower): "
                              f"give the folder of {DELTA_REPO}")
    _check_same_llama(base_cfg, delta_cfg, llama, delta)
    tokenizer = llava_tokenizer(delta, delta_cfg, "--llava-delta")
    base = folder_refs(llama, LLM_STEMS, "LLaMA")
    if any(key in base for key in PROJECTOR_KEYS):
        raise _llava_as_base(llama)
    delta_state = folder_refs(delta, LLM_STEMS, "LLaVA delta")
    check_delta_fits(delta_state, base, delta, llama)
    _warn_if(base, lambda m: m < 0.1, f"the LLaMA base {llama} looks like a delta (its final norm weights are near 0)")
    _warn_if(delta_state, lambda m: m > 0.5, f"the LLaVA delta {delta} looks like a merged model (its final norm "
             "weights are far from 0); if it is LLaVA-7B-v1 already, give it as --llava without --llama")
    return LLaVAPiece(apply_delta(delta_state, base), delta_cfg, tokenizer)


def open_llava(folder: Path) -> LLaVAPiece:
    """An already merged LLaVA-7B-v1 (``--llava``)."""
    config = model_config(require_folder(folder, "--llava", "a merged LLaVA-7B-v1 folder"), "--llava")
    if not is_llava_config(config):
        raise CheckpointError(f"--llava {folder} is not LLaVA (its config.json has no mm_vision_tower); give "
                              "LLaVA-7B-v1, or LLaMA-7B as --llama with --llava-delta")
    tokenizer = llava_tokenizer(folder, config, "--llava")
    state = folder_refs(folder, LLM_STEMS, "LLaVA")
    if not all(key in state for key in PROJECTOR_KEYS):
        raise CheckpointError(f"--llava {folder} has no model.mm_projector weights: it is not LLaVA-7B-v1")
    _warn_if(state, lambda m: m < 0.1, f"--llava {folder} looks like a delta (its final norm weights are near 0); "
             "a delta goes to --llava-delta, with LLaMA-7B as --llama")
    return LLaVAPiece({k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}, config, tokenizer)


def _llama_config(folder: Path) -> dict[str, Any]:
    config = model_config(folder, "--llama")
    if is_llava_config(config):
        raise _llava_as_base(folder)
    if config.get("model_type", "llama") != "llama":
        raise CheckpointError(f"--llama {folder} is a {config['model_type']!r} model, not LLaMA: give Meta's "
                              "LLaMA-7B in the Hugging Face format")
    return config


def _llava_as_base(folder: Path) -> CheckpointError:
    return CheckpointError(f"--llama {folder} is LLaVA (the delta itself or a merged LLaVA), not the plain LLaMA-7B: "
                           "give Meta's LLaMA-7B in the Hugging Face format (a merged LLaVA-7B-v1 goes to --llava)")


def _check_same_llama(base: dict[str, Any], delta: dict[str, Any], llama: Path, delta_dir: Path) -> None:
    """The delta was made on LLaMA-7B: the base must have its sizes (and LLaMA-1's norm epsilon, not LLaMA-2's)."""
    try:
        sizes = {field: (int(base[field]), int(delta[field])) for field in SIZE_FIELDS}
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"config.json of {llama} or {delta_dir} lacks a valid {err}: not a LLaMA config") from None
    if any(b != d for b, d in sizes.values()):
        show = lambda i: ", ".join(f"{field} {pair[i]}" for field, pair in sizes.items())  # noqa: E731
        raise CheckpointError(f"--llama {llama} is another size than the model the delta was made on ({show(0)}; the "
                              f"delta: {show(1)}): the delta does not fit this base; LLaVA-Lightning-7B needs LLaMA-7B")
    eps = float(base.get("rms_norm_eps", 1e-6)), float(delta.get("rms_norm_eps", 1e-6))
    if eps[0] != eps[1]:
        raise CheckpointError(f"--llama {llama} has rms_norm_eps {eps[0]:g}, the delta {eps[1]:g}: another LLaMA "
                              "(LLaMA-2 uses 1e-05) than the original LLaMA-7B the delta was made on")


def llava_tokenizer(folder: Path, config: dict[str, Any], flag: str) -> LegacyLlamaTokenizer:
    """LLaVA's tokenizer (LLaMA's SentencePiece model plus ``<im_patch>``, ``<im_start>``, ``<im_end>``)."""
    tokenizer = LegacyLlamaTokenizer.from_folder(folder)
    needed = [IM_PATCH] + ([IM_START, IM_END] if config.get("mm_use_im_start_end", True) else [])
    absent = [token for token in needed if token not in tokenizer.added_tokens]
    if absent:
        raise CheckpointError(f"{flag} {folder}: its tokenizer lacks LLaVA's added tokens {', '.join(absent)} "
                              "(added_tokens.json): that is LLaMA's own tokenizer; keep LLaVA's tokenizer files there")
    return tokenizer


def _warn_if(state: dict[str, TensorRef], test, message: str) -> None:
    """A hint from the final norm's weights (a delta's are near 0, a model's near 1 or above); a warning only."""
    ref = state.get(NORM_KEY)
    if ref is not None and ref.dtype.is_floating_point and test(float(ref.read_rows(0, ref.rows).float().abs().mean())):
        logger.warning("%s", message)


# -- InstructPix2Pix and CLIP ---------------------------------------------------------------------------
def open_ip2p(folder: Path) -> DiffusionPiece:
    require_folder(folder, "--ip2p", "the diffusers folder of timbrooks/instruct-pix2pix")
    files = {"unet": folder / "unet" / "config.json", "vae": folder / "vae" / "config.json",
             "scheduler": folder / "scheduler" / "scheduler_config.json"}
    for path in files.values():
        if not path.is_file():
            raise CheckpointError(f"--ip2p {folder} lacks {path.relative_to(folder)}: give the diffusers folder of "
                                  "timbrooks/instruct-pix2pix (model_index.json, unet/, vae/, scheduler/)")
    vae = folder_refs(folder / "vae", ("diffusion_pytorch_model",), "InstructPix2Pix VAE")
    return DiffusionPiece(read_json(files["unet"]), read_json(files["vae"]), read_json(files["scheduler"]), vae)


def open_clip(folder: Path) -> ClipPiece:
    config = model_config(require_folder(folder, "--clip", "the folder of openai/clip-vit-large-patch14"), "--clip")
    if config.get("model_type") not in ("clip", "clip_vision_model"):
        raise CheckpointError(f"--clip {folder} is a {config.get('model_type')!r} model, not CLIP: give the folder of "
                              "openai/clip-vit-large-patch14")
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.is_file():
        image_config = ClipImageConfig.from_dict(read_json(preprocessor))
    else:
        logger.warning("%s missing: using CLIP's standard preprocessing (224 px, OpenAI mean/std)", preprocessor)
        image_config = ClipImageConfig()
    return ClipPiece(config, image_config, folder_refs(folder, LLM_STEMS, "CLIP"))
