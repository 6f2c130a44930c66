"""How long Load MGIE takes to change its LoRA's strength: a re-patch of the loaded weights against a full reload.

    python -m bench.lora_switch [--model PATH] [--precision fp32] [--repeat 5]

The LoRA has the layout and size train/finetune.py writes for the model (rank 16 adapters on the UNet's and the
LLM's attention, the edit head, the [IMG] rows), with random adapters. "reload" is what Load MGIE did before on a
strength change: load the model, cast it, merge the LoRA. "re-patch" is what it does now: read the LoRA file
(Load MGIE reads it at each run) and set the new strength on the loaded model (put back the weights the LoRA
changed, merge it again). Medians of --repeat runs, strengths alternating between 0.5 and 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mgie_core.formats import load_model, read_lora, save_lora
from mgie_core.runtime.devices import DTYPES
from mgie_core.runtime.lora_patch import LoraPatcher
from train.adapters import Trainable
from train.config import TrainConfig


def write_lora(model_path: str | None, out: Path) -> Path:
    """A LoRA of finetune's default shape for the model, adapters' B random so the merge does real work."""
    model = load_model(model_path)
    config = TrainConfig(model=model_path, data="unused", output="unused", lora_rank=16, lora_alpha=16.0)
    tensors = Trainable(model, config).export_lora()
    g = torch.Generator().manual_seed(0)
    tensors = {k: (torch.randn(v.shape, generator=g) * 0.01 if ".lora_B." in k else v) for k, v in tensors.items()}
    return save_lora(out, tensors, {"rank": 16, "alpha": 16.0, "base_fingerprint": model.fingerprint()})


def reload(model_path: str | None, dtype: torch.dtype, lora: Path, strength: float) -> LoraPatcher:
    model = load_model(model_path)
    model.fingerprint()
    patcher = LoraPatcher(model.to("cpu", dtype).eval())
    patcher.set(read_lora(lora), strength)
    return patcher


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or bundle (default: the embedded mgie-mini)")
    parser.add_argument("--precision", default="fp32", choices=list(DTYPES))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    dtype = DTYPES[args.precision]
    with tempfile.TemporaryDirectory() as tmp:
        lora = write_lora(args.model, Path(tmp) / "lora.safetensors")
        patcher = reload(args.model, dtype, lora, 1.0)  # warm: the page cache and torch's first calls
        strengths = [0.5 if i % 2 == 0 else 1.0 for i in range(args.repeat)]
        reloads = [timed(lambda s=s: reload(args.model, dtype, lora, s)) for s in strengths]
        patches = [timed(lambda s=s: patcher.set(read_lora(lora), s)) for s in strengths]
        size = lora.stat().st_size
    name = args.model or "mgie-mini (embedded)"
    print(f"{name}, {args.precision}, LoRA of {size / 2**20:.1f} MiB, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeat}:")
    print(f"| reload (load, cast, merge) | {statistics.median(reloads):.3f} s |")
    print(f"| re-patch (read the LoRA, restore, merge) | {statistics.median(patches):.3f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
