"""Loading Apple's released MGIE exactly as users have it on disk (docs/algorithm.md §1).

A root folder holds ``LLaVA-7B-v1/`` (sharded pickles + tokenizer), ``mgie_7b/`` (``mllm.pt``,
``unet.pt``), ``instruct-pix2pix/`` (diffusers folder: VAE, scheduler, UNet config) and the CLIP
folder that ``mm_vision_tower`` names. Everything is read offline; pickles with ``weights_only``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from ..files import read_json
from ..images import ClipImageConfig
from ..model.build import ModelConfigs, build_model, vision_tower_keys
from ..model.edit_head import EditHeadConfig
from ..model.mgie import MGIEModel, visual_token_names
from ..model.tokenizer import LegacyLlamaTokenizer
from . import keys
from .weights import StateDict, read_folder_weights, read_state_dict

logger = logging.getLogger(__name__)

LLAVA_DIR, MGIE_DIR, IP2P_DIR = "LLaVA-7B-v1", "mgie_7b", "instruct-pix2pix"
IP2P_HUB_ID = "timbrooks/instruct-pix2pix"


@dataclass(frozen=True)
class AppleLayout:
    root: Path
    llava: Path
    mgie: Path
    ip2p: Path


def is_apple_layout(root: Path) -> bool:
    return (root / MGIE_DIR / "mllm.pt").is_file() or (root / LLAVA_DIR).is_dir()


def find_apple_layout(root: str | Path, instruct_pix2pix: str | Path | None = None) -> AppleLayout:
    """Locate the three MGIE folders under ``root``; the InstructPix2Pix folder may also be cached by diffusers."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"model folder not found: {root}")
    llava, mgie = root / LLAVA_DIR, root / MGIE_DIR
    for folder, what in ((llava, "the LLaVA-7B-v1 folder (config.json, tokenizer, pytorch_model-*.bin): the "
                                 "LLaVA-Lightning-7B-v1-1 delta applied to LLaMA-7B"),
                         (mgie, "the mgie_7b folder (mllm.pt, unet.pt) from Apple's mgie_7b.tar.gz")):
        if not folder.is_dir():
            raise CheckpointError(f"{folder} not found: {root} must contain {what}; README, 'Getting the weights'")
    for name in ("mllm.pt", "unet.pt"):
        if not (mgie / name).is_file():
            raise CheckpointError(f"missing {mgie / name}: unpack Apple's mgie_7b.tar.gz there "
                                  "(README, 'Getting the weights')")
    ip2p = _find_ip2p(root, instruct_pix2pix)
    return AppleLayout(root=root, llava=llava, mgie=mgie, ip2p=ip2p)


def _find_ip2p(root: Path, explicit: str | Path | None) -> Path:
    candidates = [Path(explicit)] if explicit else [root / IP2P_DIR]
    for folder in candidates:
        if (folder / "vae").is_dir() and (folder / "scheduler").is_dir():
            return folder
    if explicit is None:
        cached = hub_cache_snapshot(IP2P_HUB_ID)
        if cached is not None and (cached / "vae").is_dir():
            return cached
    raise CheckpointError(
        f"InstructPix2Pix folder not found: looked in {', '.join(map(str, candidates))} and the Hugging Face cache; "
        f"put the diffusers folder of {IP2P_HUB_ID} (vae/, scheduler/, unet/config.json) at {root / IP2P_DIR}"
    )


