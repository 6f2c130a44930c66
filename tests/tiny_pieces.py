"""MGIE's pieces as users download them, tiny and in their real on-disk formats, made from the tiny Apple
checkpoint (tiny_checkpoint.py); and the reference: the Apple layout that LLaVA's own algorithm and Apple's
instructions make from those pieces.

    llama/            config.json (LlamaForCausalLM), SentencePiece tokenizer without LLaVA's tokens,
                      model-0000{1,2}-of-00002.safetensors + model.safetensors.index.json (bf16, as some uploads)
    llava-delta/      config.json (model_type llava, mm_*), tokenizer with added_tokens.json,
                      pytorch_model-0000{1,2}-of-00002.bin + index (fp16, rotary inv_freq buffers included)
    mgie_7b.tar.gz    mgie_7b/mllm.pt, mgie_7b/unet.pt
    instruct-pix2pix/ and clip-vit-large-patch14/: the tiny checkpoint's

The base is LLaVA's weights moved by noise; the delta is LLaVA minus the base, in fp16, with the three added
vocabulary rows kept whole, as LLaVA's ``make_delta`` made it.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tiny_checkpoint import _save_sharded

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
PROJECTOR = ("model.mm_projector.weight", "model.mm_projector.bias")
GROWN = ("model.embed_tokens.weight", "lm_head.weight")


@dataclass(frozen=True)
class TinyPieces:
    llama: Path
    llava_delta: Path
    mgie: Path  # the tarball
    ip2p: Path
    clip: Path

    def args(self, out: Path) -> list[str]:
        return ["assemble", "--llama", str(self.llama), "--llava-delta", str(self.llava_delta), "--mgie", str(self.mgie),
                "--ip2p", str(self.ip2p), "--clip", str(self.clip), "--out", str(out), "--quiet"]


def read_shards(folder: Path) -> dict[str, torch.Tensor]:
    state = {}
    for shard in sorted(folder.glob("pytorch_model-*.bin")):
        state.update(torch.load(shard, map_location="cpu", weights_only=True))
    return state


def build_tiny_pieces(apple_root: Path, out: Path) -> TinyPieces:
    llava_dir = apple_root / "LLaVA-7B-v1"
    llava = read_shards(llava_dir)
    config = json.loads((llava_dir / "config.json").read_text())
    base_vocab = config["vocab_size"] - 3
    generator = torch.Generator().manual_seed(7)
    base, delta = {}, {}
    for name, tensor in llava.items():
        if name in PROJECTOR or name.endswith("inv_freq"):
            delta[name] = tensor if name in PROJECTOR else torch.zeros_like(tensor)
            continue
        rows = tensor[:base_vocab] if name in GROWN else tensor
        moved = (rows.float() + 0.05 * torch.randn(rows.shape, generator=generator)).to(torch.bfloat16)
        base[name] = moved
        difference = (rows.float() - moved.float()).half()
        delta[name] = torch.cat([difference, tensor[base_vocab:]]) if name in GROWN else difference

    llama, delta_dir = out / "llama", out / "llava-delta"
    for folder in (llama, delta_dir):
        folder.mkdir(parents=True)
        for name in TOKENIZER_FILES:
            shutil.copy(llava_dir / name, folder / name)
    shutil.copy(llava_dir / "added_tokens.json", delta_dir / "added_tokens.json")
    base_config = {k: v for k, v in config.items() if not k.startswith("mm_") and k != "use_mm_proj"}
    base_config.update(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=base_vocab)
    (llama / "config.json").write_text(json.dumps(base_config, indent=2))
    _save_safetensors_shards(base, llama)
    (delta_dir / "config.json").write_text(json.dumps(config, indent=2))
    _save_sharded(delta, delta_dir)

    tarball = out / "mgie_7b.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        for name in ("mllm.pt", "unet.pt"):
            archive.add(apple_root / "mgie_7b" / name, arcname=f"mgie_7b/{name}")
    ip2p, clip = out / "instruct-pix2pix", out / "clip-vit-large-patch14"
    shutil.copytree(apple_root / "instruct-pix2pix", ip2p)
    shutil.copytree(apple_root / "clip-vit-large-patch14", clip)
    return TinyPieces(llama, delta_dir, tarball, ip2p, clip)


def _save_safetensors_shards(state: dict[str, torch.Tensor], folder: Path) -> None:
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    weight_map = {}
    for i, part in enumerate(halves, start=1):
        name = f"model-0000{i}-of-00002.safetensors"
        save_file({k: state[k].contiguous() for k in part}, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


# -- the reference: LLaVA's algorithm in memory, then Apple's folder layout --------------------------------
def reference_apply_delta(base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LLaVA's apply_delta (commit 7ace501), whole tensors in memory: both models in fp16; the delta plus the base."""
    merged = {}
    for name, param in delta.items():
        param = param.to(torch.float16).clone()
        if name not in base:
            assert name in PROJECTOR or name.endswith("inv_freq"), name
        elif param.shape == base[name].shape:
            param += base[name].to(torch.float16)
        else:
            assert name in GROWN, name
            rows, cols = base[name].shape
            param[:rows, :cols] += base[name].to(torch.float16)
        merged[name] = param
    return merged


def build_reference_layout(pieces: TinyPieces, root: Path) -> Path:
    """Apple's four folders: LLaVA-7B-v1 from the reference merge (saved as transformers 4.28 did, fp16 shards
    and the delta's config and tokenizer), mgie_7b unpacked from the tarball, the InstructPix2Pix and CLIP folders."""
    base = {}
    for shard in sorted(pieces.llama.glob("*.safetensors")):
        base.update(load_file(shard))
    llava = root / "LLaVA-7B-v1"
    llava.mkdir(parents=True)
    _save_sharded(reference_apply_delta(base, read_shards(pieces.llava_delta)), llava)
    for name in (*TOKENIZER_FILES, "added_tokens.json", "config.json"):
        shutil.copy(pieces.llava_delta / name, llava / name)
    with tarfile.open(pieces.mgie) as archive:
        archive.extractall(root, filter="data")
    shutil.copytree(pieces.ip2p, root / "instruct-pix2pix")
    shutil.copytree(pieces.clip, root / "clip-vit-large-patch14")
    return root
