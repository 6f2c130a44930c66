"""Training configuration: one frozen dataclass, from the command line or a JSON file (``--config``).

Defaults follow the paper where it has one (loss weight 0.5, conditioning dropout 0.05) and
common LoRA practice otherwise. The resolved config is saved beside every checkpoint.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from mgie_core.errors import InputError

MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    model: str | None = None  # Apple's folder or a bundle; None = the embedded mgie-mini
    data: str = ""  # a .jsonl manifest or a folder (input/, target/, NAME.txt)
    output: str = ""
    max_steps: int = 500  # optimizer steps
    batch_size: int = 1
    gradient_accumulation: int = 4
    learning_rate: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_unet_convs: bool = False  # also adapt the UNet's ResNet convolutions
    lora_llm: bool = True  # adapt the LLM's attention projections
    resolution: int = 256  # diffusion side (the reference trains at 256); the CLIP side follows the model
    clip_resolution: int = 512  # square crop size before the CLIP processor, as the reference
    edit_loss_weight: float = 0.5  # L = L_ins + 0.5 * L_edit (MGIE)
    condition_dropout: float = 0.05  # reference: 0.10 null text, 0.10 no image, 0.05 both
    seed: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = True
    save_every: int = 100
    sample_every: int = 100
    sample_steps: int = 20
    resume: str | None = None  # a checkpoint folder, or "latest"
    device: str = "auto"
    strict: bool = False  # bad samples are fatal instead of skipped
    max_new_tokens: int = 96  # for deriving missing expressive instructions

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "gradient_accumulation", "lora_rank", "resolution", "save_every",
                     "sample_every", "sample_steps", "clip_resolution", "max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if self.resolution % 8:
            raise InputError(f"resolution must be a multiple of 8, got {self.resolution}")
        if self.learning_rate <= 0 or self.lora_alpha <= 0:
            raise InputError("learning_rate and lora_alpha must be positive")
        if not 0 <= self.condition_dropout <= 1 / 3:
            raise InputError(f"condition_dropout must be in [0, 1/3], got {self.condition_dropout}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise InputError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if not self.data:
            raise InputError("--data is required: a .jsonl manifest or a folder of input/, target/ and NAME.txt")
        if not self.output:
            raise InputError("--output is required: the folder for the LoRA, checkpoints and samples")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python train/finetune.py",
                                description="End-to-end LoRA fine-tuning of MGIE on (input, instruction, target) triplets.")
    p.add_argument("--config", help="JSON file with any of the options below (command-line values win)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool",):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            p.add_argument(flag, type=kind, default=None)
    return p


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    args = parser().parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        values.update(_read_config_file(Path(args.config)))
    values.update({k: v for k, v in vars(args).items() if v is not None and k != "config"})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown option(s) in {args.config}: {', '.join(unknown)}")
    return TrainConfig(**values)


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"--config file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise InputError(f"--config {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"--config {path} must hold a JSON object")
    return {k.replace("-", "_"): v for k, v in data.items()}
