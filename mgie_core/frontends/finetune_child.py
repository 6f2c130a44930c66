"""Fine-tuning from a front end that must stay responsive (ComfyUI's Train MGIE LoRA node): the terminal's own
``train/finetune.py``, run in a child process and watched through the run's folder (:mod:`mgie_core.formats.run`).

One training loop, whoever starts it: the same options give the same LoRA as the command line, bit for bit. The
child owns all of training's memory and gives every byte back when it ends; a failure in it is one line here and
never takes the caller down. ``watch(step, total, sample)`` sees each step and the newest sample edit; when it raises
(a Cancel), the child is stopped within the step and the run's folder is removed: nothing half-written stays.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from PIL import Image

from ..errors import InputError, MGIEError
from ..formats.run import LORA, latest_sample, read_losses

FINETUNE = Path(__file__).resolve().parents[2] / "train" / "finetune.py"
LOG = "finetune.log"  # the child's output, beside the run (kept when it fails)
POLL = 0.1  # seconds between two looks at the run's folder
Watch = Callable[[int, int, Image.Image | None], None]


class TrainingFailed(MGIEError):
    """The child process stopped with an error (its own one line, or the last line of its log)."""


def finetune_args(options: Mapping[str, object]) -> list[str]:
    """``train/finetune.py``'s command line for ``options`` (field names of its TrainConfig; None: left out)."""
    args = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else flag.replace("--", "--no-", 1))
        elif value is not None:
            args += [flag, str(value)]
    return args


def run_finetune(options: Mapping[str, object], watch: Watch | None = None, env: Mapping[str, str] | None = None) -> Path:
    """Fine-tune with ``options`` (``output`` among them: the run's folder, which must not exist yet) in a child
    process; returns the LoRA's path. ``watch`` may raise to cancel: the child is stopped, the folder removed, and
    the exception goes on."""
    if not FINETUNE.is_file():
        raise InputError(f"fine-tuning needs the repository's train/ folder, not found at {FINETUNE.parent}: use the "
                         "node pack as cloned (git clone ComfyUI-MGIE into custom_nodes)")
    output, total = Path(str(options["output"])), int(options["max_steps"])
    output.mkdir(parents=True, exist_ok=False)
    command = [sys.executable, str(FINETUNE), *finetune_args(options)]
    with open(output / LOG, "wb") as log:
        child = subprocess.Popen(command, cwd=FINETUNE.parents[1], stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})
        try:
            _follow(child, output, total, watch)
        except BaseException:
            _stop(child)
            shutil.rmtree(output, ignore_errors=True)
            raise
    if child.returncode != 0:
        raise TrainingFailed(_failure(output / LOG, child.returncode))
    return output / LORA


def _follow(child: subprocess.Popen, output: Path, total: int, watch: Watch | None) -> None:
    """Until the child ends: each new step, and each new sample edit, to ``watch``."""
    seen_step, seen_sample = -1, None
    while True:
        ended = child.poll() is not None
        step = len(read_losses(output))
        sample = latest_sample(output)
        if watch is not None and (step != seen_step or sample != seen_sample):
            watch(step, total, _open(sample) if sample != seen_sample else None)
            seen_step, seen_sample = step, sample
        if ended:
            return
        time.sleep(POLL)


def _open(path: Path | None) -> Image.Image | None:
    if path is None:
        return None
    with Image.open(path) as image:
        return image.convert("RGB")


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _failure(log: Path, code: int) -> str:
    """The child's own error line (finetune.py says every user error in one line), else the end of its log."""
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    said = next((line.removeprefix("error: ") for line in reversed(lines) if line.startswith("error: ")), None)
    if said is not None:
        return said
    return f"fine-tuning stopped (exit status {code}): {lines[-1] if lines else 'no output'}; its log is {log}"
