"""The MGIE bundle: the whole model in safetensors, configs in the header, no pickle anywhere.

One file (``model.safetensors``) or a folder with one file per part (``mllm``, ``edit_head``,
``unet``, ``vae``). Tensors are keyed ``<part>.<module key>``; the SentencePiece model travels as
the uint8 tensor ``tokenizer.sp_model``; every file carries the same metadata (format version,
configs), so any part names the model it belongs to. Loading memory-maps the tensors.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..config import check_recommended_sampling
from ..errors import CheckpointError, InputError
from ..images import ClipImageConfig
from ..model.build import ModelConfigs, build_model, vision_tower_keys
from ..model.edit_head import EditHeadConfig
from ..model.mgie import MGIEModel
from ..model.tokenizer import LegacyLlamaTokenizer
from ..runtime.devices import DTYPES
from .aligned import save_aligned
from .keys import clip_vision_keys, split_prefix
from .weights import StateDict, read_state_dict

logger = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "mgie-bundle", "1"
PARTS = ("mllm", "edit_head", "unet", "vae")
SP_MODEL_KEY = "tokenizer.sp_model"


# -- writing ---------------------------------------------------------------------------------
def bundle_metadata(model: MGIEModel, dtype_name: str) -> dict[str, str]:
    tok = model.tokenizer
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dtype": dtype_name,
        "llava_config": model.info["llava_config"],
        "clip_config": model.info["clip_config"],
        "clip_image_config": model.clip_image_config.to_dict(),
        "edit_head_config": model.edit_head.config.to_dict(),
        "unet_config": _plain(model.unet.config),
        "vae_config": _plain(model.vae.config),
        "scheduler_config": model.scheduler_config,
        "tokenizer": {
            "added_tokens": tok.added_tokens,
            "bos_token": tok.bos_token,
            "eos_token": tok.eos_token,
            "unk_token": tok.unk_token,
            "add_bos_token": tok.add_bos_token,
        },
        "extra": model.info.get("extra", {}),
        "fingerprint": model.fingerprint(),
    }
    if model.recommended_sampling:
        meta["sampling"] = model.recommended_sampling
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _plain(config: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def bundle_tensors(model: MGIEModel, dtype: torch.dtype | None) -> dict[str, StateDict]:
    """Tensors per part, floating ones cast to ``dtype`` (None keeps each as stored)."""
    parts: dict[str, StateDict] = {}
    for name, module in model.modules().items():
        parts[name] = {
            f"{name}.{key}": (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()
            for key, t in module.state_dict().items()
        }
    sp = torch.frombuffer(bytearray(model.tokenizer.sp_model_proto), dtype=torch.uint8)
    parts["mllm"][SP_MODEL_KEY] = sp
    return parts


def save_bundle(model: MGIEModel, out: str | Path, dtype: str = "fp16") -> Path:
    """Write ``model`` as one ``.safetensors`` file, or as a folder of part files when ``out`` has no suffix."""
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    out = Path(out)
    metadata = bundle_metadata(model, dtype)
    parts = bundle_tensors(model, DTYPES[dtype])
    if out.suffix == ".safetensors":
        merged = {k: v for part in parts.values() for k, v in part.items()}
        save_aligned(merged, out, metadata)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for name, tensors in parts.items():
            save_aligned(tensors, out / f"{name}.safetensors", metadata)
    logger.info("wrote MGIE bundle %s (%s)", out, dtype)
    return out


# -- reading ---------------------------------------------------------------------------------
def bundle_files(path: str | Path) -> list[Path]:
    """The safetensors files of a bundle (a file, or a folder of part files)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if files:
            return files
    raise CheckpointError(f"no MGIE bundle at {path}: expected a .safetensors file or a folder of them")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of one safetensors file (empty dict when it has none)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); copy or convert it again") from None


