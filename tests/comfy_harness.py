"""Load the pack the way ComfyUI does (on the stubbed ComfyUI modules) and run UI-format workflows.

``load_pack`` imports the repository as a package named after its folder, from a custom_nodes
folder, and calls ``comfy_entrypoint``; ``ui_to_api`` converts a saved workflow to ComfyUI's API
prompt using the node schemas; ``execute`` runs the prompt like ComfyUI's executor (only what the
output nodes need, each node once), with small stand-ins for the stock nodes the workflows use.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
STUB = Path(__file__).resolve().parent / "comfy_stub"
PACK_NAME = "ComfyUI-MGIE"
STUB_MODULES = ("comfy_api", "comfy", "folder_paths")


def install_stub(base: Path) -> None:
    """Put the ComfyUI stand-ins first on sys.path, fresh (their state is module-global)."""
    for name in list(sys.modules):
        if name.split(".")[0] in STUB_MODULES or name.startswith(PACK_NAME):
            del sys.modules[name]
    os.environ["COMFY_STUB_BASE"] = str(base)
    if str(STUB) not in sys.path:
        sys.path.insert(0, str(STUB))


def remove_stub() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in STUB_MODULES or name.startswith(PACK_NAME):
            del sys.modules[name]
    if str(STUB) in sys.path:
        sys.path.remove(str(STUB))


def load_pack(custom_nodes: Path):
    """Import the pack like ComfyUI's ``load_custom_node`` and return its node classes by id."""
    link = custom_nodes / PACK_NAME
    if not link.exists():
        custom_nodes.mkdir(parents=True, exist_ok=True)
        link.symlink_to(ROOT, target_is_directory=True)
    spec = importlib.util.spec_from_file_location(PACK_NAME, link / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    assert not hasattr(module, "NODE_CLASS_MAPPINGS"), "a V1 mapping would stop ComfyUI from calling comfy_entrypoint"
    extension = asyncio.run(module.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    return {cls.define_schema().node_id: cls for cls in nodes}


# -- stand-ins for the stock nodes the shipped workflows use ---------------------------------------
def _load_image(ctx, image):
    """As ComfyUI's Load Image: the mask is 1 where the mask editor cleared the alpha; 64x64 zeros without alpha."""
    pil = Image.open(ctx.input_dir / image)
    tensor = torch.from_numpy(np.asarray(pil.convert("RGB"), np.float32) / 255.0)[None]
    if "A" not in pil.getbands():
        return tensor, torch.zeros(1, 64, 64)
    return tensor, 1.0 - torch.from_numpy(np.asarray(pil.getchannel("A"), np.float32) / 255.0)[None]


def _save_image(ctx, images, filename_prefix="ComfyUI"):
    for i, image in enumerate(images):
        path = ctx.output_dir / f"{filename_prefix}_{len(ctx.saved) + i:05d}_.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)).save(path)
        ctx.saved.append(path)
    return ()


def _preview_image(ctx, images):
    ctx.previews.append(images)
    return ()


def _preview_any(ctx, source):
    ctx.texts.append(str(source))
    return ()


def _scale_by(ctx, image, upscale_method, scale_by):
    out = []
    for im in image:
        pil = Image.fromarray((im.numpy() * 255).round().astype(np.uint8))
        size = (round(pil.width * scale_by), round(pil.height * scale_by))
        out.append(torch.from_numpy(np.asarray(pil.resize(size, Image.Resampling.LANCZOS), np.float32) / 255.0))
    return (torch.stack(out),)


# type -> (function, widget names in layout order, output node?)
STOCK = {
    "LoadImage": (_load_image, ["image", "upload"], False),
    "SaveImage": (_save_image, ["filename_prefix"], True),
    "PreviewImage": (_preview_image, [], True),
    "PreviewAny": (_preview_any, [], True),
    "ImageScaleBy": (_scale_by, ["upscale_method", "scale_by"], False),
}


# ComfyUI's sampling nodes, which only a real ComfyUI runs: their widgets in layout order
REAL_ONLY = {
    "InstructPixToPixConditioning": [], "DualCFGGuider": ["cfg_conds", "cfg_cond2_negative", "style"],
    "RandomNoise": ["noise_seed", "noise_seed:control"], "KSamplerSelect": ["sampler_name"],
    "BasicScheduler": ["scheduler", "steps", "denoise"], "SamplerCustomAdvanced": [], "SetLatentNoiseMask": [],
    "VAEDecode": [], "VAEEncode": [], "LossGraphNode": ["filename_prefix"],
}


def widget_names(node_type: str, nodes: dict) -> list[str]:
    """Widget slots of a node in ``widgets_values`` order; ``:control`` marks a seed's control value."""
    if node_type in STOCK:
        return STOCK[node_type][1]
    if node_type in REAL_ONLY:
        return REAL_ONLY[node_type]
    names = []
    for widget in nodes[node_type].define_schema().widget_order():
        names.append(widget.id)
        if widget.extra.get("control_after_generate"):
            names.append(f"{widget.id}:control")
    return names


def ui_to_api(workflow: dict, nodes: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4) or node["type"] in ("Note", "MarkdownNote"):
            continue
        names = widget_names(node["type"], nodes)
        values = node.get("widgets_values", [])
        if len(values) != len(names):
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values for {names}")
        inputs = {n: v for n, v in zip(names, values) if not n.endswith(":control") and n != "upload"}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


@dataclass
class Context:
    input_dir: Path
    output_dir: Path
    saved: list = field(default_factory=list)
    previews: list = field(default_factory=list)
    texts: list = field(default_factory=list)
    ui: dict = field(default_factory=dict)


def execute(prompt: dict, nodes: dict, ctx: Context) -> dict:
    """Run every output node and what it depends on; return the outputs of each executed node."""
    results: dict[str, tuple] = {}

    def run(node_id: str) -> tuple:
        if node_id in results:
            return results[node_id]
        spec = prompt[node_id]
        kwargs = {k: (run(v[0])[v[1]] if isinstance(v, list) else v) for k, v in spec["inputs"].items()}
        node_type = spec["class_type"]
        if node_type in STOCK:
            results[node_id] = STOCK[node_type][0](ctx, **kwargs)
        else:
            out = nodes[node_type].execute(**kwargs)
            results[node_id] = out.values
            if out.ui:
                ctx.ui[node_id] = dict(out.ui)
        return results[node_id]

    for node_id, spec in prompt.items():
        if spec["class_type"] in STOCK and STOCK[spec["class_type"]][2]:
            run(node_id)
    return results
