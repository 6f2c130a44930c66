"""Does a LoRA trained on a quantized base edit as well as one trained on the fp32 base? The held-out check, side by
side.

    python -m bench.train_quality --max-steps 60 --out bench/RESULTS.md

Fine-tunes mgie-mini on the sepia pairs (bench/train_pairs.py) once per setting, with the same seed, data and
steps: the fp32 base with AdamW, and the low-memory settings (an int8 LLM, gradient checkpointing, 8-bit AdamW,
cached latents). Each LoRA then edits held-out pairs of the same edit, merged into the unquantized model
(train/heldout.py): the distance of its edits to their targets against the base model's, and the share of that
distance it closed. Also the first and last losses of each run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from mgie_core.formats.pairs import read_triplets
from train.config import TrainConfig
from train.heldout import held_out_check
from train.loop import train

from . import publish
from .train_pairs import write_pairs

SETTINGS = {
    "fp32 base": dict(llm_quant="none", gradient_checkpointing=False, optimizer="adamw", cache_latents=False),
    "int8 base + checkpointing + 8-bit AdamW + cached latents": dict(
        llm_quant="int8", gradient_checkpointing=True, optimizer="adamw8bit", cache_latents=True),
}


def run(work: Path, steps: int, pairs: int, held_out: int, learning_rate: float, rank: int,
        sample_steps: int) -> list[dict]:
    data, test = write_pairs(work / "train", pairs, seed=1), write_pairs(work / "held-out", held_out, seed=2)
    triplets = read_triplets(test).triplets
    rows = []
    for name, settings in SETTINGS.items():
        out = work / name.split()[0]
        began = time.perf_counter()
        lora = train(TrainConfig(data=str(data), output=str(out), max_steps=steps, learning_rate=learning_rate,
                                 warmup_steps=5, lora_rank=rank, lora_alpha=float(rank), save_every=steps,
                                 sample_every=steps, device="cpu", **settings))
        seconds = time.perf_counter() - began
        losses = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
        check = held_out_check(None, lora, triplets, resolution=64, steps=sample_steps)
        rows.append({"name": name, "seconds": seconds, "check": check, "first": _mean(losses[:5]),
                     "last": _mean(losses[-5:])})
        print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def _mean(rows: list[dict]) -> tuple[float, float]:
    return (sum(r["loss_ins"] for r in rows) / len(rows), sum(r["loss_edit"] for r in rows) / len(rows))


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| base and options | L_ins first 5 → last 5 | L_edit first 5 → last 5 | held-out distance, base "
             "model | with the LoRA | distance closed | training time |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["check"]
        lines.append(f"| {r['name']} | {r['first'][0]:.3f} → {r['last'][0]:.3f} | {r['first'][1]:.4f} → "
                     f"{r['last'][1]:.4f} | {c.base:.4f} | {c.tuned:.4f} | {100 * c.closed:.0f}% | {r['seconds']:.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-steps", type=int, default=60, help="optimizer steps per setting (default: %(default)s)")
    parser.add_argument("--pairs", type=int, default=8, help="training pairs")
    parser.add_argument("--held-out", type=int, default=6, help="held-out pairs")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--sample-steps", type=int, default=20, help="denoising steps of the held-out edits")
    parser.add_argument("--out", help="append the table to this markdown file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mgie-train-quality-") as work:
        rows = run(Path(work), args.max_steps, args.pairs, args.held_out, args.learning_rate, args.rank, args.sample_steps)
    header = (f"### fine-tuning on a quantized base, held out: mgie-mini, {args.pairs} sepia pairs, {args.max_steps} steps, "
              f"rank {args.rank}, lr {args.learning_rate:g}, {args.held_out} held-out pairs at {args.sample_steps} "
              f"denoising steps, fp32 on cpu ({torch.get_num_threads()} threads)\n\n"
              f"`python -m bench.train_quality {' '.join(argv if argv is not None else sys.argv[1:])}`. Distance: mean "
              "|edit - target| of the pixels (0-1), every LoRA merged into the unquantized model.")
    publish(table(rows, header), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
