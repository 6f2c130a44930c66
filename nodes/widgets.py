"""The nodes' widgets, made from the one declaration of each setting (mgie_core.config: EditSettings and
PlacementSettings): the same name, default, range and tooltip as the CLI's flag and the Python API's field. 0 (or
auto) leaves a value to the model or the preset, and the widget's label says so."""

from __future__ import annotations

from dataclasses import fields

from comfy_api.latest import io

from ..mgie_core import EditSettings, SettingError
from ..mgie_core.config import AUTO, NO_LIMIT, SETTINGS, PlacementSettings, TrainSettings

# fields whose widget has another name (num_inference_steps: steps, max_steps: training_steps)
WIDGETS = EditSettings.named("widget") | PlacementSettings.named("widget") | TrainSettings.named("widget")
SAMPLING = ("seed", "num_inference_steps", "guidance_scale", "image_guidance_scale", "scheduler", "max_side")
LEGACY_PRESET = "as set"  # saved workflows from before presets had "auto": their steps and scheduler widgets rule


def setting_input(name: str, optional: bool = False):
    """The widget of one declared setting of an edit or a placement."""
    return field_input(SETTINGS[name], optional)


def field_input(declared, optional: bool = False):
    """The widget of a declared field (mgie_core.config): its name, default, range or choices and tooltip."""
    name = declared.name
    meta, widget = declared.metadata, WIDGETS.get(name, name)
    common = {"default": declared.default, "tooltip": meta["help"], "optional": optional}
    if declared.type == "bool":
        return io.Boolean.Input(widget, **common)
    if meta["choices"] or meta["suggested"]:
        return io.Combo.Input(widget, options=list(meta["choices"] or meta["suggested"]), **common)
    words = [f"0 = {AUTO}"] if meta["auto"] else []
    words += [f"{NO_LIMIT} = no limit"] if meta["no_limit"] else []
    label = {"display_name": f"{widget} ({', '.join(words)})"} if words else {}
    low = NO_LIMIT if meta["no_limit"] else 0 if meta["auto"] else meta["low"]
    if declared.type == "int":
        # an edit's noise seed gets the frontend's control after generate; fine-tuning's seed none (the frontend
        # would add one to any "seed", randomizing it, and so training again, at every Queue)
        extra = {"control_after_generate": declared is SETTINGS["seed"]} if name == "seed" else {}
        return io.Int.Input(widget, min=int(low), max=int(meta["high"]), step=int(meta["step"] or 1), **label,
                            **extra, **common)
    return io.Float.Input(widget, min=float(low), max=float(meta["high"]), step=meta["step"], **label, **common)


def sampling_inputs() -> list:
    return [setting_input(name) for name in SAMPLING]


def preset_input():
    return setting_input("preset", optional=True)


def max_new_tokens_input():
    return setting_input("max_new_tokens")


def instruction_input() -> io.String.Input:
    return io.String.Input("instruction", multiline=True, default="make it look like winter",
                           tooltip="A brief edit instruction. MGIE's LLM looks at the image and expands it into "
                                   "an expressive instruction before editing.")


def override_input() -> io.String.Input:
    return io.String.Input("expressive_override", multiline=True, default="", optional=True,
                           tooltip="Optional: your own expressive instruction. When set, it replaces the derived "
                                   "one and the visual tokens are recomputed from your text.")


def mask_input() -> io.Mask.Input:
    return io.Mask.Input("mask", optional=True,
                         tooltip="Optional: edit only where the mask is 1 (paint it in Load Image's mask editor). "
                                 "Pixels outside stay the input's; one mask for all images or one per image.")


def edit_settings(**widgets) -> EditSettings:
    """The widgets' values as the edit's settings, checked; an error names the widget."""
    if widgets.get("preset") == LEGACY_PRESET:
        widgets["preset"] = "paper"
    return settings_of(EditSettings, widgets)


def settings_of(cls: type, widgets: dict):
    """The widgets' values as ``cls`` (EditSettings or PlacementSettings), checked; an error names the widget."""
    names = {WIDGETS.get(f.name, f.name): f.name for f in fields(cls)}
    unknown = sorted(set(widgets) - set(names))
    if unknown:
        raise TypeError(f"unknown input(s) {', '.join(unknown)}; this node's settings are {', '.join(sorted(names))}")
    values = {names[widget]: value for widget, value in widgets.items()}
    try:
        return cls(**values)
    except SettingError as err:
        raise err.named(WIDGETS) from None


def settings_text(config) -> str:
    """What the sampler used, shown on the node (widgets at 0 or auto show here as the values they took)."""
    side = "any size" if config.max_side == NO_LIMIT else f"up to {config.max_side} px"
    return (f"{config.scheduler}, {config.num_inference_steps} steps; guidance {config.guidance_scale:g} (text) / "
            f"{config.image_guidance_scale:g} (image), images {side}.")

