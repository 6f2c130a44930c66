"""Training checkpoints that ``--resume`` continues from exactly, all in safetensors + JSON.

``OUTPUT/checkpoints/step-000100/``: ``trainable.safetensors`` (adapters, edit head, [IMG] rows),
``optimizer.safetensors`` (AdamW moments, 8-bit ones as their codes, block scales and code table; param
groups and the LR scheduler in its header) and ``config.json``. Each checkpoint is written to a temporary
folder and renamed into place.
Randomness needs no saved state: every micro-batch draws from a generator seeded by its index.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from mgie_core.errors import InputError
from mgie_core.formats.aligned import save_aligned
from mgie_core.formats.weights import read_state_dict


def checkpoint_dir(output: Path, step: int) -> Path:
    return output / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(output: Path, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict,
                    scheduler_state: dict, config: dict[str, Any]) -> Path:
    final = checkpoint_dir(output, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        save_aligned(trainable, tmp / "trainable.safetensors", {"step": str(step)})
        tensors, meta = _flatten_optimizer(optimizer_state)
        meta.update({"step": str(step), "scheduler": json.dumps(scheduler_state, default=_encode_tensor)})
        save_aligned(tensors, tmp / "optimizer.safetensors", meta)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors, scalars, eight_bit = {}, {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if _is_8bit(value):  # torchao's 8-bit moment: its codes, block scales and code table
                for part in EIGHT_BIT_PARTS:
                    tensors[f"state.{index}.{key}.{part}"] = getattr(value, part).detach().cpu().contiguous()
                eight_bit[f"{index}.{key}"] = value.signed
            elif isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": json.dumps(state["param_groups"], default=_encode_tensor),
                     "scalars": json.dumps(scalars), "eight_bit": json.dumps(eight_bit)}


EIGHT_BIT_PARTS = ("codes", "scale", "qmap")


def _is_8bit(value: Any) -> bool:
    return type(value).__name__ == "OptimState8bit" and all(hasattr(value, p) for p in EIGHT_BIT_PARTS)


def _encode_tensor(value: Any) -> dict:
    """A one-value tensor in the JSON header (torchao's optimizers keep the learning rate as one)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return {"tensor": value.item()}
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint header")


def _decode_tensor(obj: dict) -> Any:
    return torch.tensor(obj["tensor"], dtype=torch.float32) if set(obj) == {"tensor"} else obj


def find_checkpoint(output: Path, resume: str) -> Path:
    """``resume`` is a checkpoint folder or ``latest`` (the newest under OUTPUT/checkpoints)."""
    if resume == "latest":
        found = sorted((output / "checkpoints").glob("step-*"))
        if not found:
            raise InputError(f"--resume latest: no checkpoint in {output / 'checkpoints'}")
        return found[-1]
    path = Path(resume)
    if not (path / "trainable.safetensors").is_file():
        raise InputError(f"--resume {path}: not a checkpoint folder (no trainable.safetensors)")
    return path


def load_checkpoint(path: Path) -> tuple[int, dict[str, torch.Tensor], dict, dict]:
    """(step, trainable tensors, optimizer state dict, scheduler state dict)."""
    trainable = read_state_dict(path / "trainable.safetensors")
    with safe_open(str(path / "optimizer.safetensors"), framework="pt") as handle:
        meta = dict(handle.metadata())
    flat = read_state_dict(path / "optimizer.safetensors") if _has_tensors(path) else {}
    eight_bit = json.loads(meta.get("eight_bit", "{}"))
    parts = {f"state.{key}.{part}" for key in eight_bit for part in EIGHT_BIT_PARTS}
    state: dict[int, dict] = {}
    for key, value in flat.items():
        if key not in parts:
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, signed in eight_bit.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = _eight_bit(*(flat[f"state.{key}.{p}"] for p in EIGHT_BIT_PARTS), signed)
    for key, value in json.loads(meta["scalars"]).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer = {"state": state, "param_groups": json.loads(meta["param_groups"], object_hook=_decode_tensor)}
    return int(meta["step"]), trainable, optimizer, json.loads(meta["scheduler"], object_hook=_decode_tensor)


def _eight_bit(codes: torch.Tensor, scale: torch.Tensor, qmap: torch.Tensor, signed: bool) -> torch.Tensor:
    from torchao.optim.subclass_8bit import OptimState8bit

    return OptimState8bit(codes, scale, qmap, signed)


def _has_tensors(path: Path) -> bool:
    with safe_open(str(path / "optimizer.safetensors"), framework="pt") as handle:
        return any(not k.startswith("__pad__") for k in handle.keys())
