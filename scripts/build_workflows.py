"""Write the example workflows of workflows/ in the UI format ComfyUI's frontend saves (version 0.4).

    python scripts/build_workflows.py          # rewrites workflows/*.json

ComfyUI lists them under Templates > Extensions, titled by their file names. The MGIE nodes' widget values come
from their schemas (the pack loaded on tests/comfy_stub, as ComfyUI loads it): every widget at its declared default
unless a workflow sets it by name, in the order ComfyUI lays the widgets out (required inputs as declared, then
optional ones; a seed is followed by its control_after_generate value). tests/nodes/test_workflows.py checks every
file against the node schemas, so a node change that breaks a workflow fails CI, and checks that no two nodes
overlap.

Layouts: each size is at least what ComfyUI 0.19.3's frontend gives the node (MIN_SIZES in the test), and the
MGIE nodes, which show their text on the node after a run, get room for a few lines of it; the frontend draws a
node's title bar (30 px) above its position, and a node sits 40 px below the one above it. No "Preview as Text"
node: the MGIE nodes show their text themselves, and the frontend sends that node's shown text with the prompt,
so it would run again at every run of an unchanged graph. The thumbnails beside the files are screenshots of
each graph after a run (scripts/browser_check.py --thumbnails).
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "workflows"
MODEL = "mgie-mini (embedded)"


@functools.cache
def schemas() -> dict:
    """The MGIE nodes' schemas, from the pack loaded the way ComfyUI loads it (on the tests' stand-ins)."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import comfy_harness as harness

        with tempfile.TemporaryDirectory() as base:
            harness.install_stub(Path(base))
            try:
                return {node_id: cls.define_schema() for node_id, cls in harness.load_pack(Path(base) / "nodes").items()}
            finally:
                harness.remove_stub()
    finally:
        sys.path.remove(str(ROOT / "tests"))


def widgets(node_type: str, **values) -> list:
    """An MGIE node's widget values: each widget's declared default (0 / auto: the model's or the preset's choice),
    unless given here by name; a seed's control value after it."""
    out = []
    for widget in schemas()[node_type].widget_order():
        out.append(values.pop(widget.id, widget.default))
        if widget.extra.get("control_after_generate"):
            out.append("fixed")
    if values:
        raise KeyError(f"{node_type} has no widget {', '.join(values)}")
    return out


def loader() -> list:
    return widgets("MGIELoader", model=MODEL)

