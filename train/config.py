"""Training configuration: one frozen dataclass, from the command line or a JSON file (``--config``).

Defaults follow the paper where it has one (loss weight 0.5, conditioning dropout 0.05) and common LoRA
practice otherwise. The image sizes and gradient accumulation default to the model's: a model that
recommends a working size (mgie-mini: 64 px) trains at it, one step at a time; Apple's MGIE-7B at the
reference's 256 px (512 for the CLIP crop), accumulating 4 micro-batches. The resolved config is saved
beside every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mgie_core.config import SETTINGS, TRAIN_SETTINGS, check_setting, like
from mgie_core.errors import InputError, SettingError
from mgie_core.model.mgie import MGIEModel

MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")
FROM_PLAN = ("llm_quant", "gradient_checkpointing", "optimizer", "cache_latents", "mixed_precision")
# MGIE-7B's reference sizes, for a model that recommends no working size of its own
REFERENCE = {"resolution": 256, "clip_resolution": 512, "gradient_accumulation": 4}
FROM_MODEL = tuple(REFERENCE)


def option(default: Any, help: str) -> Any:  # noqa: A002 - argparse's name
    """A fine-tuning option of its own (the settings it shares with editing are declared there: :func:`like`)."""
    return field(default=default, metadata={"help": help})


def declared(f) -> bool:
    """A setting declared in mgie_core/config.py (shared with editing or the node): checked and flagged from there."""
    return "low" in f.metadata


@dataclass(frozen=True)
class TrainConfig:
    model: str | None = option(None, "Apple's MGIE root folder or an MGIE bundle (default: the embedded mgie-mini)")
    data: str = option("", "a .jsonl manifest, or a folder of input/NAME.png, target/NAME.png and NAME.txt (required)")
    output: str = option("", "the folder for lora.safetensors, checkpoints, samples and losses (required)")
    max_steps: int = like(TRAIN_SETTINGS["max_steps"])
    batch_size: int = option(1, "samples per micro-batch")
    gradient_accumulation: int | None = option(
        None, "micro-batches per optimizer step (default: 1 for a model with a working size, such as mgie-mini; "
              "4 for MGIE-7B)")
    learning_rate: float = like(TRAIN_SETTINGS["learning_rate"])
    warmup_steps: int = option(20, "steps of linear warmup to the peak rate")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    lora_rank: int = like(TRAIN_SETTINGS["lora_rank"])
    lora_alpha: float = option(16.0, "LoRA alpha (the adapters are scaled by alpha / rank)")
    lora_unet_convs: bool = option(False, "also adapt the UNet's ResNet convolutions")
    lora_llm: bool = option(True, "adapt the LLM's attention projections")
    resolution: int | None = option(
        None, "side of the pictures the UNet trains on, a multiple of 8 (default: the model's working size, "
              "mgie-mini 64; MGIE-7B the reference's 256)")
    clip_resolution: int | None = option(
        None, "square crop the CLIP processor then sees (default: the model's working size; MGIE-7B 512, as the "
              "reference)")
    edit_loss_weight: float = option(0.5, "L = L_ins + weight x L_edit (the paper's 0.5)")
    condition_dropout: float = option(0.05, "p of dropping both conditions (the reference: 2p drop the text, 2p the "
                                            "image, p both)")
    seed: int = like(TRAIN_SETTINGS["seed"])
    memory: str = like(TRAIN_SETTINGS["memory"])
    mixed_precision: str | None = option(None, "no, fp16 (GPU only) or bf16: the frozen base's precision and "
                                               "autocast (default: the memory plan's: bf16, or fp16 where the GPU "
                                               "lacks bf16; no on a CPU)")
    llm_quant: str = like(SETTINGS["llm_quant"], help="none, int8 or int4 (CUDA only): the frozen LLM's linear layers "
                          "quantized with torchao, as editing quantizes them for small cards; the adapters and the "
                          "[IMG] rows still train in full precision, QLoRA-style. auto: the memory plan's.")
    gradient_checkpointing: bool | None = option(None, "recompute the LLM's and the UNet's activations in the "
                                                       "backward pass: less memory, slower steps (default: the "
                                                       "memory plan's)")
    optimizer: str | None = option(None, "adamw, or adamw8bit: AdamW with its two moments kept in 8 bits "
                                         "(torchao), a quarter of the optimizer's memory (default: the memory plan's)")
    cache_latents: bool | None = option(None, "encode every input and target with the VAE once, before the first "
                                              "step, then keep the VAE off the GPU (default: the memory plan's)")
    save_every: int = option(100, "write a checkpoint every this many steps (and at the end)")
    sample_every: int = like(TRAIN_SETTINGS["sample_every"])
    sample_steps: int = like(TRAIN_SETTINGS["sample_steps"])
    report_to: str = like(TRAIN_SETTINGS["report_to"])
    resume: str | None = option(None, "a checkpoint folder, or 'latest' (the newest under OUTPUT/checkpoints) "
                                          "(default: start afresh)")
    device: str = option("auto", "cpu or auto (accelerate's choice: the GPU of this process)")
    strict: bool = option(False, "make a bad sample fatal instead of skipping it")
    max_new_tokens: int = like(SETTINGS["max_new_tokens"], help="Token budget when deriving a missing expressive "
                               "instruction, and in the sample edits, {range} (default: {default}).")

    def __post_init__(self) -> None:
        for f in fields(self):
            if declared(f):
                try:
                    object.__setattr__(self, f.name, check_setting(f, getattr(self, f.name)))
                except SettingError as err:
                    raise err.named({f.name: f"--{_flag(f.name)}"}) from None
        for name in ("batch_size", "gradient_accumulation", "resolution", "save_every", "clip_resolution"):
            value = getattr(self, name)
            if value is None and name in FROM_MODEL:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"--{_flag(name)} must be a positive integer, got {value!r}")
        if self.resolution is not None and self.resolution % 8:
            raise InputError(f"--resolution must be a multiple of 8, got {self.resolution}")
        if self.lora_alpha <= 0:
            raise InputError(f"--lora-alpha must be positive, got {self.lora_alpha}")
        if not 0 <= self.condition_dropout <= 1 / 3:
            raise InputError(f"--condition-dropout must be in [0, 1/3], got {self.condition_dropout}")
        for name, choices in (("mixed_precision", MIXED_PRECISION), ("optimizer", OPTIMIZERS)):
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise InputError(f"--{_flag(name)} must be one of {', '.join(choices)}, got {value!r}")
        if not self.data:
            raise InputError("--data is required: a .jsonl manifest or a folder of input/, target/ and NAME.txt")
        if not self.output:
            raise InputError("--output is required: the folder for the LoRA, checkpoints and samples")

    def for_model(self, model: MGIEModel) -> TrainConfig:
        """The sizes and accumulation left unset, taken from ``model``: its working size (and one micro-batch a
        step) when it recommends one, as mgie-mini does; else MGIE-7B's reference values."""
        side = model.recommended_sampling.get("max_side")
        defaults = REFERENCE if side is None else {"resolution": side, "clip_resolution": side, "gradient_accumulation": 1}
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def add_setting(parser: argparse.ArgumentParser, declared) -> None:
    """A shared setting's flag, as editing makes it (its default left to the config: None means not given)."""
    from mgie_core.frontends.flags import setting_flag

    setting_flag(parser, declared, default=None)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python train/finetune.py",
                                description="End-to-end LoRA fine-tuning of MGIE on (input, instruction, target) triplets.")
    p.add_argument("--config", help="a JSON file with any of the options below (command-line values win)")
    for f in fields(TrainConfig):
        if declared(f):
            add_setting(p, f)
            continue
        text = f.metadata["help"]
        if f.default not in (None, "") and "(default:" not in text and "(required)" not in text:
            text += f" (default: {f.default})"
        kind = f.type.replace(" | None", "")
        if kind == "bool":
            p.add_argument(f"--{_flag(f.name)}", action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            p.add_argument(f"--{_flag(f.name)}", type={"int": int, "float": float}.get(kind, str), default=None, help=text)
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
    config = TrainConfig(**values)
    return resumed(config, given=set(values)) if config.resume else config


# What a resumed run may change: how long it goes on, how often it saves and shows, where it runs (and so the batch
# of each process, which keeps the total batch when another number of processes resumes it).
RESUME_MAY_CHANGE = ("max_steps", "save_every", "sample_every", "sample_steps", "batch_size", "resume", "strict", "device")


def resumed(config: TrainConfig, given: set[str] | None = None) -> TrainConfig:
    """A resumed run goes on with its own options, saved in OUTPUT/config.json: ``config`` with them, but for
    :data:`RESUME_MAY_CHANGE`. ``given``: the options set on the command line (None: those that are not their
    default); another value of a saved option is refused, naming both, before anything is read or written."""
    path = Path(config.output) / "config.json"
    if not path.is_file():
        raise InputError(f"--resume {config.resume}: {config.output} holds no config.json, so no run to go on from; "
                         "give the --output of the run to resume, or leave --resume out to start afresh")
    saved = _read_config_file(path)
    known = {f.name: f.default for f in fields(TrainConfig)}
    given = {n for n in known if getattr(config, n) != known[n]} if given is None else set(given)
    clashes = [f"--{_flag(n)} {getattr(config, n)!r} (the run's: {saved[n]!r})" for n in sorted(given)
               if n in saved and n not in RESUME_MAY_CHANGE and saved[n] != getattr(config, n)]
    if clashes:
        changeable = ", ".join("--" + _flag(n) for n in RESUME_MAY_CHANGE[:4])
        raise InputError(f"--resume goes on with the run's own options, and this command gives others: "
                         f"{', '.join(clashes)}; leave them out (only {changeable} may change), or start a new run in "
                         "another --output")
    return dataclasses.replace(config, **{k: v for k, v in saved.items() if k in known and k not in RESUME_MAY_CHANGE})


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
