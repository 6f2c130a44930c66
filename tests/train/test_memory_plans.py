"""The pieces under low-memory fine-tuning: the frozen quantized linear layer, the 8-bit optimizer, memory plans."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from mgie_core.runtime.memory import memory_budget
from mgie_core.runtime.quant import quantize_llm
from train.config import TrainConfig, config_from_args, parser
from train.memory import PLANS, apply_plan, choose_plan, estimate
from train.quantized import FrozenQuantizedLinear, freeze_quantized, make_optimizer


class Decoder(nn.Module):
    """The layout quantize_llm walks: ``layers``, each with linear layers."""

    def __init__(self, width: int = 256):
        super().__init__()
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width))])

    def forward(self, x):
        return self.layers[0](x)


def test_frozen_quantized_linear_keeps_no_dequantized_weight_for_the_backward_pass():
    """torchao's own linear would keep a full-precision copy of each weight until the backward pass."""
    torch.manual_seed(0)
    llm = freeze_quantized(quantize_llm(Decoder(), "int8", torch.device("cpu")))
    assert all(type(m) is FrozenQuantizedLinear for m in llm.layers[0] if isinstance(m, nn.Linear))
    x = torch.randn(4, 256, requires_grad=True)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        y = llm(x)
    assert not [t for t in kept if t.numel() >= 256 * 512]  # activations only, no (512, 256) weight
    y.pow(2).sum().backward()
    reference = x.detach().clone().requires_grad_(True)  # the same layers with the dequantized weights
    first, second = (m for m in llm.layers[0] if isinstance(m, nn.Linear))
    hidden = nn.functional.silu(nn.functional.linear(reference, first.weight.dequantize(), first.bias))
    nn.functional.linear(hidden, second.weight.dequantize(), second.bias).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad, rtol=1e-4, atol=1e-5)


def test_8bit_adamw_runs_on_the_cpu_keeps_8bit_moments_and_follows_adamw():
    torch.manual_seed(0)
    start = torch.randn(64, 64)
    params = {name: nn.Parameter(start.clone()) for name in ("adamw", "adamw8bit")}
    optimizers = {name: make_optimizer(name, [p], 1e-2, 0.0, torch.device("cpu")) for name, p in params.items()}
    for _ in range(5):
        grad = torch.randn(64, 64)
        for name, p in params.items():
            p.grad = grad.clone()
            optimizers[name].step()
    moments = optimizers["adamw8bit"].state[params["adamw8bit"]]["exp_avg"]
    assert moments.codes.dtype == torch.uint8 and moments.codes.shape == (64, 64)
    moved = (params["adamw"] - start).norm()
    assert moved > 0.1 and (params["adamw8bit"] - params["adamw"]).norm() < 0.05 * moved


@pytest.fixture(scope="module")
def seven_b():
    """MGIE-7B's shapes on the meta device: no memory, no time, every numel of the real model."""
    from bench.random_model import PRESETS, build_random_model

    return build_random_model(PRESETS["full"], torch.device("meta"), torch.float16)


def plan(model, memory: str, **given):
    config = TrainConfig(data="d", output="o", resolution=256, clip_resolution=512, gradient_accumulation=4,
                         memory=memory, **given)
    return choose_plan(model, config, torch.device("cuda"), torch.bfloat16)


def test_the_smaller_the_card_the_leaner_the_plan_for_mgie_7b(seven_b):
    chosen = {memory: plan(seven_b, memory) for memory in ("24", "16", "12", "8")}
    order = [p.name for p in PLANS]
    ranks = [order.index(chosen[m][0].name) for m in ("24", "16", "12", "8")]
    assert ranks == sorted(ranks) and ranks[0] < ranks[-1]
    assert chosen["24"][0].llm_quant == "none" and chosen["8"][0].llm_quant == "int4"
    for memory, (picked, guess, limit) in chosen.items():
        assert limit == int(int(memory) * 2**30 * 0.9)
        if picked.name != order[-1]:
            assert guess.total <= limit
    fp16 = estimate(seven_b, TrainConfig(data="d", output="o", resolution=256), PLANS[0], torch.float16)
    assert 13.5 * 2**30 < fp16.frozen < 16.5 * 2**30  # LLaMA-7B + CLIP-L + SD1.5's UNet and VAE in 16 bits


def test_given_settings_win_and_4_bits_are_left_out_off_cuda(seven_b, caplog):
    assert plan(seven_b, "8", llm_quant="int8")[0].llm_quant == "int8"
    assert plan(seven_b, "24", gradient_checkpointing=True)[0].gradient_checkpointing
    config = TrainConfig(data="d", output="o", resolution=256, memory="8")
    picked, _, _ = choose_plan(seven_b, config, torch.device("cpu"), torch.float32)
    assert picked.llm_quant == "int8"
    assert memory_budget(None, torch.device("cpu")) is None
    with caplog.at_level(logging.INFO, logger="mgie.train"):
        resolved = apply_plan(seven_b, TrainConfig(data="d", output="o", resolution=256), torch.device("cpu"),
                              torch.float32)
    assert (resolved.llm_quant, resolved.gradient_checkpointing, resolved.optimizer, resolved.cache_latents) == \
           ("none", False, "adamw", False)  # a CPU has no card to fit: the fastest settings
    assert "memory plan 'fastest' for no memory limit (a CPU)" in caplog.text and "estimated" in caplog.text


def test_the_memory_flags_and_their_help():
    help_text = " ".join(parser().format_help().split())
    for flag in ("--llm-quant", "--gradient-checkpointing", "--optimizer", "--cache-latents", "--memory"):
        assert flag in help_text
    assert "int4 (CUDA only)" in help_text and "8 bits" in help_text
    config = config_from_args(["--data", "d", "--output", "o", "--memory", "12", "--optimizer", "adamw8bit",
                               "--no-gradient-checkpointing"])
    assert (config.memory, config.optimizer, config.gradient_checkpointing, config.llm_quant) == \
           ("12", "adamw8bit", False, "auto")
    assert TrainConfig(data="d", output="o", memory="10").memory == "10"  # any card: the same words as editing
    assert TrainConfig(data="d", output="o", memory=12).memory == "12"  # as a JSON config holds it
    with pytest.raises(Exception, match="--memory must be auto or your GPU's memory in GB, a whole number"):
        TrainConfig(data="d", output="o", memory="ten")


def test_the_gpu_benchmark_judges_each_plan_against_its_goal():
    from bench.train_memory import goals

    row = lambda gib, seconds: {"peak": {"reserved": gib * 2**30}, "seconds": [9.0, *seconds]}  # noqa: E731
    text = goals({"--memory 24": row(20, [1.0, 1.0]), "--memory 12": row(10.5, [1.5, 1.7]),
                  "--memory 8": row(7.9, [2.5, 2.5])})
    assert text.splitlines() == [
        "- --memory 12: peak reserved 10.50 GiB, goal <= 11.0 GiB: met; a step 1.60x the --memory 24 plan's, "
        "goal <= 2x: met",
        "- --memory 8: peak reserved 7.90 GiB, goal <= 7.5 GiB: missed; a step 2.50x the --memory 24 plan's, "
        "goal <= 2x: missed"]
