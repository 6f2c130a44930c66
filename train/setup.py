"""Setting a fine-tuning run up: the data, the base model placed (and quantized) by the memory plan, the adapters,
the optimizer and its schedule."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import ProjectConfiguration
from diffusers import DDPMScheduler

from mgie_core import EditSettings, derive, load_model
from mgie_core.config import AUTO
from mgie_core.errors import InputError
from mgie_core.files import atomic_write, check_writable
from mgie_core.formats.loader import check_model
from mgie_core.formats.pairs import Triplet, read_triplets
from mgie_core.images import load_image
from mgie_core.model.mgie import MGIEModel, move
from mgie_core.runtime.devices import DTYPES
from mgie_core.runtime.placement import Placement, prepare_weights
from mgie_core.runtime.quant import check_llm_quant

from .adapters import Trainable
from .config import TrainConfig, resumed
from .data import diffusion_pixels
from .memory import apply_plan, plan_mixed_precision
from .objective import Sample, encode_latents
from .quantized import freeze_quantized, make_optimizer
from .state import find_checkpoint

logger = logging.getLogger("mgie.train")


@dataclass
class Run:
    """A training run's parts, once set up."""

    config: TrainConfig  # with the model's sizes and the memory plan's settings filled in
    output: Path
    accelerator: Accelerator
    base: MGIEModel
    samples: list[Sample]
    trainable: Trainable
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ddpm: DDPMScheduler


def base_dtype(mixed_precision: str) -> torch.dtype:
    """The frozen base's dtype: accelerate's mixed precision ("no", "fp16", "bf16") named in the core's table."""
    return DTYPES["fp32" if mixed_precision == "no" else mixed_precision]


