"""Load MGIE: a model from ComfyUI/models/mgie (Apple's folders or a bundle) or the embedded default."""

from __future__ import annotations

from comfy_api.latest import io

from ..mgie_core import InputError
from ..mgie_core.config import PlacementSettings
from .comfy_parts import comfy_model, comfy_vae
from .runtime import NO_LORA, NONE_FOUND, list_loras, list_models, make_handle
from .types import MGIEModelLink
from .widgets import setting_input, settings_of


class MGIELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MGIELoader",
            display_name="Load MGIE",
            category="MGIE",
            description="Loads MGIE from ComfyUI/models/mgie: Apple's folder (LLaVA-7B-v1/, mgie_7b/, "
                        "instruct-pix2pix/, clip-vit-large-patch14/) or a .safetensors bundle ('python -m mgie_core "
                        "assemble' builds one for MGIE-7B from its downloads). MODEL and VAE are "
                        "MGIE's UNet and VAE for ComfyUI's own samplers and VAE nodes (the same weights, no copy).",
            inputs=[
                io.Combo.Input("model", options=list_models(),
                               tooltip="Folders and .safetensors bundles found in ComfyUI/models/mgie. mgie-mini "
                                       "(embedded) is a small MGIE trained on flat-shape scenes: it runs anywhere "
                                       "but does not edit photos; photos need Apple's MGIE-7B weights."),
                setting_input("dtype"),
                setting_input("memory"),
                io.Combo.Input("lora", options=list_loras(), default=NO_LORA, optional=True,
                               tooltip="A LoRA made by train/finetune.py or Train MGIE LoRA, from "
                                       "ComfyUI/models/mgie_loras."),
                setting_input("lora_strength", optional=True),
                setting_input("compile", optional=True),
            ],
            outputs=[MGIEModelLink.Output(display_name="mgie_model"),
                     io.Model.Output(display_name="MODEL",
                                     tooltip="MGIE's UNet as ComfyUI's InstructPix2Pix model, for stock samplers: "
                                             "InstructPixToPixConditioning -> DualCFGGuider (cfg_conds = text "
                                             "guidance, cfg_cond2_negative = image guidance) -> SamplerCustomAdvanced."),
                     io.Vae.Output(display_name="VAE", tooltip="MGIE's VAE as a ComfyUI VAE (the same weights).")],
        )

    @classmethod
    def validate_inputs(cls, memory: str = "auto", **_) -> bool | str:
        """memory: a card size, or a label a workflow saved before card sizes (a fixed placement, kept as it was)."""
        try:
            PlacementSettings(memory=memory)
        except InputError as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, model: str, lora: str = NO_LORA, **widgets) -> io.NodeOutput:
        if model == NONE_FOUND:
            raise InputError("no MGIE model found in ComfyUI/models/mgie: build MGIE-7B with 'python -m mgie_core assemble' "
                             "and put the .safetensors it writes there (README, 'Getting the weights')")
        handle = make_handle(model, settings_of(PlacementSettings, widgets), lora)
        m = handle.model
        return io.NodeOutput(handle, comfy_model(m.unet, m.scheduler_config, m.vae.config.scaling_factor),
                             comfy_vae(m.vae))
