"""Custom link types of the pack and the small objects that travel on them."""

from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

from ..mgie_core import Derivation
from .runtime import MGIEHandle

MGIEModelLink = io.Custom("MGIE_MODEL")  # carries a runtime.MGIEHandle (not mgie_core.MGIEModel)
MGIEDerivation = io.Custom("MGIE_DERIVATION")


@dataclass(frozen=True)
class DerivationLink:
    """What travels on an MGIE_DERIVATION link: the derivation and the model that made it."""

    handle: MGIEHandle
    derivation: Derivation
