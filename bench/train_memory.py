"""Peak memory, time per step and losses of fine-tuning, per memory option or per memory plan.

    python -m bench.train_memory --model mini --settings options --max-steps 3             # CPU: each option's effect
    python -m bench.train_memory --preset small --settings options --accumulation 1    # a mid-size random model
    python -m bench.train_memory --preset full --device cuda --settings plans --max-steps 10 --json OUT/train.json

``options``: the fastest settings (fp32 or the plan's half precision base, no recomputation, AdamW, latents
encoded every step), then each of ``--llm-quant int8``, ``--gradient-checkpointing``, ``--optimizer adamw8bit``,
``--cache-latents`` alone, then all four. ``plans``: ``--memory 24, 16, 12, 8``, the settings each plan picks.
Every setting trains in a fresh process on the sepia pairs (bench/train_pairs.py), so its peak is its own. The
peak covers the training steps, setup excluded: on CUDA ``max_memory_reserved`` (what makes a card run out) and
allocated; on a CPU the peak resident set (VmHWM, reset after setup; the setup's own RSS is shown beside it).
Seconds per step: the median of the steps after the first. Random models (``--preset``) are built on the device,
then moved to the CPU before placing, as a loaded model is.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import publish

OPTION_SETS = {
    "fastest": {},
    "--llm-quant int8": {"llm_quant": "int8"},
    "--gradient-checkpointing": {"gradient_checkpointing": True},
    "--optimizer adamw8bit": {"optimizer": "adamw8bit"},
    "--cache-latents": {"cache_latents": True},
    "all four": {"llm_quant": "int8", "gradient_checkpointing": True, "optimizer": "adamw8bit", "cache_latents": True},
}
FASTEST = {"llm_quant": "none", "gradient_checkpointing": False, "optimizer": "adamw", "cache_latents": False}
PLAN_SETS = {f"--memory {gb}": {"memory": gb} for gb in ("24", "16", "12", "8")}


def settings_for(kind: str) -> dict[str, dict]:
    if kind == "plans":
        return PLAN_SETS
    return {name: {**FASTEST, **options} for name, options in OPTION_SETS.items()}


# -- the child process: one setting ----------------------------------------------------------------
def load_base(spec: dict, device: torch.device):
    from mgie_core import load_model

    if spec["preset"]:
        from .random_model import PRESETS, build_random_model

        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
        model = build_random_model(PRESETS[spec["preset"]], device, dtype).to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return model
    return load_model(None if spec["model"] == "mini" else spec["model"])


def release(device: torch.device) -> None:
    """Give freed memory back (the CPU allocator's free lists, the CUDA cache) before a peak is measured."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    elif platform.system() == "Linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def memory_now(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"reserved": torch.cuda.memory_reserved(device), "allocated": torch.cuda.memory_allocated(device)}
    return {"rss": _status("VmRSS")}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)


