"""Peak memory and time of ``python -m mgie_core assemble`` on synthetic pieces, written in their real formats.

    python -m bench.assemble --preset 1b --work /tmp/mgie-assemble [--out bench/RESULTS.md]

Writes random pieces of the chosen size the way users download them (LLaMA as fp16 safetensors shards, the LLaVA
delta as fp16 .bin shards with three more vocabulary rows and a projector, Apple's tar.gz of mllm.pt and unet.pt,
the InstructPix2Pix and CLIP folders), then runs ``assemble`` in a fresh process that reports its own peak
resident memory (``VmHWM``: every page it held at once, memory-mapped file pages included). For scale it also
runs a process that only imports the library (the constant), and ``assemble`` with the pages of memory-mapped
pickles kept instead of dropped after each block. The page cache is warm (the pieces were just written).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import sentencepiece as spm
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel

from mgie_core.model.edit_head import EditHead, EditHeadConfig
from mgie_core.model.mgie import IM_END, IM_PATCH, IM_START

from . import publish
from .random_model import SD_SCHEDULER, SD_UNET, SD_VAE

PRESETS = {
    # about 1.3B parameters: a 1.04B LLaMA (32000-word vocabulary, as LLaMA's), a ViT-B CLIP, a smaller UNet, SD's VAE
    "1b": dict(llm=dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=18, num_attention_heads=16),
               vocab=32000, shards=4,
               vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=14),
               unet=dict(SD_UNET, block_out_channels=(160, 320, 640, 640), layers_per_block=1), vae=SD_VAE,
               edit_head=dict(hidden_size=512, num_queries=77, num_encoder_layers=4, num_decoder_layers=4,
                              feedforward_size=2048)),
    # the same code paths in seconds (the bench's own test)
    "tiny": dict(llm=dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4),
                 vocab=400, shards=2,
                 vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             image_size=32, patch_size=8),
                 unet=dict(SD_UNET, block_out_channels=(32, 64, 64, 64), cross_attention_dim=32, layers_per_block=1,
                           sample_size=8),
                 vae=dict(SD_VAE, block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=16),
                 edit_head=dict(hidden_size=32, num_queries=77, num_encoder_layers=1, num_decoder_layers=1,
                                feedforward_size=64)),
}
CHILD = """import json, resource, sys
{patch}from mgie_core.frontends.cli import main
rc = main(sys.argv[1:]) if sys.argv[1:] else 0
try:  # this process's own high-water mark (ru_maxrss would also count the parent's pages at fork and exec)
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"rc": rc, "peak_kib": peak}}))
"""
UNPACK = ("import tempfile; from pathlib import Path; from mgie_core.assemble.tarball import extract_members\n"
          "with tempfile.TemporaryDirectory(dir='{scratch}') as d: extract_members(Path('{tarball}'), Path(d), False)\n")
KEEP_PAGES = "import mgie_core.assemble.sources as sources; sources._libc = None\n"


def tokenizer_files(folder: Path, vocab: int, added: bool) -> int:
    """A SentencePiece model of about ``vocab`` pieces (user symbols fill it up); returns its exact size."""
    corpus = ["A chat between a curious user and an artificial intelligence assistant. USER: what will this image "
              "be like if 'make it look like winter' ASSISTANT: snow covers the roofs."] * 50
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=vocab, model_type="bpe",
                                   byte_fallback=True, user_defined_symbols=[f"<x{i}>" for i in range(max(0, vocab - 500))],
                                   hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True}))
    size = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    if added:
        (folder / "added_tokens.json").write_text(json.dumps({IM_PATCH: size, IM_START: size + 1, IM_END: size + 2}))
    return size


def llm_shapes(llm: dict, vocab: int) -> dict[str, tuple[int, ...]]:
    h, i = llm["hidden_size"], llm["intermediate_size"]
    shapes = {"model.embed_tokens.weight": (vocab, h)}
    for n in range(llm["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes.update({p + f"self_attn.{x}_proj.weight": (h, h) for x in "qkvo"})
        shapes.update({p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i)})
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
    shapes.update({"model.norm.weight": (h,), "lm_head.weight": (vocab, h)})
    return shapes


def write_llm(folder: Path, shapes: dict, shards: int, scale: float, safetensors: bool, seed: int, norm: float) -> None:
    """Random fp16 weights in ``shards`` files + index, one shard in memory at a time; norm weights near ``norm``."""
    generator = torch.Generator().manual_seed(seed)
    names = list(shapes)
    per = math.ceil(len(names) / shards)
    weight_map = {}
    stem, ext = ("model", "safetensors") if safetensors else ("pytorch_model", "bin")
    for s in range(shards):
        file = f"{stem}-{s + 1:05d}-of-{shards:05d}.{ext}"
        state = {}
        for name in names[s * per:(s + 1) * per]:
            state[name] = (torch.ones(shapes[name]) * (norm if name.endswith("norm.weight") else 0.0) +
                           scale * torch.randn(shapes[name], generator=generator)).half()
        save_file(state, folder / file) if safetensors else torch.save(state, folder / file)
        weight_map.update(dict.fromkeys(state, file))
    index = f"{stem}.{ext}.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def build_pieces(preset: dict, work: Path) -> dict[str, Path]:
    llama, delta, ip2p, clip = (work / n for n in ("llama", "llava-delta", "instruct-pix2pix", "clip"))
    vocab = tokenizer_files(llama, preset["vocab"], added=False)
    tokenizer_files(delta, preset["vocab"], added=True)
    llm, vision = preset["llm"], preset["vision"]
    config = {**llm, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "vocab_size": vocab}
    (llama / "config.json").write_text(json.dumps({**config, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (delta / "config.json").write_text(json.dumps({**config, "vocab_size": vocab + 3, "model_type": "llava",
                                                   "mm_vision_tower": "openai/clip-vit-large-patch14",
                                                   "mm_hidden_size": vision["hidden_size"], "mm_use_im_start_end": True,
                                                   "mm_vision_select_layer": -2, "use_mm_proj": True}))
    write_llm(llama, llm_shapes(llm, vocab), preset["shards"], 0.02, safetensors=True, seed=1, norm=1.0)
    delta_shapes = {**llm_shapes(llm, vocab + 3), "model.mm_projector.weight": (llm["hidden_size"], vision["hidden_size"]),
                    "model.mm_projector.bias": (llm["hidden_size"],)}
    write_llm(delta, delta_shapes, max(1, preset["shards"] // 2), 0.001, safetensors=False, seed=2, norm=0.0)

    torch.manual_seed(0)
    unet, vae = UNet2DConditionModel(**preset["unet"]), AutoencoderKL(**preset["vae"])
    for part, module in (("unet", unet), ("vae", vae)):
        module.save_config(ip2p / part)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, ip2p / "vae" / "diffusion_pytorch_model.safetensors")
    (ip2p / "scheduler").mkdir()
    (ip2p / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD_SCHEDULER))
    vision_config = CLIPVisionConfig(**vision)
    vision_config.save_pretrained(clip)
    save_file({k: v.contiguous() for k, v in CLIPVisionModel(vision_config).state_dict().items()}, clip / "model.safetensors")
    head = EditHead(EditHeadConfig(llm_hidden_size=llm["hidden_size"], num_visual_tokens=8,
                                   output_size=preset["unet"]["cross_attention_dim"], **preset["edit_head"]))
    tarball = work / "mgie_7b.tar.gz"
    _write_tarball(tarball, work / "mgie_7b", head, unet, vocab + 3 + 8, llm["hidden_size"])
    return {"llama": llama, "llava-delta": delta, "mgie": tarball, "ip2p": ip2p, "clip": clip}


def _write_tarball(tarball: Path, folder: Path, head: EditHead, unet, rows: int, hidden: int) -> None:
    folder.mkdir()
    mllm = {"model.embed_tokens.weight": torch.randn(rows, hidden).half(), "lm_head.weight": torch.randn(rows, hidden).half()}
    mllm.update({("emb" if k == "emb" else f"edit_head.{k}"): v.half() for k, v in head.state_dict().items()})
    torch.save(mllm, folder / "mllm.pt")
    torch.save({k: v.half() for k, v in unet.state_dict().items()}, folder / "unet.pt")
    with tarfile.open(tarball, "w:gz", compresslevel=1) as archive:
        for name in ("mllm.pt", "unet.pt"):
            archive.add(folder / name, arcname=f"mgie_7b/{name}")
            (folder / name).unlink()
    folder.rmdir()


def measure(args: list[str], patch: str = "") -> tuple[float, float]:
    """Wall seconds and peak resident memory (GiB) of a fresh process running ``main(args)``."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD.format(patch=patch), *args], capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"assemble failed:\n{done.stderr}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return seconds, report["peak_kib"] / 2**20


