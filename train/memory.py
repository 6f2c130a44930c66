"""Memory plans for fine-tuning: which settings fit your card, from the model's shapes.

``--memory`` is the card's size in GB, or auto, as when editing (mgie_core/runtime/memory.py gives the budget).
As editing's ``plan_memory`` (mgie_core/runtime/placement.py), a plan is chosen by estimating what each candidate
needs and taking the first, fastest one that fits: every part resident and no recomputation; then gradient
checkpointing with cached latents; then the LLM in int8 with 8-bit optimizer states; then in 4 bits (CUDA
only). Settings given on the command line win over the plan's. The weights and the trained parameters are
counted exactly from the shapes; the activations are rough per-token and per-pixel margins, not measurements
(bench/gpu-train.sh measures the real peaks).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch import nn

from mgie_core.config import AUTO
from mgie_core.errors import InputError
from mgie_core.model.mgie import MGIEModel
from mgie_core.runtime.memory import TRAIN_WORKSPACE, budget_text, memory_budget, size_text
from mgie_core.runtime.quant import llm_bytes

from .config import FROM_PLAN, TrainConfig

logger = logging.getLogger("mgie.train")


@dataclass(frozen=True)
class Plan:
    name: str
    llm_quant: str
    gradient_checkpointing: bool
    optimizer: str
    cache_latents: bool


PLANS = (
    Plan("fastest", "none", False, "adamw", False),
    Plan("checkpointed", "none", True, "adamw", True),
    Plan("int8", "int8", True, "adamw8bit", True),
    Plan("int4", "int4", True, "adamw8bit", True),
)
TEXT_TOKENS = 128  # system prompt, instruction, expressive instruction and [IMG] tokens of a training sequence
OPTIMIZER_BYTES = {"adamw": 8, "adamw8bit": 2}  # per trained parameter: two fp32 moments, or two 8-bit ones
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
UNET_CONV_TARGETS = ("conv1", "conv2")
LLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Estimate:
    frozen: int  # bytes of the frozen weights on the device
    trained: int  # trained parameters, their gradients and optimizer states
    activations: int  # what the forward pass keeps for the backward one

    @property
    def total(self) -> int:
        return self.frozen + self.trained + self.activations + TRAIN_WORKSPACE


def estimate(model: MGIEModel, config: TrainConfig, plan: Plan, dtype: torch.dtype) -> Estimate:
    """What ``plan`` needs on the device to train ``model`` at ``config``'s size and batch, in base ``dtype``."""
    size = torch.finfo(dtype).bits // 8
    vae = 0 if plan.cache_latents else _count(model.vae)
    frozen = llm_bytes(model.mllm, dtype, plan.llm_quant) + (_count(model.unet) + vae) * size
    trained = trained_parameters(model, config) * (4 + 4 + OPTIMIZER_BYTES[plan.optimizer])
    activations = (_llm_activations(model, config.batch_size, plan.gradient_checkpointing, size)
                   + _unet_activations(model, config.resolution, config.batch_size, plan.gradient_checkpointing, size))
    return Estimate(frozen, trained, activations)


def trained_parameters(model: MGIEModel, config: TrainConfig) -> int:
    """LoRA factors (rank x (inputs + outputs) per adapted layer), the whole edit head and the [IMG] rows."""
    unet_targets = UNET_TARGETS + (UNET_CONV_TARGETS if config.lora_unet_convs else ())
    count = _lora_parameters(model.unet, unet_targets, config.lora_rank)
    if config.lora_llm:
        count += _lora_parameters(model.mllm.llm, LLM_TARGETS, config.lora_rank)
    rows = 2 * model.spec.num_visual_tokens * model.mllm.llm.config.hidden_size
    return count + _count(model.edit_head) + rows