def read_peak(device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return {"reserved": torch.cuda.max_memory_reserved(device), "allocated": torch.cuda.max_memory_allocated(device)}
    return {"rss": _status("VmHWM")}


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(spec: dict) -> dict:
    from train.config import TrainConfig
    from train.loop import train_step
    from train.setup import prepare

    torch.manual_seed(0)
    device = torch.device(spec["device"] if spec["device"] != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    base = load_base(spec, device)
    sizes = {k: spec[k] for k in ("resolution", "gradient_accumulation") if spec.get(k)}
    config = TrainConfig(data=spec["data"], output=spec["output"], max_steps=spec["steps"], batch_size=1,
                         save_every=10**6, sample_every=10**6, learning_rate=1e-4, warmup_steps=1,
                         device="cpu" if device.type == "cpu" else "auto", **sizes, **spec["settings"])
    run = prepare(config, base)
    del base
    release(device)
    setup = memory_now(device)
    reset_peak(device)
    times, losses = [], []
    for step in range(spec["steps"]):
        began = time.perf_counter()
        ins, edit = train_step(run, step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - began)
        losses.append([ins, edit])
    resolved = {k: getattr(run.config, k) for k in ("llm_quant", "gradient_checkpointing", "optimizer", "cache_latents",
                                                    "mixed_precision", "resolution", "gradient_accumulation")}
    return {"setup": setup, "peak": read_peak(device), "seconds": times, "losses": losses, "config": resolved,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()}


# -- the parent: one child per setting -------------------------------------------------------------
def measure(name: str, settings: dict, args: argparse.Namespace, data: Path, work: Path) -> dict | None:
    spec = {"model": args.model, "preset": args.preset, "device": args.device, "steps": args.max_steps, "data": str(data),
            "output": str(work / name.replace(" ", "_").replace("-", "")), "settings": settings,
            "resolution": args.resolution, "gradient_accumulation": args.accumulation}
    done = subprocess.run([sys.executable, "-m", "bench.train_memory", "--child", json.dumps(spec)], capture_output=True,
                          text=True, timeout=args.timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"{name}: failed: {last}", file=sys.stderr, flush=True)
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{name}: {result}", file=sys.stderr, flush=True)
    return result


def table(rows: dict[str, dict], header: str, cuda: bool) -> str:
    gib = lambda n: f"{n / 2**30:.2f}"  # noqa: E731
    mib = lambda n: f"{n / 2**20:.0f}"  # noqa: E731
    memory = ["peak reserved (GiB)", "peak allocated (GiB)"] if cuda else \
        ["peak RSS of the steps (MiB)", "RSS after setup (MiB)", "the steps' growth (MiB)"]
    columns = ["setting", "LLM", "checkpointing", "optimizer", "cached latents", *memory, "s / step",
               "L_ins first → last", "L_edit first → last"]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, r in rows.items():
        c, p = r["config"], r["peak"]
        peak = [gib(p["reserved"]), gib(p["allocated"])] if cuda else \
            [mib(p["rss"]), mib(r["setup"]["rss"]), mib(p["rss"] - r["setup"]["rss"])]
        later = r["seconds"][1:] or r["seconds"]
        (i0, e0), (i1, e1) = r["losses"][0], r["losses"][-1]
        cells = [name, c["llm_quant"], "on" if c["gradient_checkpointing"] else "off", c["optimizer"],
                 "yes" if c["cache_latents"] else "no", *peak, f"{statistics.median(later):.2f}",
                 f"{i0:.3f} → {i1:.3f}", f"{e0:.4f} → {e1:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


GOALS = {"--memory 12": 11.0, "--memory 8": 7.5}  # GiB reserved at most (issue 45), at 256 px, batch 1


def goals(rows: dict[str, dict]) -> str:
    """The plans' goals: peak reserved under GOALS, a step at most twice the fastest plan's (--memory 24)."""
    fastest = rows.get("--memory 24")
    lines = []
    for name, limit in GOALS.items():
        if name not in rows:
            continue
        reserved = rows[name]["peak"]["reserved"] / 2**30
        line = f"- {name}: peak reserved {reserved:.2f} GiB, goal <= {limit} GiB: {'met' if reserved <= limit else 'missed'}"
        if fastest is not None:
            ratio = statistics.median(rows[name]["seconds"][1:] or rows[name]["seconds"]) / statistics.median(
                fastest["seconds"][1:] or fastest["seconds"])
            line += f"; a step {ratio:.2f}x the --memory 24 plan's, goal <= 2x: {'met' if ratio <= 2 else 'missed'}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mini", help="mini, or Apple's MGIE folder or a bundle (ignored with --preset)")
    parser.add_argument("--preset", help="a random model of bench/random_model.py's sizes instead: tiny, small, full")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--settings", choices=("options", "plans"), default="options")
    parser.add_argument("--only", help="comma-separated setting names to run (default: all of --settings)")
    parser.add_argument("--max-steps", type=int, default=3, help="optimizer steps per setting (default: %(default)s)")
    parser.add_argument("--resolution", type=int, help="training size (default: the model's)")
    parser.add_argument("--accumulation", type=int, help="micro-batches a step (default: the model's)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per setting")
    parser.add_argument("--json", help="write every figure, loss curves included, to this file")
    parser.add_argument("--out", help="append the table to this markdown file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    chosen = settings_for(args.settings)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    from .train_pairs import write_pairs

    rows = {}
    with tempfile.TemporaryDirectory(prefix="mgie-train-memory-") as work:
        data = write_pairs(Path(work) / "pairs", 4, seed=1, size=args.resolution or 64)
        for name, settings in chosen.items():
            result = measure(name, settings, args, data, Path(work))
            if result is not None:
                rows[name] = result
    if not rows:
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    first = next(iter(rows.values()))
    cuda = "reserved" in first["peak"]
    model = f"preset {args.preset}" if args.preset else args.model
    header = (f"### fine-tuning memory, {model}: {first['config']['resolution']} px, batch 1 x "
              f"{first['config']['gradient_accumulation']} micro-batch(es), {args.max_steps} steps, "
              f"{first['config']['mixed_precision']} mixed precision on {first['device']} ({torch.get_num_threads()} threads)"
              f"\n\n`python -m bench.train_memory {' '.join(argv if argv is not None else sys.argv[1:])}`")
    text = table(rows, header, cuda)
    if cuda and args.settings == "plans":
        text += "\n\n" + goals(rows)
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
