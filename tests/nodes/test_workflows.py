"""Every shipped workflow: valid UI format, converts against the node schemas, runs end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import comfy_harness as harness
import pytest
from conftest import make_image
from PIL import Image

WORKFLOWS = sorted((harness.ROOT / "workflows").glob("*.json"))
EXPECTED = {"MGIE quick edit.json", "MGIE edit in stages.json", "MGIE multi-step edit.json", "MGIE two turns.json",
            "MGIE masked edit.json", "MGIE edit then upscale.json", "MGIE on ComfyUI samplers.json",
            "MGIE masked, ComfyUI samplers.json", "MGIE fine-tune then edit.json"}
# The least size (width, height below the title) ComfyUI 0.19.3's frontend (1.42.15) gives each node, measured
# with node.computeSize() in Chromium (scripts/browser_check.py prints them): a smaller size in a workflow grows
# when it opens, and could grow over its neighbour. The MGIE nodes' minimum includes a two-line text box.
MIN_SIZES = {
    "LoadImage": (223, 326), "MGIELoader": (210, 218), "MGIEDeriveInstruction": (240, 246),
    "MGIEVisualImagination": (160, 46), "MGIESampler": (232, 366), "MGIEEdit": (264, 434),
    "SaveImage": (210, 58), "ImageScaleBy": (210, 82), "PreviewImage": (140, 26),
    "InstructPixToPixConditioning": (229, 86), "DualCFGGuider": (218, 166), "RandomNoise": (210, 82),
    "KSamplerSelect": (210, 58), "BasicScheduler": (210, 106), "SamplerCustomAdvanced": (212, 106),
    "VAEDecode": (140, 46), "Note": (281, 88), "SetLatentNoiseMask": (188, 46),
    "VAEEncode": (140, 46), "MGIETrainingPairs": (210, 192), "MGIETrainLoRA": (210, 318), "MGIESaveLoRA": (210, 118),
    "LossGraphNode": (210, 58),
}
TEXT_NODES = {"MGIEDeriveInstruction", "MGIESampler", "MGIEEdit", "MGIETrainingPairs", "MGIETrainLoRA",
              "MGIESaveLoRA"}  # they show their text on the node after a run
TEXT_ROOM = 30  # px beyond the minimum for those: two more lines of text without growing


def test_no_folder_hides_the_templates():
    """ComfyUI serves a pack's templates from the first of these folders that exists: ours is workflows/."""
    hiding = [name for name in ("example_workflows", "example", "examples", "workflow") if (harness.ROOT / name).exists()]
    assert not hiding, f"{hiding} would be served as the Templates instead of workflows/"


