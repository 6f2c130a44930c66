"""The fine-tuning loop: accelerate for device, mixed precision and gradient accumulation; peft for LoRA."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image

from mgie_core.config import NO_LIMIT, EditSettings
from mgie_core.errors import NonFiniteError
from mgie_core.files import atomic_write
from mgie_core.formats.lora import save_lora
from mgie_core.formats.run import LORA, LOSSES, sample_path
from mgie_core.images import save_image_atomic
from mgie_core.model.mgie import MGIEModel, move
from mgie_core.runner import AsIs, Edit, run_edit

from .adapters import Trainable
from .config import TrainConfig
from .data import center_square
from .objective import Sample, Share, collate, mgie_loss
from .plot import write_loss_plot
from .setup import Run, prepare
from .state import find_checkpoint, load_checkpoint, save_checkpoint

logger = logging.getLogger("mgie.train")


def micro_batch_indices(index: int, batch_size: int, count: int, seed: int) -> list[int]:
    """Sample indices of micro-batch ``index``: consecutive slices of a seeded permutation per epoch."""
    out = []
    for position in range(index * batch_size, (index + 1) * batch_size):
        epoch, offset = divmod(position, count)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.append(int(order[offset]))
    return out


def step_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63))


def sync_rows(trainable: Trainable) -> None:
    """Write the trained [IMG] rows into the model's tables (unused by training) so inference sees them."""
    model, ids = trainable.model, list(trainable.model.spec.visual_token_ids)
    with torch.no_grad():
        model.mllm.llm.embed_tokens.weight[ids] = trainable.rows.embed_tokens.to(model.mllm.dtype)
        model.mllm.lm_head.weight[ids] = trainable.rows.lm_head.to(model.mllm.dtype)


@torch.no_grad()
def sample_edit(trainable: Trainable, example: Sample, config: TrainConfig, path: Path) -> tuple[str, Image.Image]:
    """Edit the first training input with the current weights, by the one edit runner; save input | edit | target
    side by side."""
    model = trainable.model
    sync_rows(trainable)
    size = (config.resolution, config.resolution)
    source = center_square(example.source).resize(size)
    settings = preview_settings(config)
    edit = Edit.of(source, example.instruction, seed=settings.seed)
    sampling = settings.sample_config(model.recommended_sampling)  # the model's guidance, as its edits will have
    with evaluating(model), visiting(model.vae, next(model.unet.parameters()).device):  # VAE off the GPU when cached
        result = run_edit(AsIs(model), edit, settings.derive_config(), sampling)[-1]
    panels = [source, result.images[0], center_square(example.target).resize(size)]
    grid = Image.new("RGB", (3 * size[0], size[1]))
    for i, panel in enumerate(panels):
        grid.paste(panel, (i * size[0], 0))
    save_image_atomic(grid, path)
    return result.expressive_instructions[0], grid


def preview_settings(config: TrainConfig) -> EditSettings:
    """The settings of the sample edits: the run's seed and token budget, ``sample_steps``, and everything else
    resolved as an edit of the trained model resolves it (at the training size, which may exceed the model's)."""
    return EditSettings(seed=config.seed, num_inference_steps=config.sample_steps, max_new_tokens=config.max_new_tokens,
                        max_side=NO_LIMIT)


@contextmanager
def evaluating(model: MGIEModel):
    """Every module in eval mode for the block, and back in its own mode after. Only the modes: the adapters keep
    their gradients (``MGIEModel.eval`` also freezes, which would end the training at the first sample edit)."""
    modules = [m for part in model.modules().values() for m in part.modules()]
    modes = [m.training for m in modules]
    for module in modules:
        module.training = False
    try:
        yield model
    finally:
        for module, mode in zip(modules, modes):
            module.training = mode


@contextmanager
def visiting(module: torch.nn.Module, device: torch.device):
    """``module`` on ``device`` for the block, back where it was after."""
    home = next(module.parameters()).device
    move(module, device)
    try:
        yield module
    finally:
        move(module, home)
        if home != device and device.type == "cuda":
            torch.cuda.empty_cache()


