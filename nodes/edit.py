"""MGIE Edit: derive, imagine and sample in one node; several instructions (one per line) edit in turn."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..mgie_core.stages.chain import MAX_CHAIN, chain_text, parse_chain
from .stages import mask_note, run_chain, size_note
from .types import SHOWS_TEXT, MGIEModelLink
from .widgets import edit_settings, mask_input, override_input, preset_input, sampling_inputs, settings_text


class MGIEEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MGIEEdit",
            display_name="MGIE Edit",
            category="MGIE",
            description="Instruction-based editing in one node: the brief instruction is expanded by MGIE's LLM, "
                        "then the image is edited under its visual imagination. Several instructions, one per "
                        "line, are applied in turn, each on the previous result.",
            inputs=[MGIEModelLink.Input("mgie_model"), io.Image.Input("image"), chain_input(), *sampling_inputs(),
                    override_input(), mask_input(), preset_input()],
            outputs=[io.Image.Output(display_name="image"), io.String.Output(display_name="expressive_instruction")],
            **SHOWS_TEXT,
        )

    @classmethod
    def execute(cls, mgie_model, image, instruction: str, expressive_override: str = "", mask=None,
                **widgets) -> io.NodeOutput:
        chain = parse_chain(instruction)
        settings = edit_settings(**widgets)
        config = settings.sample_config(mgie_model.model.recommended_sampling)
        note = size_note(mgie_model, image, config) + mask_note(mask)
        image, texts, notices = run_chain(mgie_model, image, chain, expressive_override, settings.seed,
                                          settings.derive_config(), config, mask)
        text = chain_text(texts)
        return io.NodeOutput(image, text, ui=ui.PreviewText(f"{text}\n{settings_text(config)}{note}{notices}"))


def chain_input() -> io.String.Input:
    return io.String.Input("instruction", multiline=True, default="make it look like winter",
                           tooltip="A brief edit instruction; MGIE's LLM expands it into an expressive one. Several "
                                   f"lines (up to {MAX_CHAIN}) are a chain: each line edits the previous result. "
                                   "Blank lines are skipped.")
