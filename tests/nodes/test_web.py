"""web/mgie_text.js, the frontend extension that shows an MGIE node's text on the node, run on a mock frontend.

The mock follows ComfyUI's frontend (1.42) where the extension depends on it: ``graphToPrompt`` leaves out a
widget whose ``options.serialize`` is false, a saved workflow leaves out one whose ``serialize`` is false, and
``addDOMWidget`` makes a widget whose value goes through ``options.getValue`` / ``setValue``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import comfy_harness as harness
import pytest

SCRIPT = r"""
const src = require('fs').readFileSync(process.argv[1], 'utf8').replace(/^import .*$/mg, '').replace(/^export /mg, '');
globalThis.document = {createElement: (tag) => (tag === 'canvas' ? {getContext: () => null} : {style: {}})};
let ext; const app = {registerExtension: (e) => { ext = e; }};
new Function('app', src)(app);

function Node() {
  this.widgets = []; this.properties = {}; this.pos = [0, 0]; this.size = [300, 200]; this.graph = null;
  this.inputs = 4;  // widgets of its own: 100 px
  this.onNodeCreated?.();
}
Node.prototype.onExecuted = function () { this.base = true; };
Node.prototype.addDOMWidget = function (name, type, element, options) {
  const w = {name, type, element, options};
  Object.defineProperty(w, 'value', {get() { return options.getValue?.() ?? ''; }, set(v) { options.setValue(v); }});
  this.widgets.push(w); return w;
};
Node.prototype.computeSize = function () {
  return [this.size[0], 100 + this.widgets.reduce((h, w) => h + w.options.getMinHeight() + 4, 0)];
};
Node.prototype.setSize = function (size) { this.size = size; };
const prompt = (n) => n.widgets.filter((w) => w.name && w.options?.serialize !== false).map((w) => w.name);
const saved = (n) => n.widgets.filter((w) => w.serialize !== false).map((w) => w.name);

ext.beforeRegisterNodeDef(Node, {name: process.argv[2]});
const out = {};
const n = new Node();
out.empty = {value: n.widgets[0].value, placeholder: n.widgets[0].element.placeholder, readOnly: n.widgets[0].element.readOnly};
n.onExecuted({text: ['first']}); n.onExecuted({text: ['1. a', '2. b']});
out.shown = {base: !!n.base, widgets: n.widgets.length, value: n.widgets[0].value, kept: n.properties.mgie_text,
             prompt: prompt(n), saved: saved(n)};

const long = Array(40).fill('turn the large green triangle red.').join(' ');
const free = new Node(); free.graph = {nodes: [free]};
free.onExecuted({text: [long]});
const lines = Math.ceil(long.length * 11 * 0.6 / 300);  // at the full node width: fewer lines than it takes
out.grown = {box: free.widgets[0].boxHeight, atLeast: lines * 15, height: free.size[1]};

const tight = new Node(); const below = new Node(); below.pos = [100, 300];
tight.graph = {nodes: [tight, below]};
tight.onExecuted({text: [long]});
out.tight = {height: tight.size[1], limit: 300 - 30 - 10, box: tight.widgets[0].boxHeight};

const restored = new Node(); restored.graph = {nodes: [restored]};
restored.configure = function (info) { this.properties = info.properties; this.onConfigure?.(info); };
restored.configure({properties: {mgie_text: 'kept across a reload'}});
setTimeout(() => {
  out.restored = {value: restored.widgets[0].value, box: restored.widgets[0].boxHeight};
  function Other() { this.widgets = []; } ext.beforeRegisterNodeDef(Other, {name: 'KSampler'});
  out.other = !!(Other.prototype.onExecuted || Other.prototype.onNodeCreated || Other.prototype.onConfigure);
  console.log(JSON.stringify(out));
}, 5);
"""
NODE_IDS = ["MGIEDeriveInstruction", "MGIEEdit", "MGIESampler", "MGIETrainingPairs", "MGIETrainLoRA", "MGIESaveLoRA"]


def run_mock(node_id: str) -> dict:
    done = subprocess.run(["node", "-e", SCRIPT, str(harness.ROOT / "web" / "mgie_text.js"), node_id],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node.js")
@pytest.mark.parametrize("node_id", NODE_IDS)
def test_text_is_shown_on_the_node_and_never_sent_with_the_prompt(node_id):
    out = run_mock(node_id)
    assert out["empty"]["value"] == "" and out["empty"]["placeholder"].endswith("after a run.")
    assert out["empty"]["readOnly"]
    assert out["shown"] == {"base": True, "widgets": 1, "value": "1. a\n2. b", "kept": "1. a\n2. b",
                            "prompt": [], "saved": []}  # the cache holds: the prompt is the same after a run
    assert not out["other"]


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node.js")
def test_the_node_grows_to_hold_its_text_but_not_over_the_node_below():
    out = run_mock("MGIEEdit")
    grown = out["grown"]
    assert grown["box"] >= grown["atLeast"] and grown["height"] >= 100 + grown["box"]
    tight = out["tight"]
    assert tight["height"] <= tight["limit"] and tight["box"] < grown["box"]  # the rest scrolls
    assert out["restored"]["value"] == "kept across a reload"


def test_the_extension_imports_only_the_public_entry():
    source = (harness.ROOT / "web" / "mgie_text.js").read_text()
    assert re.findall(r"^import .* from \"(.*)\";$", source, re.M) == ["../../scripts/app.js"]


def test_the_pack_declares_its_web_directory():
    text = (harness.ROOT / "__init__.py").read_text()
    assert 'WEB_DIRECTORY = "./web"' in text and (harness.ROOT / "web" / "mgie_text.js").is_file()


def test_nodes_with_text_ask_comfyui_to_resend_it_when_taken_from_the_cache(comfy):
    """A node ComfyUI serves from its cache sends no text unless it has an intermediate output (ComfyUI 0.19):
    a new graph whose MGIE Edit has the inputs of one run before would show no text."""
    nodes = comfy[0]
    shows = {node_id for node_id, cls in nodes.items() if cls.define_schema().has_intermediate_output}
    assert shows == set(NODE_IDS)
