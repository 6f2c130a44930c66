"""MGIE Sampler: dual classifier-free guidance on the input image under the visual imagination."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..mgie_core import Imagination
from .stages import from_conditioning, mask_note, run_sample, size_note
from .types import SHOWS_TEXT, MGIEModelLink
from .widgets import edit_settings, mask_input, preset_input, sampling_inputs, settings_text


class MGIESampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MGIESampler",
            display_name="MGIE Sampler",
            category="MGIE",
            description="Edits the image with MGIE's InstructPix2Pix UNet, guided by the visual imagination "
                        "(positive) against the null imagination (negative).",
            inputs=[MGIEModelLink.Input("mgie_model"), io.Image.Input("image"), io.Conditioning.Input("positive"),
                    io.Conditioning.Input("negative"), *sampling_inputs(), mask_input(), preset_input()],
            outputs=[io.Image.Output(display_name="image"), io.Latent.Output(display_name="latent")],
            **SHOWS_TEXT,
        )

    @classmethod
    def execute(cls, mgie_model, image, positive, negative, mask=None, **widgets) -> io.NodeOutput:
        settings = edit_settings(**widgets)
        config = settings.sample_config(mgie_model.model.recommended_sampling)
        imagination = Imagination(from_conditioning(positive, "positive"), from_conditioning(negative, "negative"))
        note = size_note(mgie_model, image, config) + mask_note(mask)
        images, latent = run_sample(mgie_model, image, imagination, settings.seed, config, mask)
        return io.NodeOutput(images, latent, ui=ui.PreviewText(settings_text(config) + note))
