"""Custom link types of the pack and the small objects that travel on them."""

from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

from ..mgie_core import Derivation
from .runtime import MGIEHandle

MGIEModelLink = io.Custom("MGIE_MODEL")  # carries a runtime.MGIEHandle (not mgie_core.MGIEModel)
MGIEDerivation = io.Custom("MGIE_DERIVATION")
MGIEPairsLink = io.Custom("MGIE_PAIRS")  # carries a pairs.TrainingPairs
MGIELoraLink = io.Custom("MGIE_LORA")  # carries a mgie_core.formats.lora.LoraFile (read-only: the cache holds it)

# For the nodes that show text on the node (web/mgie_text.js): ComfyUI (0.19+) then sends a node's text again when
# a run takes the node from its cache without running it (a new graph with the same inputs). 0.3.54 has no such field.
SHOWS_TEXT = {"has_intermediate_output": True} if "has_intermediate_output" in io.Schema.__dataclass_fields__ else {}


@dataclass(frozen=True)
class DerivationLink:
    """What travels on an MGIE_DERIVATION link: the derivation and the model that made it."""

    handle: MGIEHandle
    derivation: Derivation