def _lora_parameters(root: nn.Module, targets: tuple[str, ...], rank: int) -> int:
    count = 0
    for name, module in root.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets) and hasattr(module, "weight"):
            outputs, inputs = module.weight.shape[:2]
            kernel = module.weight[0, 0].numel()  # 1 for a linear layer, k x k for a convolution
            count += rank * (inputs * kernel + outputs)
    return count


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _llm_activations(model: MGIEModel, batch: int, checkpointing: bool, size: int) -> int:
    """A LLaMA layer with frozen weights keeps about 9 x hidden + 3 x intermediate values a token for the backward
    pass (norm inputs, q, k, v and the attention output, the MLP's gate, up and activation); checkpointing keeps
    each layer's input and recomputes one layer at a time. The logits go through an fp32 cross-entropy."""
    cfg, vision = model.mllm.llm.config, model.mllm.vision_tower.config
    tokens = batch * ((vision.image_size // vision.patch_size) ** 2 + TEXT_TOKENS)
    layer = tokens * (9 * cfg.hidden_size + 3 * cfg.intermediate_size) * size
    kept = cfg.num_hidden_layers * tokens * cfg.hidden_size * size + layer if checkpointing else cfg.num_hidden_layers * layer
    return kept + tokens * cfg.vocab_size * (size + 8)


def _unet_activations(model: MGIEModel, resolution: int, batch: int, checkpointing: bool, size: int) -> int:
    """About 8 values a channel and pixel for a ResNet block and 30 for a transformer block (norms, q, k, v, the
    attention output, the GEGLU feed-forward); checkpointing keeps each block's input and recomputes the largest."""
    cfg = model.unet.config
    side = resolution // model.vae_scale_factor
    blocks = []  # (values a sample keeps, its input's values)
    for level, channels in enumerate(cfg.block_out_channels):
        pixels = (side >> level) ** 2
        attention = "CrossAttn" in cfg.down_block_types[level]
        count = 2 * cfg.layers_per_block + 1  # down and up ResNets (the up path has one more)
        blocks += [(8 * channels * pixels, channels * pixels)] * count
        if attention:
            blocks += [(30 * channels * pixels, channels * pixels)] * count
    deepest = cfg.block_out_channels[-1] * (side >> (len(cfg.block_out_channels) - 1)) ** 2
    blocks += [(8 * deepest, deepest)] * 2 + [(30 * deepest, deepest)]  # the middle block
    if checkpointing:
        values = sum(inputs for _, inputs in blocks) + max(kept for kept, _ in blocks)
    else:
        values = sum(kept for kept, _ in blocks)
    return batch * values * size


def choose_plan(model: MGIEModel, config: TrainConfig, device: torch.device, dtype: torch.dtype
                ) -> tuple[Plan, Estimate, int | None]:
    """The first plan (fastest first) whose estimate fits the budget, with the settings given on the command line
    in place of the plan's; 4 bits only on CUDA. (plan, its estimate, the budget: None when unlimited)."""
    limit = memory_budget(None if config.memory == AUTO else int(config.memory), device)
    candidates = [_with_given(plan, config) for plan in PLANS if plan.llm_quant != "int4" or device.type == "cuda"]
    for plan in candidates:
        guess = estimate(model, config, plan, dtype)
        if limit is None or guess.total <= limit:
            return plan, guess, limit
    return plan, guess, limit  # the leanest: nothing fits, the caller warns


def _with_given(plan: Plan, config: TrainConfig) -> Plan:
    return dataclasses.replace(plan, **given_settings(config))


def given_settings(config: TrainConfig) -> dict[str, object]:
    """The plan's settings the command line gave (the others are the plan's to choose)."""
    given = {name: getattr(config, name) for name in FROM_PLAN if name != "mixed_precision"}
    return {k: v for k, v in given.items() if v is not None and v != AUTO}


def plan_mixed_precision(config: TrainConfig, device: torch.device) -> str:
    """The base's precision: as given; else bf16 on a GPU that has it, fp16 on one that does not, fp32 on a CPU."""
    if config.mixed_precision is not None:
        return config.mixed_precision
    if device.type != "cuda":
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def apply_plan(model: MGIEModel, config: TrainConfig, device: torch.device, dtype: torch.dtype) -> TrainConfig:
    """``config`` with the memory plan's settings where none was given; logs the plan and its estimate."""
    plan, guess, limit = choose_plan(model, config, device, dtype)
    card = budget_text(None if config.memory == AUTO else int(config.memory), limit)
    given = [_flag(n) for n in given_settings(config)]
    name = "as given" if len(given) == len(FROM_PLAN) - 1 else f"'{plan.name}'" + (
        f" (given: {', '.join(given)})" if given else "")
    logger.info("memory plan %s for %s: LLM %s, gradient checkpointing %s, optimizer %s, cached latents %s",
                name, card, plan.llm_quant,
                "on" if plan.gradient_checkpointing else "off", plan.optimizer, "on" if plan.cache_latents else "off")
    logger.info("estimated device memory: %s (frozen weights %s, trained parameters with gradients and optimizer "
                "states %s, activations %s, working memory %s)", size_text(guess.total), size_text(guess.frozen),
                size_text(guess.trained), size_text(guess.activations), size_text(TRAIN_WORKSPACE))
    if limit is not None and guess.total > limit:  # it would run out of memory after minutes of loading: say it now
        raise InputError(f"no memory plan fits {card} by its estimate: the leanest needs {size_text(guess.total)}; "
                         "lower --resolution or --batch-size, or give the size of a larger card (--memory)")
    return dataclasses.replace(config, llm_quant=plan.llm_quant, gradient_checkpointing=plan.gradient_checkpointing,
                               optimizer=plan.optimizer, cache_latents=plan.cache_latents)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
