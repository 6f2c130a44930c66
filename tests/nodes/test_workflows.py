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
EXPECTED = {"mgie_basic_edit.json", "mgie_quick_edit.json", "mgie_edit_then_upscale.json", "mgie_multi_turn.json"}


def test_the_four_workflows_ship_and_are_current():
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
    for spec in prompt.values():  # the tiny test checkpoint instead of the shipped model; fewer steps
        if spec["class_type"] == "MGIELoader":
            spec["inputs"]["model"] = "tiny"
        if "steps" in spec["inputs"]:
            spec["inputs"]["steps"] = 3
    ctx = harness.Context(input_dir=tmp_path / "input", output_dir=tmp_path / "output")
    ctx.input_dir.mkdir()
    make_image(48, 32).save(ctx.input_dir / "scene.png")
    harness.execute(prompt, nodes, ctx)
    assert ctx.saved, "the workflow saved no image"
    expected_size = (96, 64) if "upscale" in path.name else (48, 32)
    assert all(Image.open(p).size == expected_size for p in ctx.saved)
    assert ctx.texts and all(t.endswith(".") for t in ctx.texts)  # expressive instructions are shown
    mgie_nodes = {s["class_type"] for s in prompt.values()} & set(nodes)
    assert "MGIELoader" in mgie_nodes and len(mgie_nodes) >= 2
