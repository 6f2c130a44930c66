"""Visual Imagination: the edit head's conditioning as standard CONDITIONING."""

from __future__ import annotations

from comfy_api.latest import io

from .stages import run_imagine, to_conditioning
from .types import MGIEDerivation


class MGIEVisualImagination(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MGIEVisualImagination",
            display_name="Visual Imagination",
            category="MGIE",
            description="Turns the visual tokens into the visual imagination (positive) and the null imagination "
                        "(negative), a 77-token conditioning you can inspect, combine or pass on.",
            inputs=[MGIEDerivation.Input("derivation")],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, derivation) -> io.NodeOutput:
        out = run_imagine(derivation)
        return io.NodeOutput(to_conditioning(out.imagination), to_conditioning(out.null_imagination))
