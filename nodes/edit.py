"""MGIE Edit: derive, imagine and sample in one node; several instructions (one per line) edit in turn."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..mgie_core import DeriveConfig, InputError
from ..mgie_core.steps import MAX_STEPS, parse_steps, steps_text
from .stages import edit_progress, expressive_text, mask_note, run_derive, run_imagine, run_sample
from .types import SHOWS_TEXT, MGIEModel
from .widgets import AS_SET, mask_input, override_input, preset_input, sample_config, sampling_inputs, settings_text


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
            inputs=[MGIEModel.Input("mgie_model"), io.Image.Input("image"), steps_input(), *sampling_inputs(),
                    override_input(), mask_input(), preset_input()],
            outputs=[io.Image.Output(display_name="image"), io.String.Output(display_name="expressive_instruction")],
            **SHOWS_TEXT,
        )

    @classmethod
    def execute(cls, mgie_model, image, instruction: str, seed: int, steps: int, guidance_scale: float,
                image_guidance_scale: float, scheduler: str, max_side: int = 0, expressive_override: str = "",
                mask=None, preset: str = AS_SET) -> io.NodeOutput:
        edits = parse_steps(instruction)
        if len(edits) > 1 and expressive_override.strip():
            raise InputError("expressive_override replaces the derived instruction of a one-step edit; clear it for a "
                             "multi-step edit (each step derives its own)")
        recommended = mgie_model.model.recommended_sampling
        config = sample_config(recommended, steps, guidance_scale, image_guidance_scale, scheduler, max_side, preset)
        texts = []
        for edit, (derive_progress, sample_progress) in zip(
                edits, edit_progress(image, DeriveConfig.max_new_tokens, config.num_inference_steps, len(edits))):
            link = run_derive(mgie_model, image, edit, expressive_override, callback=derive_progress)
            image, _ = run_sample(mgie_model, image, run_imagine(link), seed, config, sample_progress, mask)
            texts.append(expressive_text(link))
        text = steps_text(texts)
        return io.NodeOutput(image, text, ui=ui.PreviewText(f"{text}\n{settings_text(config)}{mask_note(mask)}"))


def steps_input() -> io.String.Input:
    return io.String.Input("instruction", multiline=True, default="make it look like winter",
                           tooltip="A brief edit instruction; MGIE's LLM expands it into an expressive one. Several "
                                   f"lines (up to {MAX_STEPS}) are a multi-step edit: each line edits the previous "
                                   "result. Blank lines are skipped.")