# node type -> (socket inputs [(name, type, optional)], outputs [(name, type)], size)
NODE_IO = {
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")], (320, 330)),
    "SaveImage": ([("images", "IMAGE", False)], [], (320, 340)),
    "PreviewImage": ([("images", "IMAGE", False)], [], (320, 300)),
    "ImageScaleBy": ([("image", "IMAGE", False)], [("IMAGE", "IMAGE")], (300, 90)),
    "MGIELoader": ([], [("mgie_model", "MGIE_MODEL"), ("MODEL", "MODEL"), ("VAE", "VAE")], (320, 220)),
    "Note": ([], [], (400, 220)),
    "InstructPixToPixConditioning": ([("positive", "CONDITIONING", False), ("negative", "CONDITIONING", False),
                                      ("vae", "VAE", False), ("pixels", "IMAGE", False)],
                                     [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")],
                                     (300, 100)),
    "DualCFGGuider": ([("model", "MODEL", False), ("cond1", "CONDITIONING", False), ("cond2", "CONDITIONING", False),
                       ("negative", "CONDITIONING", False)], [("GUIDER", "GUIDER")], (300, 170)),
    "RandomNoise": ([], [("NOISE", "NOISE")], (300, 90)),
    "KSamplerSelect": ([], [("SAMPLER", "SAMPLER")], (300, 60)),
    "BasicScheduler": ([("model", "MODEL", False)], [("SIGMAS", "SIGMAS")], (300, 110)),
    "SamplerCustomAdvanced": ([("noise", "NOISE", False), ("guider", "GUIDER", False), ("sampler", "SAMPLER", False),
                               ("sigmas", "SIGMAS", False), ("latent_image", "LATENT", False)],
                              [("output", "LATENT"), ("denoised_output", "LATENT")], (300, 110)),
    "SetLatentNoiseMask": ([("samples", "LATENT", False), ("mask", "MASK", False)], [("LATENT", "LATENT")], (260, 50)),
    "VAEDecode": ([("samples", "LATENT", False), ("vae", "VAE", False)], [("IMAGE", "IMAGE")], (220, 50)),
    "VAEEncode": ([("pixels", "IMAGE", False), ("vae", "VAE", False)], [("LATENT", "LATENT")], (220, 50)),
    "MGIEDeriveInstruction": ([("mgie_model", "MGIE_MODEL", False), ("image", "IMAGE", False)],
                              [("derivation", "MGIE_DERIVATION"), ("expressive_instruction", "STRING")], (360, 300)),
    "MGIEVisualImagination": ([("derivation", "MGIE_DERIVATION", False)],
                              [("positive", "CONDITIONING"), ("negative", "CONDITIONING")], (280, 50)),
    "MGIESampler": ([("mgie_model", "MGIE_MODEL", False), ("image", "IMAGE", False),
                     ("positive", "CONDITIONING", False), ("negative", "CONDITIONING", False), ("mask", "MASK", True)],
                    [("image", "IMAGE"), ("latent", "LATENT")], (330, 400)),
    "MGIEEdit": ([("mgie_model", "MGIE_MODEL", False), ("image", "IMAGE", False), ("mask", "MASK", True)],
                 [("image", "IMAGE"), ("expressive_instruction", "STRING")], (360, 500)),
    "MGIETrainingPairs": ([("input_images", "IMAGE", True), ("target_images", "IMAGE", True)],
                          [("pairs", "MGIE_PAIRS")], (320, 230)),
    "MGIETrainLoRA": ([("mgie_model", "MGIE_MODEL", False), ("pairs", "MGIE_PAIRS", False)],
                      [("mgie_model", "MGIE_MODEL"), ("MODEL", "MODEL"), ("VAE", "VAE"), ("loss", "LOSS_MAP"),
                       ("lora", "MGIE_LORA")], (340, 560)),
    "MGIESaveLoRA": ([("lora", "MGIE_LORA", False)], [], (300, 160)),
    "LossGraphNode": ([("loss", "LOSS_MAP", False)], [], (420, 330)),
}


class Graph:
    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, node_type: str, pos: tuple[int, int], widgets: list | None = None, title: str | None = None) -> int:
        inputs, outputs, size = NODE_IO[node_type]
        node = {
            "id": len(self.nodes) + 1, "type": node_type, "pos": list(pos), "size": list(size), "flags": {},
            "order": len(self.nodes), "mode": 0,
            "inputs": [{"name": n, "type": t, "link": None, **({"shape": 7} if opt else {})} for n, t, opt in inputs],
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
            "properties": {"Node name for S&R": node_type},
        }
        if widgets is not None:
            node["widgets_values"] = widgets
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node["id"]

    def link(self, src: int, src_slot: int, dst: int, dst_input: str) -> None:
        link_id = len(self.links) + 1
        source, target = self.nodes[src - 1], self.nodes[dst - 1]
        slot = next(i for i, inp in enumerate(target["inputs"]) if inp["name"] == dst_input)
        link_type = source["outputs"][src_slot]["type"]
        source["outputs"][src_slot]["links"].append(link_id)
        target["inputs"][slot]["link"] = link_id
        self.links.append([link_id, src, src_slot, dst, slot, link_type])

    def to_json(self) -> dict:
        for node in self.nodes:
            for out in node["outputs"]:
                out["links"] = out["links"] or None
        return {
            "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes, "links": self.links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}}, "version": 0.4,
        }


def basic_edit() -> Graph:
    g = Graph()
    image = g.add("LoadImage", (0, 0), ["scene.png", "image"])
    model = g.add("MGIELoader", (0, 400), loader())
    derive = g.add("MGIEDeriveInstruction", (380, 0),
                   widgets("MGIEDeriveInstruction", instruction="make the biggest shape red"))
    imagine = g.add("MGIEVisualImagination", (380, 370))
    sampler = g.add("MGIESampler", (780, 0), widgets("MGIESampler"))
    save = g.add("SaveImage", (1150, 0), ["mgie/edit"])
    g.link(model, 0, derive, "mgie_model")
    g.link(image, 0, derive, "image")
    g.link(derive, 0, imagine, "derivation")
    g.link(model, 0, sampler, "mgie_model")
    g.link(image, 0, sampler, "image")
    g.link(imagine, 0, sampler, "positive")
    g.link(imagine, 1, sampler, "negative")
    g.link(sampler, 0, save, "images")
    return g


def quick_edit() -> Graph:
    g = Graph()
    image = g.add("LoadImage", (0, 0), ["scene.png", "image"])
    model = g.add("MGIELoader", (0, 400), loader())
    edit = g.add("MGIEEdit", (380, 0), widgets("MGIEEdit", instruction="make the biggest shape red"))
    save = g.add("SaveImage", (780, 0), ["mgie/quick"])
    g.link(model, 0, edit, "mgie_model")
    g.link(image, 0, edit, "image")
    g.link(edit, 0, save, "images")
    return g