def train_step(run: Run, step: int) -> tuple[float, float]:
    """One optimizer step over ``gradient_accumulation`` micro-batches; returns the mean (L_ins, L_edit) over the
    processes. Each micro-batch is a global batch of ``batch_size`` samples per process, of which this process
    takes its rows (and their random draws); the gradients are averaged over the processes."""
    config, base, accelerator = run.config, run.base, run.accelerator
    processes, rank = accelerator.num_processes, accelerator.process_index
    base.unet.train(), base.mllm.llm.train(), base.edit_head.train()
    ins = edit = 0.0
    for micro in range(config.gradient_accumulation):
        index = step * config.gradient_accumulation + micro
        chosen = micro_batch_indices(index, config.batch_size * processes, len(run.samples), config.seed)
        picked = [run.samples[i] for i in chosen[rank * config.batch_size : (rank + 1) * config.batch_size]]
        batch = collate(picked, base, config.resolution, config.clip_resolution).to(accelerator.device)
        share = Share(rank * config.batch_size, config.batch_size * processes) if processes > 1 else None
        with accelerator.accumulate(run.trainable), accelerator.autocast():
            losses = mgie_loss(base, batch, run.ddpm, step_generator(config.seed, index), config.edit_loss_weight,
                               config.condition_dropout, run.trainable.rows, share=share)
            accelerator.backward(losses.total)
            if accelerator.sync_gradients:
                average_gradients(accelerator, run.params)
                accelerator.clip_grad_norm_(run.params, config.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad()
        ins += losses.instruction.item() / config.gradient_accumulation
        edit += losses.edit.item() / config.gradient_accumulation
    if processes > 1:
        ins, edit = accelerator.reduce(torch.tensor([ins, edit], device=accelerator.device), reduction="mean").tolist()
    return ins, edit


def average_gradients(accelerator: Accelerator, params: list[torch.nn.Parameter]) -> None:
    """Every process's gradients replaced by their mean over the processes (one all-reduce of them all)."""
    grads = [p.grad for p in params if p.grad is not None]
    if accelerator.num_processes == 1 or not grads:
        return
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    for grad, mean in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(mean.view_as(grad))


def train(config: TrainConfig, model: MGIEModel | None = None) -> Path:
    """Fine-tune (``model``: a base already in memory instead of ``config.model``); return the LoRA file's path.

    The run writes, as it goes, one line of losses a step (``losses.jsonl``), ``losses.png`` and a checkpoint at each
    save, a sample edit grid at each sample (``samples/``), and what ``--report-to`` names, so a person (or the Train
    MGIE LoRA node, which runs this in a child process) can watch it."""
    run = prepare(config, model)
    config, output, main = run.config, run.output, run.accelerator.is_main_process
    start = _resume(config, output, run.trainable, run.optimizer, run.scheduler)
    if main:
        clean_up(output, start)  # what a killed run left: half-written checkpoints, losses past the resumed step
    logger.info("training %d steps from step %d at %d px, %d micro-batch(es) of %d x %d process(es) a step: %s "
                "trainable parameters", config.max_steps, start, config.resolution, config.gradient_accumulation,
                config.batch_size, run.accelerator.num_processes, f"{sum(p.numel() for p in run.params):,}")
    if config.report_to != "none":
        run.accelerator.init_trackers("mgie", config=tracker_config(config))
    bar = StepBar(config.max_steps, start, shown=main)
    for step in range(start, config.max_steps):
        ins, edit = train_step(run, step)
        done = step + 1
        if not math.isfinite(ins) or not math.isfinite(edit):  # before its checkpoint: the last one saved is sound
            raise NonFiniteError(f"the training diverged at step {done}: its loss is NaN or infinite (L_ins {ins:.3g}, "
                                 f"L_edit {edit:.3g}); lower --learning-rate (it is {config.learning_rate:g}) and start "
                                 "again, or --resume from an earlier checkpoint")
        bar.update(done, ins, edit)
        run.accelerator.log({"loss_ins": ins, "loss_edit": edit, "loss": ins + config.edit_loss_weight * edit,
                             "learning_rate": run.scheduler.get_last_lr()[0]}, step=done)
        if main:  # one process writes the losses, checkpoints, samples and the LoRA
            _log_losses(output, done, ins, edit)
            if done % config.save_every == 0 or done == config.max_steps:
                save_checkpoint(output, done, run.trainable.trainable_state(), run.optimizer.state_dict(),
                                run.scheduler.state_dict(), config.to_dict())
                write_loss_plot(output)
            if done % config.sample_every == 0 or done == config.max_steps:
                text, grid = sample_edit(run.trainable, run.samples[0], config, sample_path(output, done))
                log_sample(run.accelerator, grid, done)
                logger.info("step %d sample: %s", done, text)
    bar.close()
    path = output / LORA
    if main:
        write_lora(run.trainable, config, path)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return path


def tracker_config(config: TrainConfig) -> dict:
    """The run's options as trackers take them: plain numbers, text and flags (an unset one as "auto")."""
    return {k: v if isinstance(v, (int, float, str, bool)) else "auto" if v is None else str(v)
            for k, v in config.to_dict().items()}


def log_sample(accelerator: Accelerator, grid: Image.Image, step: int) -> None:
    """The sample edit grid to each tracker that takes pictures (TensorBoard's add_images wants the layout named)."""
    for tracker in accelerator.trackers:
        if hasattr(tracker, "log_images"):
            kwargs = {"dataformats": "NHWC"} if tracker.name == "tensorboard" else {}
            tracker.log_images({"sample_edit": np.asarray(grid)[None]}, step=step, **kwargs)  # (1, H, W, 3)


class StepBar:
    """Training's progress: a bar in a terminal; with no terminal (a log file, a pipe, the node's child process) a
    plain line every twentieth of the run, with no cursor control."""

    LINES = 20

    def __init__(self, total: int, start: int, shown: bool = True):
        from tqdm.auto import tqdm

        self.total, self.start, self.began, self.shown = total, start, time.time(), shown
        self.terminal = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=start, desc="[mgie] train", unit="step", file=sys.stderr,
                        disable=not (shown and self.terminal))

    def update(self, done: int, ins: float, edit: float) -> None:
        rate = (done - self.start) / max(time.time() - self.began, 1e-9)
        self.bar.update(1)
        self.bar.set_postfix(loss_ins=f"{ins:.3g}", loss_edit=f"{edit:.3g}", steps_per_s=f"{rate:.2f}")
        every = max(1, self.total // self.LINES)
        if self.shown and not self.terminal and (done % every == 0 or done == self.total):
            print(f"[mgie] train: step {done}/{self.total}, L_ins {ins:.3g}, L_edit {edit:.3g}, {rate:.2f} steps/s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


def write_lora(trainable: Trainable, config: TrainConfig, path: Path) -> Path:
    model = trainable.model
    meta = {"rank": config.lora_rank, "alpha": config.lora_alpha, "base_fingerprint": model.fingerprint(),
            "base_source": model.source, "training_config": config.to_dict(),
            "visual_token_ids": list(model.spec.visual_token_ids)}
    save_lora(path, trainable.export_lora(), meta)
    logger.info("wrote %s", path)
    return path


def _resume(config: TrainConfig, output: Path, trainable: Trainable, optimizer, scheduler) -> int:
    if not config.resume:
        return 0
    path = find_checkpoint(output, config.resume)
    step, state, optimizer_state, scheduler_state = load_checkpoint(path)
    trainable.load_trainable_state(state)
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    logger.info("resumed from %s (step %d)", path, step)
    return step


def clean_up(output: Path, start: int) -> None:
    """Remove the temporary checkpoint folders a killed run left, and keep ``losses.jsonl`` to one record per step
    up to ``start`` (the steps after it are trained again)."""
    folder = output / "checkpoints"
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.is_dir() and re.match(r"^\.step-\d+\.", entry.name):
                shutil.rmtree(entry, ignore_errors=True)
    losses = output / LOSSES
    if not losses.is_file():
        return
    kept: dict[int, str] = {}
    for line in losses.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line
        if step <= start:
            kept[step] = line
    with atomic_write(losses) as handle:
        handle.write("".join(kept[step] + "\n" for step in sorted(kept)).encode())


def _log_losses(output: Path, step: int, ins: float, edit: float) -> None:
    with open(output / LOSSES, "a") as handle:
        handle.write(json.dumps({"step": step, "loss_ins": ins, "loss_edit": edit}) + "\n")
