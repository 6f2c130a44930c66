"""Where MGIE's parts live during an edit, decided once: device, precision, LLM quantization, staged or resident,
compiled.

:class:`Placement` is that decision, checked when it is made (a 4-bit LLM needs CUDA; compiled graphs need every
part resident). It is resolved from :class:`mgie_core.config.PlacementSettings` (the CLI's ``--memory``, Load MGIE's
*memory*, ``memory=`` in Python: the card's size in GB, or auto) by :func:`plan_memory`, from the model's shapes.

:data:`STAGES` is the one table of which parts each stage needs; the parts in :data:`RESIDENT` stay on the device
at every stage. Staged, only the stage at work has its parts on the device. :func:`prepare_weights` is the one order
in which weights are made ready: cast, the LLM quantized, then LoRAs. :class:`PlacedModel` carries a placement out
for the Python API and the CLI; in ComfyUI the node pack hands the same parts, stage by stage, to ComfyUI's model
management; fine-tuning prepares its frozen base with the same routine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..config import AUTO, PlacementSettings
from ..errors import InputError
from ..model.mgie import MGIEModel, move
from .compiled import compile_unet
from .devices import empty_cache, resolve_device, resolve_dtype
from .memory import DERIVE_WORKSPACE, SAMPLE_WORKSPACE, budget_text, memory_budget, size_text
from .quant import check_llm_quant, llm_bytes, quantize_llm

logger = logging.getLogger(__name__)

STAGES = {"derive": ("mllm",), "imagine": ("edit_head",), "sample": ("unet", "vae")}
RESIDENT = ("edit_head",)  # small: on the device at every stage, staged or not
# The placements a plan chooses from, fastest first: name -> (LLM quantization, staged).
CANDIDATES = {"resident": ("none", False), "staged": ("none", True), "int8": ("int8", True), "int4": ("int4", True)}
QUANT_NAMES = {"none": "unquantized", "int8": "int8", "int4": "4-bit"}


@dataclass(frozen=True)
class Placement:
    """Where the parts live: checked once, here. ``staged`` moves the LLM and the UNet in turn (small GPUs)."""

    device: torch.device
    dtype: torch.dtype
    llm_quant: str = "none"
    staged: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        check_llm_quant(self.llm_quant, self.device)
        if self.compile and self.staged:
            raise InputError("compile does not go with a staged placement: compiled graphs keep the parts where they "
                             "were compiled, staging moves them at every edit; choose compile on a card that holds "
                             "MGIE whole, or turn compile off")

    @classmethod
    def make(cls, settings: PlacementSettings | None = None, device: str | torch.device | None = None,
             fp16_ok: bool = True) -> Placement | PendingPlacement:
        """The placement ``settings`` ask for (on ``device``, where the caller has its own: ComfyUI's). What the
        memory plan decides waits for the model's shapes (:meth:`PendingPlacement.resolve`); everything that can be
        checked is checked now."""
        settings = settings or PlacementSettings()
        device = resolve_device(settings.device if device is None else device)
        pending = PendingPlacement(device, resolve_dtype(settings.dtype, device, fp16_ok), settings.memory_gb,
                                   settings.llm_quant, settings.staged, settings.compile)
        return pending.fixed() or pending

    def describe(self) -> str:
        where = "all parts resident"
        if self.staged:
            where = "staged" if self.device.type != "cpu" else "staged (nothing to move on a CPU)"
        return (f"{self.device.type} {str(self.dtype).removeprefix('torch.')}, {QUANT_NAMES[self.llm_quant]} LLM, "
                f"{where}{', compiled' if self.compile else ''}")


@dataclass(frozen=True)
class PendingPlacement:
    """A placement whose LLM quantization or staging the memory plan decides, once the model's shapes are known."""

    device: torch.device
    dtype: torch.dtype
    memory_gb: int | None = None  # None: auto, this device's memory
    llm_quant: str = AUTO
    staged: str = AUTO  # auto, on or off
    compile: bool = False

    def __post_init__(self) -> None:
        if self.llm_quant != AUTO:
            check_llm_quant(self.llm_quant, self.device)
        if self.compile and self.staged == "on":
            Placement(self.device, self.dtype, "none", True, True)  # refused there, in one sentence

    def fixed(self) -> Placement | None:
        """The placement when nothing is left to plan: both overrides given, or no limit to plan for (a CPU, auto)."""
        quant, staged = self.llm_quant, self.staged
        if (quant == AUTO or staged == AUTO) and memory_budget(self.memory_gb, self.device) is not None:
            return None
        return Placement(self.device, self.dtype, "none" if quant == AUTO else quant, staged == "on", self.compile)

    def resolve(self, model: MGIEModel, total: int | None = None) -> Placement:
        """The fastest placement whose estimate fits the budget (``total``: the device's memory when the caller
        knows it, as ComfyUI does); logs the plan."""
        fixed = self.fixed()
        if fixed is not None:
            return fixed
        budget = memory_budget(self.memory_gb, self.device, total)
        quant, staged, need = plan_memory(model, self.dtype, budget, self.device, self.llm_quant, self.staged,
                                          self.compile)
        card = budget_text(self.memory_gb, budget)
        if budget is not None and need > budget:
            if self.compile:
                raise InputError(f"compile needs every part on the GPU, but MGIE needs about {size_text(need)} that way, "
                                 f"more than {card} holds: turn compile off (staging then fits it), or use a larger card")
            logger.warning("no placement fits %s by its estimate (%s needed): it may run out of memory", card, size_text(need))
        placement = Placement(self.device, self.dtype, quant, staged, self.compile)
        name = next((n for n, c in CANDIDATES.items() if c == (quant, staged)), "as given")
        logger.info("memory plan '%s' for %s: %s (estimated %s)", name, card, placement.describe(), size_text(need))
        return placement


def resolve_placement(placement: Placement | PendingPlacement, model: MGIEModel, total: int | None = None) -> Placement:
    return placement.resolve(model, total) if isinstance(placement, PendingPlacement) else placement


def plan_memory(model: MGIEModel, dtype: torch.dtype, budget: int | None, device: torch.device,
                llm_quant: str = AUTO, staged: str = AUTO, compile: bool = False) -> tuple[str, bool, int]:
    """(llm_quant, staged, estimated bytes): the first of :data:`CANDIDATES` that this device runs, that the
    overrides allow, and whose estimate fits ``budget`` (None: no limit); the leanest allowed when none fits."""
    allowed = [(q, s) for q, s in CANDIDATES.values()
               if (llm_quant in (AUTO, q)) and (staged == AUTO or s == (staged == "on")) and not (compile and s)
               and (q != "int4" or device.type == "cuda")]
    if not allowed:  # an override outside the list (a quantized LLM kept resident): as given
        allowed = [("none" if llm_quant == AUTO else llm_quant, staged == "on")]
    estimates = [(q, s, edit_bytes(model, dtype, q, s)) for q, s in allowed]
    return next((e for e in estimates if budget is None or e[2] <= budget), estimates[-1])


def edit_bytes(model: MGIEModel, dtype: torch.dtype, llm_quant: str, staged: bool) -> int:
    """What an edit needs on the device, estimated from the shapes: the weights on it at the busiest stage, and
    that stage's working memory."""
    rest = sum(p.numel() for name in ("edit_head", "unet", "vae")
               for p in model.modules()[name].parameters()) * (torch.finfo(dtype).bits // 8)
    llm = llm_bytes(model.mllm, dtype, llm_quant)
    if not staged:
        return llm + rest + SAMPLE_WORKSPACE
    return max(llm + DERIVE_WORKSPACE, rest + SAMPLE_WORKSPACE)


def prepare_weights(model: MGIEModel, placement: Placement, loras: Sequence[tuple[object, float]] = (),
                    home: torch.device | str | None = None) -> MGIEModel:
    """The weights as ``placement`` wants them, in the one order every front end uses: cast to its precision, the
    LLM's linear layers quantized (layer by layer on the device, from the CPU, so the full-precision LLM is never
    whole on a small GPU), then each (LoRA file, strength) merged. The parts are left at ``home`` for the placement
    to move: by default the CPU when quantizing or staging, else the device itself (ComfyUI's model management
    moves them from its offload device)."""
    from ..formats.lora import apply_lora

    if home is None:
        home = "cpu" if placement.staged or placement.llm_quant != "none" else placement.device
    model.to(home, placement.dtype).eval()
    quantize_llm(model.mllm.llm, placement.llm_quant, placement.device)
    for lora, strength in loras:
        apply_lora(model, lora, strength)
    return model


def parts_for(stage: str) -> tuple[str, ...]:
    """The parts ``stage`` (derive, imagine or sample) needs on the device, the resident ones included."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    return tuple(dict.fromkeys((*STAGES[stage], *RESIDENT)))


class PlacedModel:
    """A model carried out onto a :class:`Placement`: its weights prepared, moved, and staged between the stages.

    The edit runner sees MGIE through this interface (``model``, ``place(stage)``, ``sampling_unet``,
    ``compiled``); the node pack's model handle has the same four members, backed by ComfyUI's model management.
    """

    def __init__(self, model: MGIEModel, placement: Placement, offload: torch.device | str = "cpu",
                 loras: Sequence[tuple[object, float]] = ()):
        self.placement, self.offload = placement, torch.device(offload)
        self.model = prepare_weights(model, placement, loras)
        self.staged = placement.staged and placement.device != self.offload
        self.current: str | None = None
        for name in RESIDENT if self.staged else self.model.modules():
            move(self.model.modules()[name], placement.device)
        self.compiled = placement.compile
        self.sampling_unet: nn.Module = compile_unet(self.model.unet) if placement.compile else self.model.unet

    @property
    def device(self) -> torch.device:
        return self.placement.device

    def place(self, stage: str) -> None:
        """Put the parts ``stage`` needs on the device; staged, the other stages' parts leave it first."""
        wanted = parts_for(stage)
        if not self.staged or stage == self.current or set(wanted) <= set(RESIDENT):
            return
        parts = self.model.modules()
        for name in parts:
            if name not in wanted:
                move(parts[name], self.offload)
        empty_cache(self.device)
        for name in wanted:
            move(parts[name], self.device)
        self.current = stage

