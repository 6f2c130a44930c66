// Shows the text an MGIE node reports (the derived expressive instruction, the settings used) on the node
// itself, in a read-only box under its widgets, so an artist reads it without wiring a preview node.
//
// - The box is display only: not sent with the prompt (options.serialize = false), so ComfyUI's cache holds
//   and an unchanged graph re-runs nothing, and not saved among the widget values (serialize = false).
// - The text is kept in the node's properties: it survives a tab switch, a reload and a saved workflow.
// - The node grows to hold the text, but never over a node below it: past that the box scrolls.
// Only the frontend's public API is used: app.registerExtension, node.addDOMWidget and graph.nodes.
import { app } from "../../scripts/app.js";

const PLACEHOLDERS = {
  MGIEDeriveInstruction: "The expressive instruction appears here after a run.",
  MGIEEdit: "The expressive instruction and the settings used appear here after a run.",
  MGIESampler: "The settings used appear here after a run.",
  MGIETrainingPairs: "How many pairs were read appears here after a run.",
  MGIETrainLoRA: "The training's losses appear here after a run.",
  MGIESaveLoRA: "Where the LoRA was saved appears here after a run.",
};
const NAME = "mgie_text"; // the widget's name and the property that keeps the text
const FONT_PX = 11;
const LINE_PX = 15;
const PAD_PX = 8; // the box's padding, top and bottom together
const MARGIN_PX = 8; // around the box, inside the node
const SIDE_PX = 2 * MARGIN_PX + PAD_PX + 2 + 16; // node width the text does not get: margins, padding, border, scrollbar
const MIN_LINES = 2;
const GAP_PX = 10; // kept free above a node below

let measureContext = null;

function textWidth(text) {
  if (measureContext === null) {
    measureContext = globalThis.document?.createElement("canvas")?.getContext?.("2d") ?? false;
    if (measureContext) measureContext.font = `${FONT_PX}px monospace`;
  }
  return measureContext ? measureContext.measureText(text).width : text.length * FONT_PX * 0.6;
}

// How many lines `text` takes in a box `width` px wide, wrapped at spaces (long words broken) as a textarea does.
export function wrappedLines(text, width) {
  let lines = 0;
  for (const paragraph of String(text).split("\n")) {
    let line = "";
    lines += 1;
    for (const word of paragraph.split(" ")) {
      const candidate = line ? `${line} ${word}` : word;
      if (textWidth(candidate) <= width || !line) {
        line = candidate;
      } else {
        lines += 1;
        line = word;
      }
      while (textWidth(line) > width && line.length > 1) {
        const fit = Math.max(1, Math.floor((line.length * width) / textWidth(line)));
        lines += 1;
        line = line.slice(fit);
      }
    }
  }
  return lines;
}

// The widget's height for `lines` lines of text: the box (padding and border) and its margins.
function boxHeight(lines) {
  return Math.max(lines, MIN_LINES) * LINE_PX + PAD_PX + 2 + 2 * MARGIN_PX;
}

// The tallest this node may be without reaching a node below it (Infinity when none is below).
function roomBelow(node) {
  const title = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const [x, y] = node.pos;
  const right = x + node.size[0];
  let room = Infinity;
  for (const other of node.graph?.nodes ?? []) {
    if (other === node || other.pos[1] <= y) continue;
    if (other.pos[0] >= right || other.pos[0] + other.size[0] <= x) continue;
    room = Math.min(room, other.pos[1] - title - GAP_PX - y);
  }
  return room;
}

function makeBox(node, placeholder) {
  const element = document.createElement("textarea");
  element.readOnly = true;
  element.placeholder = placeholder;
  element.className = "comfy-multiline-input";
  Object.assign(element.style, {
    font: `${FONT_PX}px/${LINE_PX}px monospace`, padding: `${PAD_PX / 2}px`, resize: "none", opacity: 0.85,
    boxSizing: "border-box", overflowY: "auto", whiteSpace: "pre-wrap", overflowWrap: "anywhere",
  });
  const widget = node.addDOMWidget(NAME, "mgie_text", element, {
    serialize: false, // not in the prompt: the cache holds
    hideOnZoom: false,
    margin: MARGIN_PX,
    getValue: () => element.value,
    setValue: (value) => { element.value = value ?? ""; },
    getMinHeight: () => widget.boxHeight,
  });
  widget.serialize = false; // not among the workflow's widget values
  widget.boxHeight = boxHeight(MIN_LINES);
  return widget;
}

// Put `text` in the node's box and grow the node to hold it, as far as the node below allows.
export function showText(node, text) {
  node.properties = node.properties ?? {};
  node.properties[NAME] = text;
  const widget = node.widgets?.find((w) => w.name === NAME);
  if (!widget) return;
  widget.value = text;
  widget.boxHeight = boxHeight(MIN_LINES);
  const bare = node.computeSize()[1] - widget.boxHeight; // the node's height with no box
  const wanted = boxHeight(wrappedLines(text, node.size[0] - SIDE_PX));
  widget.boxHeight = Math.max(boxHeight(MIN_LINES), Math.min(wanted, roomBelow(node) - bare));
  node.setSize([node.size[0], Math.max(node.size[1], bare + widget.boxHeight)]);
  node.setDirtyCanvas?.(true, true);
}

function textOf(message) {
  const text = message?.text;
  if (!text) return null;
  return Array.isArray(text) ? text.join("\n") : String(text);
}

app.registerExtension({
  name: "ComfyUI-MGIE.ShowText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const placeholder = PLACEHOLDERS[nodeData.name];
    if (!placeholder) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      makeBox(this, placeholder);
      return result;
    };
    const configured = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = configured?.apply(this, arguments);
      const kept = this.properties?.[NAME];
      if (kept) { // a reload, a tab switch, a saved workflow: fitted once every node of the graph is in place
        this.widgets?.find((w) => w.name === NAME)?.options.setValue(kept);
        setTimeout(() => showText(this, kept), 0);
      }
      return result;
    };
    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      executed?.apply(this, arguments);
      const text = textOf(message);
      if (text) showText(this, text);
    };
  },
});