def load_bundle(path: str | Path) -> MGIEModel:
    """Build :class:`MGIEModel` from a bundle; tensors stay memory-mapped until moved."""
    files = bundle_files(path)
    meta = bundle_header(files)
    state: StateDict = {}
    for file in files:
        state.update(read_state_dict(file))
    try:
        sp_bytes = state.pop(SP_MODEL_KEY).numpy().tobytes()
    except KeyError:
        raise CheckpointError(f"{path}: the bundle has no tokenizer ({SP_MODEL_KEY}); convert the model again") from None
    tok = meta["tokenizer"]
    tokenizer = LegacyLlamaTokenizer(sp_bytes, tok["added_tokens"], tok["bos_token"], tok["eos_token"],
                                     tok["unk_token"], tok["add_bos_token"])
    edit_config = EditHeadConfig(**meta["edit_head_config"])
    mllm_state = split_prefix(state, "mllm.")
    if "lm_head.weight" not in mllm_state:
        raise CheckpointError(f"{path}: the bundle has no mllm.lm_head.weight; it is incomplete")
    vision = clip_vision_keys(split_prefix(mllm_state, "vision_tower."), vision_tower_keys(meta["clip_config"]))
    mllm_state = {k: v for k, v in mllm_state.items() if not k.startswith("vision_tower.")}
    mllm_state.update({f"vision_tower.{k}": v for k, v in vision.items()})
    configs = ModelConfigs(llava=meta["llava_config"], clip=meta["clip_config"], edit_head=edit_config,
                           unet=meta["unet_config"], vae=meta["vae_config"], scheduler=meta["scheduler_config"],
                           clip_image=ClipImageConfig.from_dict(meta["clip_image_config"]))
    states = {"mllm": mllm_state, **{part: split_prefix(state, f"{part}.") for part in ("edit_head", "unet", "vae")}}
    info = {"format": "bundle", "extra": meta.get("extra", {}),
            **({"fingerprint": meta["fingerprint"]} if "fingerprint" in meta else {}),
            **({"sampling": _sampling(meta, files[0])} if "sampling" in meta else {})}
    return build_model(tokenizer, configs, states, vocab_size=mllm_state["lm_head.weight"].shape[0], source=str(path),
                       info=info)


def _sampling(meta: dict[str, Any], file: Path) -> dict[str, float | int]:
    """The settings a bundle recommends. A model of the edit world (``extra.world``) made before bundles recorded
    their working size, such as the shipped mgie-mini (its file is kept as it is), works at the size of the
    world's pictures, which its VAE records as ``sample_size``."""
    try:
        sampling = check_recommended_sampling(meta["sampling"], f"{file} (bundle metadata 'sampling')")
    except InputError as err:
        raise CheckpointError(f"{err}; fix or drop that metadata (convert the model again)") from None
    if "max_side" not in sampling and "world" in meta.get("extra", {}):
        sampling["max_side"] = int(meta["vae_config"]["sample_size"])
    return sampling


REQUIRED_METADATA = ("tokenizer", "edit_head_config", "llava_config", "clip_config", "unet_config", "vae_config",
                     "scheduler_config", "clip_image_config")
TOKENIZER_FIELDS = ("added_tokens", "bos_token", "eos_token", "unk_token", "add_bos_token")


def bundle_header(files: list[Path]) -> dict[str, Any]:
    """A bundle's metadata, checked: its format and version, the same header in every part file, every config."""
    raw = read_metadata(files[0])
    if raw.get("format") != FORMAT:
        raise CheckpointError(
            f"{files[0]} is a safetensors file but not an MGIE bundle (no '{FORMAT}' header); "
            "make one with: python -m mgie_core convert --model ROOT --out FILE.safetensors"
        )
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{files[0]} is bundle format {raw.get('format_version')!r}; this version reads {FORMAT_VERSION!r}: convert again"
        )
    for other in files[1:]:
        if read_metadata(other) != raw:
            raise CheckpointError(f"{other} belongs to another bundle than {files[0]}; keep one bundle per folder")
    try:
        meta = {k: (v if k in ("format", "format_version", "dtype", "fingerprint") else json.loads(v))
                for k, v in raw.items()}
    except ValueError as err:
        raise CheckpointError(f"{files[0]}: bundle metadata is not valid JSON ({err}); convert again") from None
    missing = [key for key in REQUIRED_METADATA if not isinstance(meta.get(key), dict)]
    missing += [f"tokenizer.{key}" for key in TOKENIZER_FIELDS if key not in meta.get("tokenizer", {})]
    if missing:
        raise CheckpointError(f"{files[0]}: the bundle's metadata lacks {', '.join(missing)}; it is incomplete or "
                              "damaged: convert the model again")
    return meta