def edit_then_upscale() -> Graph:
    g = Graph()
    image = g.add("LoadImage", (0, 0), ["scene.png", "image"])
    model = g.add("MGIELoader", (0, 400), loader())
    edit = g.add("MGIEEdit", (380, 0), widgets("MGIEEdit", instruction="make it look like sunset"))
    upscale = g.add("ImageScaleBy", (780, 0), ["lanczos", 2.0], title="Upscale x2")
    save = g.add("SaveImage", (1120, 0), ["mgie/upscaled"])
    g.link(model, 0, edit, "mgie_model")
    g.link(image, 0, edit, "image")
    g.link(edit, 0, upscale, "image")
    g.link(upscale, 0, save, "images")
    return g


def multi_turn() -> Graph:
    g = Graph()
    image = g.add("LoadImage", (0, 0), ["scene.png", "image"])
    model = g.add("MGIELoader", (0, 400), loader())
    first = g.add("MGIEEdit", (380, 0), widgets("MGIEEdit", instruction="make the biggest shape red"), title="Turn 1")
    second = g.add("MGIEEdit", (780, 0), widgets("MGIEEdit", instruction="make it night"), title="Turn 2")
    preview = g.add("PreviewImage", (780, 570), title="After turn 1")
    save = g.add("SaveImage", (1180, 0), ["mgie/two_turns"])
    g.link(model, 0, first, "mgie_model")
    g.link(image, 0, first, "image")
    g.link(first, 0, preview, "images")
    g.link(model, 0, second, "mgie_model")
    g.link(first, 0, second, "image")
    g.link(second, 0, save, "images")
    return g


STOCK_NOTE = (
    "MGIE on ComfyUI's own sampling. Load MGIE's MODEL and VAE are MGIE's UNet and VAE (the same weights).\n"
    "InstructPixToPixConditioning adds the input image to the visual imagination (positive) and the null "
    "imagination (negative). DualCFGGuider: cond1 = its positive, cond2 = its negative, negative = the null "
    "imagination WITHOUT the image (straight from Visual Imagination); cfg_conds = text guidance, "
    "cfg_cond2_negative = image guidance, style regular.\n"
    "mgie-mini: 2 / 1.5 at 64 px; Apple's MGIE-7B: 7.5 / 1.5 (the paper). euler + normal with the same seed and "
    "steps gives MGIE Sampler's euler edit."
)
GUIDANCE = [2.0, 1.5, "regular"]  # mgie-mini's text and image guidance (MGIE-7B: 7.5, 1.5)


def stock_sampler(masked: bool = False) -> Graph:
    """MGIE's conditioning on ComfyUI's stock samplers; ``masked``: through Set Latent Noise Mask."""
    g = Graph()
    image = g.add("LoadImage", (0, 0), ["scene-masked.png" if masked else "scene.png", "image"])
    model = g.add("MGIELoader", (0, 400), loader())
    derive = g.add("MGIEDeriveInstruction", (380, 0),
                   widgets("MGIEDeriveInstruction", instruction="make the biggest shape red"))
    imagine = g.add("MGIEVisualImagination", (380, 370))
    ip2p = g.add("InstructPixToPixConditioning", (780, 0))
    guider = g.add("DualCFGGuider", (780, 170), GUIDANCE)
    noise = g.add("RandomNoise", (780, 410), [13331, "fixed"])
    sampler = g.add("KSamplerSelect", (780, 570), ["euler"])
    sigmas = g.add("BasicScheduler", (780, 700), ["normal", 100, 1.0])
    run = g.add("SamplerCustomAdvanced", (1120, 0))
    decode = g.add("VAEDecode", (1120, 180))
    save = g.add("SaveImage", (1460, 0), ["mgie/stock_masked" if masked else "mgie/stock"])
    g.add("Note", (1120, 410), [STOCK_NOTE], title="How MGIE plugs into stock sampling")
    g.link(model, 0, derive, "mgie_model")
    g.link(image, 0, derive, "image")
    g.link(derive, 0, imagine, "derivation")
    g.link(imagine, 0, ip2p, "positive")
    g.link(imagine, 1, ip2p, "negative")
    g.link(model, 2, ip2p, "vae")
    g.link(image, 0, ip2p, "pixels")
    g.link(model, 1, guider, "model")
    g.link(ip2p, 0, guider, "cond1")
    g.link(ip2p, 1, guider, "cond2")
    g.link(imagine, 1, guider, "negative")
    g.link(model, 1, sigmas, "model")
    g.link(noise, 0, run, "noise")
    g.link(guider, 0, run, "guider")
    g.link(sampler, 0, run, "sampler")
    g.link(sigmas, 0, run, "sigmas")
    if masked:  # the conditioning's latent is empty: outside the mask the sampler keeps the encoded input instead
        encode = g.add("VAEEncode", (380, 490))
        noise_mask = g.add("SetLatentNoiseMask", (380, 610))
        g.link(image, 0, encode, "pixels")
        g.link(model, 2, encode, "vae")
        g.link(encode, 0, noise_mask, "samples")
        g.link(image, 1, noise_mask, "mask")
        g.link(noise_mask, 0, run, "latent_image")
    else:
        g.link(ip2p, 2, run, "latent_image")
    g.link(run, 0, decode, "samples")
    g.link(model, 2, decode, "vae")
    g.link(decode, 0, save, "images")
    return g


