"""Load MGIE: a model from ComfyUI/models/mgie (Apple's folders or a bundle) or the embedded default."""

from __future__ import annotations

from comfy_api.latest import io

from ..mgie_core import InputError
from ..mgie_core.runtime.devices import AUTO, DTYPES
from ..mgie_core.runtime.placement import MEMORY_HELP, memory_key
from .comfy_parts import comfy_model, comfy_vae
from .runtime import MEMORY_LABELS, NO_LORA, NONE_FOUND, list_loras, list_models, make_handle
from .types import MGIEModelLink

PRECISIONS = [AUTO, *DTYPES]


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
                io.Combo.Input("precision", options=PRECISIONS, default="auto",
                               tooltip="auto: fp16 on a GPU (as Apple's demo), fp32 on the CPU."),
                io.Combo.Input("memory", options=MEMORY_LABELS, default="auto", tooltip=MEMORY_HELP),
                io.Combo.Input("lora", options=list_loras(), default=NO_LORA, optional=True,
                               tooltip="A LoRA made by train/finetune.py, from ComfyUI/models/mgie_loras."),
                io.Float.Input("lora_strength", default=1.0, min=-10.0, max=10.0, step=0.05, optional=True,
                               tooltip="0 leaves the model unchanged, 1 applies the LoRA as trained."),
                io.Boolean.Input("compile", default=False, optional=True,
                                 tooltip="torch.compile the LLM's decoding and the UNet (CUDA graphs on a GPU). The "
                                         "first edit at each image size compiles (a minute or more), the next ones "
                                         "run faster. Needs every part on the GPU (memory auto or 24 GB)."),
            ],
            outputs=[MGIEModelLink.Output(display_name="mgie_model"),
                     io.Model.Output(display_name="MODEL",
                                     tooltip="MGIE's UNet as ComfyUI's InstructPix2Pix model, for stock samplers: "
                                             "InstructPixToPixConditioning -> DualCFGGuider (cfg_conds = text "
                                             "guidance, cfg_cond2_negative = image guidance) -> SamplerCustomAdvanced."),
                     io.Vae.Output(display_name="VAE", tooltip="MGIE's VAE as a ComfyUI VAE (the same weights).")],
        )

    @classmethod
    def execute(cls, model: str, precision: str = "auto", memory: str = "auto", lora: str = NO_LORA,
                lora_strength: float = 1.0, compile: bool = False) -> io.NodeOutput:
        if model == NONE_FOUND:
            raise InputError("no MGIE model found in ComfyUI/models/mgie: build MGIE-7B with 'python -m mgie_core assemble' "
                             "and put the .safetensors it writes there (README, 'Getting the weights')")
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        handle = make_handle(model, precision, memory_key(memory), lora, lora_strength, compile)
        m = handle.model
        return io.NodeOutput(handle, comfy_model(m.unet, m.scheduler_config, m.vae.config.scaling_factor),
                             comfy_vae(m.vae))
