"""Derive Expressive Instruction: image + brief instruction -> expressive instruction and visual tokens."""

from __future__ import annotations

from comfy_api.latest import io, ui

from .stages import expressive_text, run_derive
from .types import SHOWS_TEXT, MGIEDerivation, MGIEModelLink
from .widgets import edit_settings, instruction_input, max_new_tokens_input, override_input


class MGIEDeriveInstruction(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MGIEDeriveInstruction",
            display_name="Derive Expressive Instruction",
            category="MGIE",
            description="MGIE's multimodal LLM looks at the image and turns the brief instruction into an "
                        "expressive one, plus the visual tokens the edit is conditioned on.",
            inputs=[MGIEModelLink.Input("mgie_model"), io.Image.Input("image"), instruction_input(),
                    max_new_tokens_input(), override_input()],
            outputs=[MGIEDerivation.Output(display_name="derivation"),
                     io.String.Output(display_name="expressive_instruction")],
            **SHOWS_TEXT,
        )

    @classmethod
    def execute(cls, mgie_model, image, instruction: str, expressive_override: str = "", **widgets) -> io.NodeOutput:
        link = run_derive(mgie_model, image, instruction, expressive_override, edit_settings(**widgets).derive_config())
        text = expressive_text(link.derivation)
        return io.NodeOutput(link, text, ui=ui.PreviewText(text))