def masked_edit() -> Graph:
    g = Graph()
    image = g.add("LoadImage", (0, 0), ["scene-masked.png", "image"])
    model = g.add("MGIELoader", (0, 400), loader())
    edit = g.add("MGIEEdit", (380, 0), widgets("MGIEEdit", instruction="make the biggest shape red"))
    save = g.add("SaveImage", (780, 0), ["mgie/masked"])
    g.add("Note", (780, 410), ["Paint where to edit in Load Image's mask editor (right click > Open in MaskEditor). "
                               "Outside the mask the pixels stay the input's. An empty mask returns the image "
                               "unchanged and says so on the node."], title="Masked edit")
    g.link(model, 0, edit, "mgie_model")
    g.link(image, 0, edit, "image")
    g.link(image, 1, edit, "mask")
    g.link(edit, 0, save, "images")
    return g


def multi_step() -> Graph:
    g = Graph()
    image = g.add("LoadImage", (0, 0), ["scene.png", "image"])
    model = g.add("MGIELoader", (0, 400), loader())
    edit = g.add("MGIEEdit", (380, 0), widgets("MGIEEdit", instruction="make the biggest shape red\nmake it night"),
                 title="MGIE Edit: one instruction per line")
    save = g.add("SaveImage", (780, 0), ["mgie/multi_step"])
    g.link(model, 0, edit, "mgie_model")
    g.link(image, 0, edit, "image")
    g.link(edit, 0, save, "images")
    return g


FINE_TUNE_NOTE = (
    "Fine-tune then edit, all from one Queue. MGIE Training Pairs reads sepia-pairs, the pack's example (6 flat-shape "
    "scenes and their sepia version, instruction \"make it look like an old photograph\"); give your own folder of "
    "input/, target/ and NAME.txt inside ComfyUI/input. Train MGIE LoRA runs train/finetune.py on the loaded model "
    "(here mgie-mini, on any machine; MGIE-7B needs a GPU), shows each sample edit in its progress bar, and hands the "
    "model with the LoRA to MGIE Edit. Save MGIE LoRA writes models/mgie_loras/sepia.safetensors for Load MGIE."
)


def fine_tune_then_edit() -> Graph:
    g = Graph()
    pairs = g.add("MGIETrainingPairs", (0, 0), widgets("MGIETrainingPairs", folder="sepia-pairs"))
    model = g.add("MGIELoader", (0, 300), loader())
    train = g.add("MGIETrainLoRA", (380, 0), widgets("MGIETrainLoRA", training_steps=100, learning_rate=0.003,
                                                     lora_rank=8, sample_every=25))
    plot = g.add("LossGraphNode", (760, 0), ["mgie_sepia_loss"])  # no folder: 0.3.54 writes it into temp/ as given
    save = g.add("MGIESaveLoRA", (760, 400), widgets("MGIESaveLoRA", name="sepia"))
    image = g.add("LoadImage", (0, 600), ["scene.png", "image"])
    edit = g.add("MGIEEdit", (380, 630), widgets("MGIEEdit", instruction="make it look like an old photograph"))
    result = g.add("SaveImage", (780, 630), ["mgie/sepia"])
    g.add("Note", (1220, 0), [FINE_TUNE_NOTE], title="Fine-tune then edit")
    g.link(pairs, 0, train, "pairs")
    g.link(model, 0, train, "mgie_model")
    g.link(train, 3, plot, "loss")
    g.link(train, 4, save, "lora")
    g.link(train, 0, edit, "mgie_model")
    g.link(image, 0, edit, "image")
    g.link(edit, 0, result, "images")
    return g


# file name (the title the Templates browser shows) -> graph
WORKFLOWS = {
    "MGIE quick edit.json": quick_edit,
    "MGIE edit in stages.json": basic_edit,
    "MGIE multi-step edit.json": multi_step,
    "MGIE two turns.json": multi_turn,
    "MGIE masked edit.json": masked_edit,
    "MGIE edit then upscale.json": edit_then_upscale,
    "MGIE on ComfyUI samplers.json": stock_sampler,
    "MGIE masked, ComfyUI samplers.json": lambda: stock_sampler(masked=True),
    "MGIE fine-tune then edit.json": fine_tune_then_edit,
}


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, build in WORKFLOWS.items():
        (OUT / name).write_text(json.dumps(build().to_json(), indent=1) + "\n")
        print(OUT / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
