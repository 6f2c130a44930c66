"""What the bundle will hold, tensor by tensor, before a byte of it is written.

The pieces are mapped onto MGIE's modules exactly as :func:`mgie_core.formats.apple.load_apple_checkpoint`
maps Apple's folders (the same key tables, ``mllm.pt``'s rows overriding LLaVA's), and every tensor is
checked against the modules built, empty, from the configs: a piece that does not fit is refused with its
name before the long part starts. The metadata is what ``convert`` writes for the same model, fingerprint
included (computed from the first elements of a few tensors, as :func:`compute_fingerprint` does), so
LoRAs made on Apple's folders apply to the bundle.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from ..errors import CheckpointError
from ..formats import keys
from ..formats.bundle import PARTS, SP_MODEL_KEY, bundle_metadata
from ..model.build import ModelConfigs, build_model
from ..model.edit_head import EditHeadConfig
from ..model.mgie import MGIEModel, compute_fingerprint, visual_token_names
from ..runtime.devices import DTYPES
from .pieces import ClipPiece, DiffusionPiece, LLaVAPiece
from .sources import TensorRef, meta_tensor, pickle_refs

HINTS = {
    "mllm": "the LLaVA weights (--llama + --llava-delta, or --llava), mllm.pt and --clip do not make one LLaVA",
    "edit_head": "mllm.pt's edit head is incomplete: --mgie is not Apple's mgie_7b",
    "unet": "unet.pt does not fit the UNet config of --ip2p (timbrooks/instruct-pix2pix)",
    "vae": "the VAE weights of --ip2p do not fit its vae/config.json",
}


@dataclass(frozen=True)
class BundlePlan:
    """The bundle's tensors (in ``convert``'s order, key -> ref) and its header metadata."""

    tensors: dict[str, TensorRef]
    metadata: dict[str, str]


def plan_bundle(llava: LLaVAPiece, mgie: dict[str, Path], ip2p: DiffusionPiece, clip: ClipPiece,
                dtype: torch.dtype | None = None) -> BundlePlan:
    """Map and check every piece; ``dtype`` casts floating tensors (None keeps each as the pieces store it)."""
    mllm_pt = keys.rename(pickle_refs(mgie["mllm.pt"], "mgie_7b/mllm.pt"), keys.MLLM_PT_TO_MGIE)
    edit_state, overrides = keys.split_prefix(mllm_pt, "edit_head."), keys.split_prefix(mllm_pt, "mllm.")
    for key in ("llm.embed_tokens.weight", "lm_head.weight"):
        if key not in overrides:
            raise CheckpointError(f"{mgie['mllm.pt']} has no {key.replace('llm.', 'model.')}: it is not Apple's mllm.pt")
    edit_config = EditHeadConfig.from_state_dict({k: meta_tensor(v) for k, v in edit_state.items()})
    tokenizer = copy.deepcopy(llava.tokenizer)
    tokenizer.add_tokens(visual_token_names(edit_config.num_visual_tokens))
    vocab = _vocab_size(overrides, tokenizer.vocab_size, mgie["mllm.pt"])

    model = _empty_model(llava, ip2p, clip, edit_config, tokenizer, vocab)
    llm_state = keys.rename(llava.state, keys.LLAVA_TO_MLLM)
    llm_state.update(overrides)  # mllm.pt rows override LLaVA's
    vision = keys.clip_vision_keys(clip.state, model.mllm.vision_tower.state_dict().keys())
    llm_state.update({f"vision_tower.{k}": v for k, v in vision.items()})
    sources = {"mllm": llm_state, "edit_head": edit_state, "vae": keys.vae_keys(ip2p.vae),
               "unet": pickle_refs(mgie["unet.pt"], "mgie_7b/unet.pt")}
    parts = {name: _fit(module, sources[name], name) for name, module in model.modules().items()}

    model.info["fingerprint"] = compute_fingerprint(_probes(tokenizer, parts))
    tensors = {f"{name}.{key}": ref.cast(dtype) for name in PARTS for key, ref in parts[name].items()}
    sp = tokenizer.sp_model_proto
    tensors = _with_tokenizer(tensors, sp, len(parts["mllm"]))
    return BundlePlan(tensors, bundle_metadata(model, _dtype_name(tensors.values())))


def _vocab_size(overrides: dict[str, TensorRef], tokenizer_size: int, source: Path) -> int:
    rows = overrides["llm.embed_tokens.weight"].shape[0]
    head_rows = overrides["lm_head.weight"].shape[0]
    if rows != head_rows or rows != tokenizer_size:
        raise CheckpointError(f"vocabulary mismatch: {source} has {rows} embedding rows and {head_rows} lm_head rows, "
                              f"LLaVA's tokenizer plus the [IMG] tokens makes {tokenizer_size}: mllm.pt and the LLaVA "
                              "pieces do not belong together")
    return rows


def _empty_model(llava: LLaVAPiece, ip2p: DiffusionPiece, clip: ClipPiece, edit_config: EditHeadConfig,
                 tokenizer, vocab: int) -> MGIEModel:
    """MGIE's modules on the meta device, shaped by the configs: what every tensor is checked against."""
    configs = ModelConfigs(llava=llava.config, clip=clip.config, edit_head=edit_config, unet=ip2p.unet_config,
                           vae=ip2p.vae_config, scheduler=ip2p.scheduler_config, clip_image=clip.image_config)
    return build_model(tokenizer, configs, vocab_size=vocab, empty=True, source="--ip2p + --mgie", info={"format": "bundle"})


