"""web/mgie_text.js, the frontend extension that shows an MGIE node's text on the node, run on a mock frontend."""

from __future__ import annotations

import shutil
import subprocess

import comfy_harness as harness
import pytest

SCRIPT = r"""
const src = require('fs').readFileSync(process.argv[1], 'utf8').replace(/^import .*$/mg, '');
let ext; const app = {registerExtension: (e) => { ext = e; }};
const ComfyWidgets = {STRING: (node, name) => {
  const w = {name, value: '', inputEl: {style: {}}}; node.widgets.push(w); return {widget: w}; }};
new Function('app', 'ComfyWidgets', src)(app, ComfyWidgets);
function Node() { this.widgets = []; } Node.prototype.onExecuted = function () { this.base = true; };
ext.beforeRegisterNodeDef(Node, {name: process.argv[2]});
const n = new Node(); n.onExecuted({text: ['first']}); n.onExecuted({text: ['1. a', '2. b']});
function Other() { this.widgets = []; } ext.beforeRegisterNodeDef(Other, {name: 'KSampler'});
console.log(JSON.stringify({base: !!n.base, widgets: n.widgets.length, value: n.widgets[0].value,
  readOnly: n.widgets[0].inputEl.readOnly, serialize: n.widgets[0].serialize, other: !!Other.prototype.onExecuted}));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node.js")
@pytest.mark.parametrize("node_id", ["MGIEDeriveInstruction", "MGIEEdit", "MGIESampler"])
def test_text_is_shown_on_the_node_in_one_read_only_box(node_id):
    import json

    done = subprocess.run(["node", "-e", SCRIPT, str(harness.ROOT / "web" / "mgie_text.js"), node_id],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"base": True, "widgets": 1, "value": "1. a\n2. b", "readOnly": True,
                                       "serialize": False, "other": False}


def test_the_pack_declares_its_web_directory():
    text = (harness.ROOT / "__init__.py").read_text()
    assert 'WEB_DIRECTORY = "./web"' in text and (harness.ROOT / "web" / "mgie_text.js").is_file()