def test_the_workflows_ship_and_are_current():
    assert EXPECTED <= {p.name for p in WORKFLOWS}
    sys.path.insert(0, str(harness.ROOT / "scripts"))
    try:
        import build_workflows
    finally:
        sys.path.remove(str(harness.ROOT / "scripts"))
    for name, build in build_workflows.WORKFLOWS.items():
        on_disk = json.loads((harness.ROOT / "workflows" / name).read_text())
        assert on_disk == json.loads(json.dumps(build().to_json())), f"{name} is stale: run scripts/build_workflows.py"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_two_nodes_overlap_in_the_frontend(path: Path):
    """Every node as large as the frontend makes it, its title bar above it: no two boxes meet, so neither the
    nodes nor the text the MGIE nodes grow to show after a run cover a neighbour."""
    nodes = json.loads(path.read_text())["nodes"]
    for node in nodes:
        least = MIN_SIZES[node["type"]]
        extra = TEXT_ROOM if node["type"] in TEXT_NODES else 0
        assert node["size"][0] >= least[0] and node["size"][1] >= least[1] + extra, (node["type"], node["size"])
    boxes = [(n["title"] if "title" in n else n["type"], n["pos"][0], n["pos"][1] - 30,
              n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in nodes]
    for i, (a, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for b, bx0, by0, bx1, by1 in boxes[i + 1:]:
            apart = ax1 + 20 <= bx0 or bx1 + 20 <= ax0 or ay1 + 20 <= by0 or by1 + 20 <= ay0
            assert apart, f"{a} and {b} overlap or touch"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_ui_format_is_consistent(path: Path):
    workflow = json.loads(path.read_text())
    assert workflow["version"] == 0.4 and workflow["last_node_id"] == max(n["id"] for n in workflow["nodes"])
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        assert link_id in (nodes[src]["outputs"][src_slot]["links"] or [])
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert kind in (nodes[src]["outputs"][src_slot]["type"], "*") and nodes[dst]["inputs"][dst_slot]["type"] in (kind, "*")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_runs(comfy, path: Path):
    nodes, tmp_path = comfy[0], comfy[-1]
    prompt = harness.ui_to_api(json.loads(path.read_text()), nodes)
    trains = any(spec["class_type"] == "MGIETrainLoRA" for spec in prompt.values())
    for spec in prompt.values():  # the tiny test checkpoint instead of the shipped model (which trains); fewer steps
        if spec["class_type"] == "MGIELoader" and not trains:
            spec["inputs"]["model"] = "tiny"
        for steps in ("steps", "training_steps"):
            if steps in spec["inputs"]:
                spec["inputs"][steps] = 3
    ctx = harness.Context(input_dir=tmp_path / "input", output_dir=tmp_path / "output")
    ctx.input_dir.mkdir()
    make_image(48, 32).save(ctx.input_dir / "scene.png")
    painted = make_image(48, 32).convert("RGBA")
    painted.putalpha(Image.new("L", (48, 32), 255))
    painted.paste((0, 0, 0, 0), (8, 8, 40, 24))  # the mask editor clears the alpha where the artist paints
    painted.save(ctx.input_dir / "scene-masked.png")
    prompt = _without(prompt, {"LossGraphNode"})  # ComfyUI's own plot: it runs in a real ComfyUI
    stock = {s["class_type"] for s in prompt.values()} & set(harness.REAL_ONLY)
    if stock:  # ComfyUI's own samplers: only the MGIE nodes run here; the whole graph runs in a real ComfyUI
        _check_stock_wiring(prompt)
        prompt = _without(prompt, set(harness.REAL_ONLY))
        prompt["preview"] = {"class_type": "PreviewAny", "inputs": {"source": [_node(prompt, "MGIEDeriveInstruction"), 1]}}
        harness.execute(prompt, nodes, ctx)
        assert ctx.texts and all(t.endswith(".") for t in ctx.texts)
        return
    harness.execute(prompt, nodes, ctx)
    assert ctx.saved, "the workflow saved no image"
    expected_size = (96, 64) if "upscale" in path.name else (48, 32)
    assert all(Image.open(p).size == expected_size for p in ctx.saved)
    shown = [text for ui in ctx.ui.values() for text in ui.get("text", ())]  # on the MGIE nodes themselves
    assert shown and all(t.endswith(".") for t in shown)
    mgie_nodes = {s["class_type"] for s in prompt.values()} & set(nodes)
    assert "MGIELoader" in mgie_nodes and len(mgie_nodes) >= 2


def _node(prompt: dict, class_type: str) -> str:
    return next(i for i, s in prompt.items() if s["class_type"] == class_type)


def _check_stock_wiring(prompt: dict) -> None:
    """The wiring the README documents: MODEL and VAE from Load MGIE; DualCFGGuider's cond1/cond2 from
    InstructPixToPixConditioning, its negative the null imagination without the image."""
    loader, imagine, ip2p = (_node(prompt, t) for t in ("MGIELoader", "MGIEVisualImagination", "InstructPixToPixConditioning"))
    guider = prompt[_node(prompt, "DualCFGGuider")]["inputs"]
    assert guider["model"] == [loader, 1] and prompt[ip2p]["inputs"]["vae"] == [loader, 2]
    assert guider["cond1"] == [ip2p, 0] and guider["cond2"] == [ip2p, 1] and guider["negative"] == [imagine, 1]
    assert prompt[_node(prompt, "VAEDecode")]["inputs"]["vae"] == [loader, 2]
    run = prompt[_node(prompt, "SamplerCustomAdvanced")]["inputs"]
    if any(s["class_type"] == "SetLatentNoiseMask" for s in prompt.values()):
        # outside the mask the sampler keeps latent_image: the input encoded, not the conditioning's empty latent
        noise_mask = prompt[run["latent_image"][0]]
        assert noise_mask["class_type"] == "SetLatentNoiseMask"
        encode = prompt[noise_mask["inputs"]["samples"][0]]
        assert encode["class_type"] == "VAEEncode" and encode["inputs"]["vae"] == [loader, 2]
        assert encode["inputs"]["pixels"] == prompt[ip2p]["inputs"]["pixels"]
    else:
        assert run["latent_image"] == [ip2p, 2]


def _without(prompt: dict, types: set) -> dict:
    """The prompt less the nodes of ``types`` and every node that depends on them."""
    kept = {i: s for i, s in prompt.items() if s["class_type"] not in types}
    while True:
        gone = {i for i, s in kept.items() for v in s["inputs"].values() if isinstance(v, list) and v[0] not in kept}
        if not gone:
            return kept
        kept = {i: s for i, s in kept.items() if i not in gone}
