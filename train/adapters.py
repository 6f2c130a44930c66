"""What fine-tuning trains: peft LoRA on the UNet and the LLM's attention, the edit head, the [IMG] rows.

The base weights stay frozen (the LLM's possibly quantized: train/quantized.py). ``export_lora`` writes the
adapters in the layout mgie_core.formats.lora reads.
"""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from torch import nn

from mgie_core.errors import InputError
from mgie_core.model.mgie import MGIEModel

from .config import TrainConfig
from .objective import VisualRows

UNET_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
UNET_CONVS = ["conv1", "conv2"]
LLM_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


class Trainable(nn.Module):
    """The trained parts in one module (for the optimizer, accelerate and checkpoints)."""

    def __init__(self, model: MGIEModel, config: TrainConfig):
        super().__init__()
        for module in model.modules().values():
            module.requires_grad_(False)
        unet_targets = UNET_ATTENTION + (UNET_CONVS if config.lora_unet_convs else [])
        self.unet_lora = _lora(config, unet_targets)
        inject_adapter_in_model(self.unet_lora, model.unet)
        self.llm_lora = _lora(config, LLM_ATTENTION) if config.lora_llm else None
        if self.llm_lora is not None:
            with warnings.catch_warnings():
                # on a quantized LLM, peft's torchao LoRA layers warn that they cannot merge() in place: training
                # never does (the LoRA file is merged into the unquantized weights when a model loads it)
                warnings.filterwarnings("ignore", message=".*without `get_apply_tensor_subclass`")
                inject_adapter_in_model(self.llm_lora, model.mllm.llm)
        model.edit_head.float().requires_grad_(True)  # the whole edit head, its [IMG] embeddings ``emb`` included
        self.edit_head = model.edit_head
        self.rows = VisualRows(model)
        self._model = [model]  # not a submodule: the frozen base must not enter state_dict()
        _lora_to_fp32(model)

    @property
    def model(self) -> MGIEModel:
        return self._model[0]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every trained tensor by name (adapters, edit head, rows): what a checkpoint holds."""
        state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(self.model.unet).items()}
        if self.llm_lora is not None:
            state.update({f"mllm.llm.{k}": v for k, v in get_peft_model_state_dict(self.model.mllm.llm).items()})
        state.update({f"edit_head.{k}": v for k, v in self.edit_head.state_dict().items()})
        state["visual_rows.embed_tokens"] = self.rows.embed_tokens
        state["visual_rows.lm_head"] = self.rows.lm_head
        return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = self.named_trainables()
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            example = (missing or unexpected)[0]
            raise InputError(f"the checkpoint does not match this run's adapters ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected, e.g. {example}): resume with the same --lora-rank, "
                             "--lora-unet-convs and --lora-llm as the run that wrote it")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name].to(param.device, param.dtype))

    def named_trainables(self) -> dict[str, nn.Parameter]:
        """Trained parameters under the names of ``trainable_state``."""
        out = {}
        for prefix, root in (("unet.", self.model.unet), ("mllm.llm.", self.model.mllm.llm)):
            for name, param in root.named_parameters():
                if "lora_" in name:
                    out[prefix + name.replace(".default", "")] = param
        out.update({f"edit_head.{k}": p for k, p in self.edit_head.named_parameters()})
        out["visual_rows.embed_tokens"], out["visual_rows.lm_head"] = self.rows.embed_tokens, self.rows.lm_head
        return out

    def export_lora(self) -> dict[str, torch.Tensor]:
        """The LoRA file's tensors (what a checkpoint holds, in the layout mgie_core.formats.lora reads)."""
        return self.trainable_state()


def _lora(config: TrainConfig, targets: list[str]) -> LoraConfig:
    # init_lora_weights=True: A Kaiming-uniform, B zeros, so a fresh adapter changes nothing.
    return LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=targets, lora_dropout=0.0,
                      init_lora_weights=True, bias="none")


def _lora_to_fp32(model: MGIEModel) -> None:
    """Adapters train in fp32 even when the frozen base is half precision."""
    for root in (model.unet, model.mllm.llm):
        for name, module in root.named_modules():
            if name.endswith(("lora_A.default", "lora_B.default")):
                module.float()