def prepare(config: TrainConfig, model: MGIEModel | None = None) -> Run:
    """Read the data, load the base model (its sizes and shapes fill the config's unset settings), place it,
    add the adapters. ``model``: a base already in memory instead of ``config.model`` (the benchmarks' random
    models)."""
    config = resumed(config) if config.resume else config  # a resumed run goes on with its own options
    output = Path(config.output)
    check_writable(output, "--output", folder=True)  # everything is checked before any model loads
    report = read_triplets(config.data, strict=config.strict)
    device = PartialState(cpu=config.device == "cpu").device  # the one Accelerator below uses
    check_device_options(config, device)
    if config.resume:
        find_checkpoint(output, config.resume)
    if model is None:
        check_model(config.model)
    base = model if model is not None else load_model(config.model)
    base.fingerprint()  # of the weights as loaded, before quantization and adapters change them
    config = dataclasses.replace(config.for_model(base), mixed_precision=plan_mixed_precision(config, device))
    config = apply_plan(base, config, device, base_dtype(config.mixed_precision))
    # Under accelerate launch every process takes its share of each global batch (split_batches: the schedule
    # steps once per optimizer step, whatever the number of processes).
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.device == "cpu",
                              gradient_accumulation_steps=config.gradient_accumulation,
                              dataloader_config=DataLoaderConfiguration(split_batches=True),
                              log_with=None if config.report_to == "none" else config.report_to,
                              project_config=ProjectConfiguration(project_dir=str(output),
                                                                  logging_dir=str(output / "logs")))
    if accelerator.is_main_process:
        with atomic_write(output / "config.json") as handle:
            handle.write(json.dumps(config.to_dict(), indent=2).encode())
    base = place_base(base, config, accelerator.device)
    with accelerator.main_process_first():  # the main process derives what is missing; the others read its cache
        expressive = derive_missing_expressive(base, report.triplets, output / "expressive_cache.json",
                                               config.max_new_tokens)
    samples = [Sample(load_image(t.input), load_image(t.target), t.instruction, e)
               for t, e in zip(report.triplets, expressive)]
    if config.cache_latents:
        samples = cache_latents(samples, base, config.resolution)
    torch.manual_seed(config.seed)  # the adapters' initial A matrices
    trainable = Trainable(base, config).to(accelerator.device)
    if config.gradient_checkpointing:
        _checkpoint_activations(base.mllm.llm)
        base.unet.enable_gradient_checkpointing()
    params = list(trainable.named_trainables().values())
    optimizer = make_optimizer(config.optimizer, params, config.learning_rate, config.weight_decay, accelerator.device)
    warmup = max(1, config.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    return Run(config, output, accelerator, base, samples, trainable, params, optimizer, scheduler,
               DDPMScheduler.from_config(base.scheduler_config))


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def check_device_options(config: TrainConfig, device: torch.device) -> None:
    """What this machine cannot run, refused before gigabytes load: a tracker whose package is missing, a 4-bit LLM
    off CUDA, fp16 on a CPU."""
    import accelerate.utils as available

    name = config.report_to  # "all": the trackers accelerate finds installed
    if name in TRACKER_PACKAGES and not getattr(available, f"is_{name}_available")():
        raise InputError(f"--report-to {name} needs the {TRACKER_PACKAGES[name]} package, which is not installed: "
                         f"pip install {TRACKER_PACKAGES[name]} (or leave --report-to out: losses.jsonl and losses.png "
                         "are written anyway)")
    if config.llm_quant != AUTO:
        check_llm_quant(config.llm_quant, device)
    if config.mixed_precision == "fp16" and device.type == "cpu":
        raise InputError("--mixed-precision fp16 needs a GPU; use bf16 or no on the CPU")


def place_base(base: MGIEModel, config: TrainConfig, device: torch.device) -> MGIEModel:
    """The frozen base on ``device`` in the run's precision, every part resident, its weights prepared as editing
    prepares them (:func:`mgie_core.runtime.placement.prepare_weights`: the LLM quantized layer by layer from the CPU
    when the plan says so, so the full-precision LLM is never whole on the GPU)."""
    placement = Placement(device, base_dtype(config.mixed_precision), config.llm_quant)
    base = prepare_weights(base, placement)
    freeze_quantized(base.mllm.llm)
    return base.to(device).eval()


def cache_latents(samples: list[Sample], model: MGIEModel, resolution: int) -> list[Sample]:
    """Every sample with its VAE latents (kept on the CPU), encoded once where the VAE is; the VAE then leaves the
    GPU for good (sample edits borrow it back for their decoding)."""
    cached = []
    for s in samples:
        latents = encode_latents(model.vae, diffusion_pixels(s.source, resolution)[None],
                                 diffusion_pixels(s.target, resolution)[None])  # (1, C, h, w) each
        cached.append(dataclasses.replace(s, latents=latents.to(torch.device("cpu"))))
    if next(model.vae.parameters()).device.type == "cuda":
        move(model.vae, "cpu")
        torch.cuda.empty_cache()
    logger.info("cached the VAE latents of %d samples at %d px", len(cached), resolution)
    return cached


def derive_missing_expressive(model: MGIEModel, triplets: list[Triplet], cache_path: Path,
                              max_new_tokens: int) -> list[str]:
    """Expressive instructions: given ones, else derived once by the current model and cached."""
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    missing = [t for t in triplets if not t.expressive and f"{t.input}|{t.instruction}" not in cache]
    if missing:
        logger.info("deriving the expressive instruction of %d samples with the base model (cached in %s)",
                    len(missing), cache_path)
        for t in missing:
            d = derive(model, [load_image(t.input)], [t.instruction], EditSettings(max_new_tokens=max_new_tokens).derive_config())
            cache[f"{t.input}|{t.instruction}"] = d.expressive_instructions[0]
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_text(json.dumps(cache, indent=1))
    return [t.expressive or cache[f"{t.input}|{t.instruction}"] for t in triplets]


def _checkpoint_activations(llm: torch.nn.Module) -> None:
    # non-reentrant, so adapters get gradients though the frozen embeddings need none (transformers 4.x and 5.x names)
    if hasattr(llm, "activation_checkpointing_enable"):
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