def _fit(module: torch.nn.Module, state: dict[str, TensorRef], part: str) -> dict[str, TensorRef]:
    """``state`` in the module's key order, every key present and every shape right (as load_into demands)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        found = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        found += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        raise CheckpointError(f"{part}: {'; '.join(found)}: {HINTS[part]}")
    for key, tensor in expected.items():
        if tuple(tensor.shape) != state[key].shape:
            raise CheckpointError(f"{part}.{key} is {list(state[key].shape)} in {state[key].piece}, the configs make "
                                  f"{list(tensor.shape)}: {HINTS[part]}")
    return {key: state[key] for key in expected}


class _Probe:
    """Enough of a tensor for :func:`compute_fingerprint`: its shape and its first elements."""

    def __init__(self, ref: TensorRef):
        self.ref, self.shape = ref, torch.Size(ref.shape)

    def detach(self) -> _Probe:
        return self

    def flatten(self) -> torch.Tensor:
        return self.ref.head(256)


def _probes(tokenizer, parts: dict[str, dict[str, TensorRef]]) -> SimpleNamespace:
    modules = {name: SimpleNamespace(state_dict=lambda s=state: {k: _Probe(r) for k, r in s.items()})
               for name, state in parts.items()}
    return SimpleNamespace(tokenizer=tokenizer, modules=lambda: modules)


def _with_tokenizer(tensors: dict[str, TensorRef], sp: bytes, mllm_count: int) -> dict[str, TensorRef]:
    """The SentencePiece model as a uint8 tensor at the end of the mllm part, where ``convert`` puts it."""
    ref = TensorRef((len(sp),), torch.uint8, "tokenizer",
                    lambda a, b: torch.frombuffer(bytearray(sp[a:b]), dtype=torch.uint8))
    items = list(tensors.items())
    return dict(items[:mllm_count] + [(SP_MODEL_KEY, ref)] + items[mllm_count:])


def _dtype_name(refs) -> str:
    """The bundle's ``dtype`` metadata: the one precision of its floating tensors, or "mixed"."""
    floating = {ref.dtype for ref in refs if ref.dtype.is_floating_point}
    return next((name for name, dtype in DTYPES.items() if floating == {dtype}), "mixed")
