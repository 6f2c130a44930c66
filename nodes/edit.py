"""MGIE Edit: derive, imagine and sample in one node."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..mgie_core import DeriveConfig
from .stages import edit_progress, expressive_text, run_derive, run_imagine, run_sample
from .types import MGIEModel
from .widgets import instruction_input, override_input, sample_config, sampling_inputs, settings_text


class MGIEEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MGIEEdit",
            display_name="MGIE Edit",
            category="MGIE",
            description="Instruction-based editing in one node: the brief instruction is expanded by MGIE's LLM, "
                        "then the image is edited under its visual imagination.",
            inputs=[MGIEModel.Input("mgie_model"), io.Image.Input("image"), instruction_input(), *sampling_inputs(),
                    override_input()],
            outputs=[io.Image.Output(display_name="image"), io.String.Output(display_name="expressive_instruction")],
        )

    @classmethod
    def execute(cls, mgie_model, image, instruction: str, seed: int, steps: int, guidance_scale: float,
                image_guidance_scale: float, scheduler: str, max_side: int = 0,
                expressive_override: str = "") -> io.NodeOutput:
        recommended = mgie_model.model.recommended_sampling
        config = sample_config(recommended, steps, guidance_scale, image_guidance_scale, scheduler, max_side)
        derive_progress, sample_progress = edit_progress(image, DeriveConfig.max_new_tokens, steps)
        link = run_derive(mgie_model, image, instruction, expressive_override, callback=derive_progress)
        images, _ = run_sample(mgie_model, image, run_imagine(link), seed, config, sample_progress)
        text = expressive_text(link)
        return io.NodeOutput(images, text, ui=ui.PreviewText(f"{text}\n{settings_text(config)}"))
