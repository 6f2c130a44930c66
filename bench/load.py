"""How long loading takes: Apple's pickles against the converted bundle, same random model.

    python -m bench.load --preset tiny --work /tmp/mgie-load [--out bench/RESULTS.md]

Writes a random model in Apple's exact layout (sharded pickles, mllm.pt, unet.pt, the
InstructPix2Pix and CLIP folders), converts it, then times three ways of getting every weight into
memory (each followed by reading every tensor once, so lazy loading cannot hide the work):
``torch.load`` of each pickle as Apple's demo does (its pipeline also reads the InstructPix2Pix
folder's own fp32 UNet, which unet.pt then replaces), our loader on the pickles (memory-mapped,
``weights_only``, never reading that UNet), and our loader on the bundle. The page cache is warm.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from mgie_core.formats import load_model, save_bundle
from mgie_core.model.mgie import MGIEModel

from .random_model import PRESETS, build_random_model


def write_apple_layout(model: MGIEModel, root: Path) -> Path:
    """The inverse of formats.apple.load_apple_checkpoint, for benchmarks."""
    llava, mgie, ip2p, clip = (root / n for n in ("LLaVA-7B-v1", "mgie_7b", "instruct-pix2pix", "clip-vit-large-patch14"))
    for folder in (llava, mgie, ip2p / "unet", ip2p / "vae", ip2p / "scheduler", clip):
        folder.mkdir(parents=True, exist_ok=True)
    tok, visual = model.tokenizer, list(model.spec.visual_token_ids)
    (llava / "tokenizer.model").write_bytes(tok.sp_model_proto)
    (llava / "added_tokens.json").write_text(json.dumps({k: v for k, v in tok.added_tokens.items() if v < visual[0]}))
    llava_cfg = {**model.info["llava_config"], "mm_vision_tower": "openai/clip-vit-large-patch14", "model_type": "llava"}
    (llava / "config.json").write_text(json.dumps(llava_cfg))
    state = {("model." + k if not k.startswith("lm_head") else k): v.half() for k, v in model.mllm.state_dict().items()
             if not k.startswith(("vision_tower.", "mm_projector."))}
    state = {k.replace("model.llm.", "model."): v for k, v in state.items()}
    state.update({f"model.mm_projector.{k}": v.half() for k, v in model.mllm.mm_projector.state_dict().items()})
    keys = sorted(state)
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :]), start=1):
        name = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({k: state[k] for k in part}, llava / name)
        weight_map.update(dict.fromkeys(part, name))
    (llava / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    mllm = {"model.embed_tokens.weight": state["model.embed_tokens.weight"], "lm_head.weight": state["lm_head.weight"],
            "emb": model.edit_head.emb.detach().half()}
    mllm.update({f"edit_head.{k}": v.half() for k, v in model.edit_head.state_dict().items() if k != "emb"})
    torch.save(mllm, mgie / "mllm.pt")
    torch.save({k: v.half() for k, v in model.unet.state_dict().items()}, mgie / "unet.pt")
    model.unet.save_config(ip2p / "unet")
    # the InstructPix2Pix folder ships its own fp32 UNet: the demo's pipeline loads it, unet.pt then replaces it
    torch.save(model.unet.state_dict(), ip2p / "unet" / "diffusion_pytorch_model.bin")
    model.vae.save_config(ip2p / "vae")
    torch.save(model.vae.state_dict(), ip2p / "vae" / "diffusion_pytorch_model.bin")
    (ip2p / "scheduler" / "scheduler_config.json").write_text(json.dumps(model.scheduler_config))
    (clip / "config.json").write_text(json.dumps(model.info["clip_config"]))
    torch.save({f"vision_model.{k}": v for k, v in model.mllm.vision_tower.state_dict().items()}, clip / "pytorch_model.bin")
    (clip / "preprocessor_config.json").write_text(json.dumps(model.clip_image_config.to_dict()))
    return root


def touch_all(tensors) -> float:
    """Read every byte once (the cheapest full pass: a sum in the stored dtype)."""
    total = 0.0
    for t in tensors:
        total += float(t.sum()) if t.is_floating_point() else 0.0
    return total


def pickle_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.bin")) + sorted(root.rglob("*.pt"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny")
    parser.add_argument("--work", default="/tmp/mgie-load-bench")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    work = Path(args.work)
    preset = PRESETS[args.preset]
    model = build_random_model(dataclasses.replace(preset, llm={**preset.llm, "vocab_size": 0}), torch.device("cpu"),
                               torch.float32)
    root = write_apple_layout(model, work / "apple")
    bundle = save_bundle(load_model(root), work / "bundle.safetensors", dtype="fp16")
    size = sum(p.stat().st_size for p in pickle_files(root))
    loaders = {
        "torch.load every pickle (Apple's demo)": lambda: [
            t for f in pickle_files(root) for t in torch.load(f, map_location="cpu", weights_only=True).values()],
        "mgie_core on Apple's folders": lambda: list(_weights(load_model(root))),
        "mgie_core on the bundle": lambda: list(_weights(load_model(bundle))),
    }
    results = {}
    for name, load in loaders.items():
        touch_all(load())  # warm the page cache
        results[name] = (_seconds(load, args.repeat), _seconds(lambda: touch_all(load()), args.repeat))  # noqa: B023
    base = results["torch.load every pickle (Apple's demo)"]
    lines = [f"### loading, preset {args.preset} ({size / 2**20:.0f} MiB of pickles, warm page cache, "
             f"{torch.get_num_threads()} threads): `python -m bench.load {' '.join(argv or sys.argv[1:])}`", "",
             "| way | load (s) | load + read every weight (s) | speed-up vs. torch.load (load / load + read) |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {lazy:.3f} | {full:.3f} | {base[0] / lazy:.1f}x / {base[1] / full:.2f}x |"
              for name, (lazy, full) in results.items()]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(text + "\n\n")
    return 0


def _seconds(fn, repeat: int) -> float:
    began = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - began) / repeat


def _weights(model: MGIEModel):
    for module in model.modules().values():
        yield from module.state_dict().values()


if __name__ == "__main__":
    raise SystemExit(main())