def sizes(pieces: dict[str, Path], bundle: Path) -> dict[str, float]:
    from mgie_core.assemble.sources import file_refs

    refs = [ref for f in sorted(pieces["llava-delta"].glob("*.bin")) for ref in file_refs(f, "").values()]
    params = sum(math.prod(r.shape) for r in file_refs(bundle, "").values() if r.dtype.is_floating_point)
    shards = [f.stat().st_size for piece in ("llama", "llava-delta") for f in pieces[piece].glob("*model-*")]
    return {"params": params / 1e9, "largest tensor": max(r.nbytes for r in refs) / 2**30,
            "largest shard": max(shards) / 2**30, "bundle": bundle.stat().st_size / 2**30,
            "tarball": pieces["mgie"].stat().st_size / 2**30}


def reuse_pieces(work: Path) -> dict[str, Path]:
    return {"llama": work / "llama", "llava-delta": work / "llava-delta", "mgie": work / "mgie_7b.tar.gz",
            "ip2p": work / "instruct-pix2pix", "clip": work / "clip"}


def command(pieces: dict[str, Path], out: Path) -> list[str]:
    return ["assemble", "--llama", str(pieces["llama"]), "--llava-delta", str(pieces["llava-delta"]), "--mgie",
            str(pieces["mgie"]), "--ip2p", str(pieces["ip2p"]), "--clip", str(pieces["clip"]), "--out", str(out), "--quiet"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="1b")
    parser.add_argument("--work", default="/tmp/mgie-assemble-bench")
    parser.add_argument("--reuse", action="store_true", help="measure the pieces an earlier run left in --work")
    parser.add_argument("--out", help="append the table to this markdown file (bench/RESULTS.md)")
    args = parser.parse_args(argv)
    work = Path(args.work)
    if args.reuse:
        pieces = reuse_pieces(work)
    elif work.exists() and any(work.iterdir()):
        raise SystemExit(f"--work {work} is not empty; give a new folder, or --reuse its pieces")
    else:
        pieces = build_pieces(PRESETS[args.preset], work)
    tiny = reuse_pieces(work / "tiny") if (work / "tiny").is_dir() else build_pieces(PRESETS["tiny"], work / "tiny")
    bundle = work / "out" / "mgie.safetensors"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    runs = {"imports only": measure([]),
            "assemble, tiny pieces (the constant: the same code, 0.01 GB of weights)":
                measure(command(tiny, work / "out" / "tiny.safetensors")),
            "Apple's tarball only: both members streamed into scratch files": measure([], UNPACK.format(
                tarball=pieces["mgie"], scratch=work / "out")),
            "assemble": measure(command(pieces, bundle)),
            "assemble, pickle pages kept (not dropped)": measure(command(pieces, bundle), KEEP_PAGES)}
    s = sizes(pieces, bundle)
    lines = [f"### assemble, preset {args.preset}: {s['params'] * 1e3:.0f}M parameters, largest tensor {s['largest tensor']:.3f} "
             f"GiB, largest shard {s['largest shard']:.2f} GiB, tarball {s['tarball']:.2f} GiB, bundle {s['bundle']:.2f} "
             f"GiB ({platform.machine()}, {torch.get_num_threads()} threads, warm page cache)", "",
             f"torch {torch.__version__}; `python -m bench.assemble {' '.join(argv if argv is not None else sys.argv[1:])}`",
             "", "| run | wall time | peak resident memory |", "|---|---|---|"]
    lines += [f"| {name} | {seconds:.1f} s | {peak:.2f} GiB |" for name, (seconds, peak) in runs.items()]
    publish("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
