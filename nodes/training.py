"""Fine-tuning in the graph: MGIE Training Pairs -> Train MGIE LoRA -> Save MGIE LoRA (and ComfyUI's own Plot Loss
Graph on the losses). The training itself is train/finetune.py, the terminal's one loop, run in a child process
(mgie_core.frontends.finetune_child): these nodes only translate ComfyUI values, progress and Cancel."""

from __future__ import annotations

import dataclasses
import shutil

import comfy.model_management as mm
import comfy.utils
import folder_paths
from comfy_api.latest import io, ui

from ..mgie_core import InputError
from ..mgie_core.config import TRAIN_SETTINGS, TrainSettings
from ..mgie_core.formats.lora import read_lora, save_lora
from ..mgie_core.formats.run import loss_map
from ..mgie_core.frontends.finetune_child import run_finetune
from .comfy_parts import comfy_model, comfy_vae
from .pairs import PAIRS_TOOLTIP, TrainingPairs, fingerprint, pairs_from_folder, pairs_from_images, run_folder
from .runtime import LORA_FOLDER, model_folders
from .types import SHOWS_TEXT, MGIELoraLink, MGIEModelLink, MGIEPairsLink
from .widgets import field_input, settings_of

LossMap = io.Custom("LOSS_MAP")  # ComfyUI's own type: its Plot Loss Graph draws it
TRAINED = ("max_steps", "learning_rate", "lora_rank", "seed", "memory")  # the widgets, declared with finetune.py's


class MGIETrainingPairs(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MGIETrainingPairs",
            display_name="MGIE Training Pairs",
            category="MGIE",
            description="Pairs of pictures to fine-tune MGIE on, each an input, its edited target and the brief "
                        "instruction: a folder in fine-tuning's layout, or pictures built in the graph. Every pair is "
                        "opened and checked here, before any training.",
            inputs=[io.String.Input("folder", default="", tooltip=PAIRS_TOOLTIP),
                    io.Image.Input("input_images", optional=True, tooltip="Pictures before the edit (a batch)."),
                    io.Image.Input("target_images", optional=True,
                                   tooltip="The same pictures after the edit, in the same order."),
                    io.String.Input("instructions", multiline=True, default="", optional=True,
                                    tooltip="The brief instruction of each pair built in the graph, one per line (one "
                                            "line for all of them).")],
            outputs=[MGIEPairsLink.Output(display_name="pairs")],
            **SHOWS_TEXT,
        )

    @classmethod
    def fingerprint_inputs(cls, folder: str = "", **_) -> str:
        return fingerprint(folder)  # a folder whose pictures changed is read again

    @classmethod
    def execute(cls, folder: str = "", input_images=None, target_images=None, instructions: str = "") -> io.NodeOutput:
        if input_images is not None or target_images is not None:
            if folder.strip():
                raise InputError("give the pairs once: a folder, or pictures built in the graph, not both")
            pairs = pairs_from_images(input_images, target_images, instructions)
        else:
            pairs = pairs_from_folder(folder)
        return io.NodeOutput(pairs, ui=ui.PreviewText(pairs.describe()))


class MGIETrainLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MGIETrainLoRA",
            display_name="Train MGIE LoRA",
            category="MGIE",
            description="Fine-tunes the loaded MGIE on the pairs, as train/finetune.py does (the same plans and "
                        "defaults): LoRA adapters on the UNet and the LLM, the edit head and the [IMG] rows. Returns "
                        "the model with the LoRA applied, for the next nodes, the losses for Plot Loss Graph, and the "
                        "LoRA for Save MGIE LoRA. The progress bar shows the newest sample edit.",
            inputs=[MGIEModelLink.Input("mgie_model"), MGIEPairsLink.Input("pairs"),
                    *(field_input(TRAIN_SETTINGS[name]) for name in TRAINED),
                    field_input(TRAIN_SETTINGS["sample_every"], optional=True)],
            outputs=[MGIEModelLink.Output(display_name="mgie_model"), io.Model.Output(display_name="MODEL"),
                     io.Vae.Output(display_name="VAE"), LossMap.Output(display_name="loss"),
                     MGIELoraLink.Output(display_name="lora")],
            **SHOWS_TEXT,
        )

    @classmethod
    def validate_inputs(cls, memory) -> bool | str:
        """memory: any card size (the widget offers the common ones)."""
        return memory is None or _checked(lambda: TrainSettings(memory=memory))

    @classmethod
    def execute(cls, mgie_model, pairs: TrainingPairs, **widgets) -> io.NodeOutput:
        settings = dataclasses.asdict(settings_of(TrainSettings, widgets))
        device = mm.get_torch_device()
        if device.type == "cpu" and mgie_model.model.world is None:
            raise InputError("fine-tuning MGIE-7B on a CPU would take days: run ComfyUI on a GPU (mgie-mini, the "
                             "embedded model, trains on a CPU)")
        output = run_folder()
        options = {"model": None if mgie_model.source is None else str(mgie_model.source), "data": str(pairs.data),
                   "output": str(output), **settings, "lora_alpha": float(settings["lora_rank"]),
                   "save_every": settings["max_steps"], "device": "cpu" if device.type == "cpu" else "auto"}
        mm.unload_all_models()  # training's memory, given back when it ends; the loaded MGIE comes back on its next use
        mm.soft_empty_cache()
        bar = comfy.utils.ProgressBar(settings["max_steps"])

        def watch(step: int, total: int, sample) -> None:
            mm.throw_exception_if_processing_interrupted()  # Cancel: within one step
            bar.update_absolute(step, total, ("PNG", sample, None) if sample is not None else None)

        lora = read_lora(run_finetune(options, watch))
        losses = loss_map(output)
        shutil.rmtree(output, ignore_errors=True)  # the LoRA is in memory: Save MGIE LoRA writes it
        handle = mgie_model.with_lora(lora, 1.0)
        model = handle.model
        text = (f"Trained {settings['max_steps']} steps on {pairs.count} pairs: L_ins {losses['loss_ins'][0]:.3g} -> "
                f"{losses['loss_ins'][-1]:.3g}, L_edit {losses['loss_edit'][0]:.3g} -> {losses['loss_edit'][-1]:.3g}.")
        return io.NodeOutput(handle, comfy_model(model.unet, model.scheduler_config, model.vae.config.scaling_factor),
                             comfy_vae(model.vae), losses, lora, ui=ui.PreviewText(text))


class MGIESaveLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MGIESaveLoRA",
            display_name="Save MGIE LoRA",
            category="MGIE",
            description="Writes the LoRA into ComfyUI/models/mgie_loras/NAME.safetensors, whole or not at all, with the "
                        "metadata train/finetune.py writes. Load MGIE lists it (press R, or reload the page, to refresh "
                        "its list).",
            inputs=[MGIELoraLink.Input("lora"),
                    io.String.Input("name", default="mgie_lora", tooltip="The file's name in models/mgie_loras; a file "
                                    "of that name is replaced.")],
            outputs=[],
            is_output_node=True,
            **SHOWS_TEXT,
        )

    @classmethod
    def execute(cls, lora, name: str) -> io.NodeOutput:
        folders = model_folders(LORA_FOLDER)
        if not folders:
            raise InputError("no mgie_loras folder is registered with ComfyUI; restart ComfyUI with the pack installed")
        path = folders[0] / lora_file_name(name)
        replaced = path.exists()
        save_lora(path, lora.tensors, {k: v for k, v in lora.meta.items() if k not in ("format", "format_version")})
        getattr(folder_paths, "filename_list_cache", {}).pop(LORA_FOLDER, None)  # listed at once
        said = f"Saved {path}" + (" (it replaced the file of that name)." if replaced else ".")
        return io.NodeOutput(ui=ui.PreviewText(said))


def lora_file_name(name: str) -> str:
    """``NAME.safetensors``, refused when the name is empty or leaves the folder."""
    name = name.strip().removesuffix(".safetensors")
    if not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise InputError(f"the LoRA's name must be a plain file name (no folders, not hidden), got {name!r}")
    return f"{name}.safetensors"


def _checked(make) -> bool | str:
    try:
        make()
    except InputError as err:
        return str(err)
    return True
