"""A fine-tuning run's folder, as ``train/finetune.py`` writes it and a watcher reads it while it runs.

    OUTPUT/config.json          the run's resolved options
    OUTPUT/losses.jsonl         one line a step: {"step", "loss_ins", "loss_edit"}
    OUTPUT/losses.png           both losses against steps, at each save
    OUTPUT/samples/step-N.png   input | sample edit | target, at each sample
    OUTPUT/checkpoints/step-N/  what --resume continues from
    OUTPUT/lora.safetensors     the LoRA, at the end
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG, LOSSES, PLOT, SAMPLES, CHECKPOINTS, LORA = ("config.json", "losses.jsonl", "losses.png", "samples",
                                                   "checkpoints", "lora.safetensors")


def sample_path(output: Path, step: int) -> Path:
    return output / SAMPLES / f"step-{step:06d}.png"


def read_losses(output: Path) -> list[dict]:
    """The records of ``losses.jsonl``, one per step (a line being written is skipped)."""
    path = output / LOSSES
    records = []
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def latest_sample(output: Path) -> Path | None:
    """The newest sample edit grid, or None before the first."""
    found = sorted((output / SAMPLES).glob("step-*.png")) if (output / SAMPLES).is_dir() else []
    return found[-1] if found else None


def loss_map(output: Path) -> dict[str, list[float]]:
    """The run's losses as ComfyUI's LOSS_MAP (what its Plot Loss Graph draws): the training objective of each step,
    L_ins + weight x L_edit, under "loss"; each loss on its own too."""
    weight = json.loads((output / CONFIG).read_text())["edit_loss_weight"]
    records = read_losses(output)
    return {"loss": [r["loss_ins"] + weight * r["loss_edit"] for r in records],
            "loss_ins": [r["loss_ins"] for r in records], "loss_edit": [r["loss_edit"] for r in records]}
