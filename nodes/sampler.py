"""MGIE Sampler: dual classifier-free guidance on the input image under the visual imagination."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..mgie_core import Imagination
from .stages import from_conditioning, mask_note, run_sample
from .types import SHOWS_TEXT, MGIEModel
from .widgets import AS_SET, mask_input, preset_input, sample_config, sampling_inputs, settings_text


class MGIESampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MGIESampler",
            display_name="MGIE Sampler",
            category="MGIE",
            description="Edits the image with MGIE's InstructPix2Pix UNet, guided by the visual imagination "
                        "(positive) against the null imagination (negative).",
            inputs=[MGIEModel.Input("mgie_model"), io.Image.Input("image"), io.Conditioning.Input("positive"),
                    io.Conditioning.Input("negative"), *sampling_inputs(), mask_input(), preset_input()],
            outputs=[io.Image.Output(display_name="image"), io.Latent.Output(display_name="latent")],
            **SHOWS_TEXT,
        )

    @classmethod
    def execute(cls, mgie_model, image, positive, negative, seed: int, steps: int, guidance_scale: float,
                image_guidance_scale: float, scheduler: str, max_side: int = 0, mask=None,
                preset: str = AS_SET) -> io.NodeOutput:
        recommended = mgie_model.model.recommended_sampling
        config = sample_config(recommended, steps, guidance_scale, image_guidance_scale, scheduler, max_side, preset)
        imagination = Imagination(from_conditioning(positive, "positive"), from_conditioning(negative, "negative"))
        images, latent = run_sample(mgie_model, image, imagination, seed, config, mask=mask)
        return io.NodeOutput(images, latent, ui=ui.PreviewText(settings_text(config) + mask_note(mask)))
