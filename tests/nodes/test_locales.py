"""locales/<lang>/: the node, input and output names and the tooltips in Simplified Chinese and Japanese, in the
files ComfyUI serves to its frontend (app/custom_node_manager.py reads main.json and nodeDefs.json)."""

from __future__ import annotations

import json

import comfy_harness as harness
import pytest

LANGUAGES = ["zh", "ja"]


def translations(lang: str, name: str) -> dict:
    return json.loads((harness.ROOT / "locales" / lang / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_node_input_and_output_is_translated_and_nothing_else(comfy, lang):
    nodes, defs = comfy[0], translations(lang, "nodeDefs.json")
    assert set(defs) == set(nodes)
    for node_id, cls in nodes.items():
        schema, entry = cls.define_schema(), defs[node_id]
        assert entry["display_name"] and entry["description"] and entry["display_name"] != schema.display_name
        assert set(entry["inputs"]) == {i.id for i in schema.inputs}, node_id
        for spec in schema.inputs:  # a tooltip in English has one here
            assert entry["inputs"][spec.id]["name"] and bool(spec.tooltip) == ("tooltip" in entry["inputs"][spec.id])
        assert set(entry["outputs"]) == {str(k) for k in range(len(schema.outputs))}, node_id
        for k, spec in enumerate(schema.outputs):
            assert entry["outputs"][str(k)]["name"]
            assert bool(getattr(spec, "tooltip", None)) == ("tooltip" in entry["outputs"][str(k)])


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_link_types_are_translated(lang):
    assert set(translations(lang, "main.json")["dataTypes"]) == {"MGIE_MODEL", "MGIE_DERIVATION", "MGIE_PAIRS", "MGIE_LORA"}