def hub_cache_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of ``repo_id`` in the local Hugging Face cache, without network."""
    if repo_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not cached"; never fall back to the network
        return None


def resolve_vision_tower(name: str, root: Path, llava: Path, explicit: str | Path | None = None) -> Path:
    """Find the CLIP folder: explicit path; ``name`` as a path; a folder named after the id; the HF cache."""
    if explicit is not None:
        path = Path(explicit)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"vision tower folder {path} has no config.json: pass the CLIP model folder")
        return path
    looked = []
    as_path = Path(name)
    candidates = [as_path] if as_path.is_absolute() else [root / as_path, llava / as_path, as_path]
    last = name.rstrip("/").split("/")[-1]
    candidates += [root / last, llava.parent / last, llava.resolve().parent / last]
    for path in candidates:
        looked.append(str(path))
        if (path / "config.json").is_file():
            return path
    cached = hub_cache_snapshot(name)
    if cached is not None and (cached / "config.json").is_file():
        return cached
    raise CheckpointError(
        f"CLIP vision tower {name!r} not found; looked in {', '.join(dict.fromkeys(looked))} and the Hugging Face "
        f"cache. Put the {last} folder in {root} or pass its path (--vision-tower)"
    )


def load_apple_checkpoint(
    root: str | Path, vision_tower: str | Path | None = None, instruct_pix2pix: str | Path | None = None
) -> MGIEModel:
    """Build :class:`MGIEModel` from Apple's four folders (weights stay in their stored dtype, on CPU)."""
    layout = find_apple_layout(root, instruct_pix2pix)
    llava_cfg = read_json(layout.llava / "config.json")
    if "mm_vision_tower" not in llava_cfg:
        raise CheckpointError(f"{layout.llava / 'config.json'} has no mm_vision_tower: this is not a LLaVA config")
    clip_dir = resolve_vision_tower(str(llava_cfg["mm_vision_tower"]), layout.root, layout.llava, vision_tower)
    logger.info("loading MGIE from %s (vision tower %s, InstructPix2Pix %s)", layout.root, clip_dir, layout.ip2p)

    mgie_state = keys.rename(read_state_dict(layout.mgie / "mllm.pt"), keys.MLLM_PT_TO_MGIE)
    edit_state = keys.split_prefix(mgie_state, "edit_head.")
    llm_state = keys.rename(read_folder_weights(layout.llava, ("pytorch_model", "model")), keys.LLAVA_TO_MLLM)
    llm_state.update(keys.split_prefix(mgie_state, "mllm."))  # mllm.pt rows override LLaVA's

    edit_config = EditHeadConfig.from_state_dict(edit_state)
    tokenizer = LegacyLlamaTokenizer.from_folder(layout.llava)
    tokenizer.add_tokens(visual_token_names(edit_config.num_visual_tokens))
    vocab_size = _vocab_size(llm_state, tokenizer, layout)

    clip_cfg = read_json(clip_dir / "config.json")
    llm_state.update(_vision_state(clip_dir, clip_cfg))
    configs = ModelConfigs(llava=llava_cfg, clip=clip_cfg, edit_head=edit_config,
                           unet=read_json(layout.ip2p / "unet" / "config.json"),
                           vae=read_json(layout.ip2p / "vae" / "config.json"),
                           scheduler=read_json(layout.ip2p / "scheduler" / "scheduler_config.json"),
                           clip_image=_clip_image_config(clip_dir))
    states = {"mllm": llm_state, "edit_head": edit_state, "unet": read_state_dict(layout.mgie / "unet.pt"),
              "vae": read_folder_weights(layout.ip2p / "vae", ("diffusion_pytorch_model",))}
    where = {"mllm": f"{layout.llava} + {layout.mgie / 'mllm.pt'} + {clip_dir}", "edit_head": str(layout.mgie / "mllm.pt"),
             "unet": str(layout.mgie / "unet.pt"), "vae": str(layout.ip2p / "vae")}
    model = build_model(tokenizer, configs, states, vocab_size=vocab_size, source=str(layout.root),
                        info={"format": "apple"}, where=where)
    model.fingerprint()  # of the weights exactly as stored
    return model


def _vocab_size(llm_state: StateDict, tokenizer: LegacyLlamaTokenizer, layout: AppleLayout) -> int:
    try:
        rows = llm_state["llm.embed_tokens.weight"].shape[0]
        head_rows = llm_state["lm_head.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"{layout.llava}: no {err.args[0]!r} in the weights; is this LLaVA-7B-v1?") from None
    if rows != head_rows or rows != tokenizer.vocab_size:
        raise CheckpointError(
            f"vocabulary mismatch: embed_tokens has {rows} rows, lm_head {head_rows}, the tokenizer of "
            f"{layout.llava} plus the [IMG] tokens has {tokenizer.vocab_size}; mllm.pt and LLaVA-7B-v1 do not belong together"
        )
    return rows


def _vision_state(clip_dir: Path, clip_cfg: dict) -> StateDict:
    """The vision tower's weights from a CLIP folder (a full CLIPModel's), under the multimodal LLM's names."""
    clip_state = read_folder_weights(clip_dir, ("model", "pytorch_model"))
    vision = keys.clip_vision_keys(clip_state, vision_tower_keys(clip_cfg))
    return {f"vision_tower.{k}": v for k, v in vision.items()}


def _clip_image_config(clip_dir: Path) -> ClipImageConfig:
    path = clip_dir / "preprocessor_config.json"
    if not path.is_file():
        logger.warning("%s missing: using CLIP's standard preprocessing (224 px, OpenAI mean/std)", path)
        return ClipImageConfig()
    return ClipImageConfig.from_dict(read_json(path))
