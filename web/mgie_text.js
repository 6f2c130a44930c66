// Shows the text an MGIE node reports (the derived expressive instruction, the settings used) on the node
// itself after a run, in a read-only box, so an artist reads it without wiring a preview node.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const TEXT_NODES = new Set(["MGIEDeriveInstruction", "MGIEEdit", "MGIESampler"]);
const WIDGET = "mgie_result";

function showText(node, text) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, WIDGET, ["STRING", { multiline: true }], app).widget;
    widget.serialize = false; // shown, not saved into the workflow's widget values
    if (widget.inputEl) {
      widget.inputEl.readOnly = true;
      widget.inputEl.style.opacity = 0.8;
    }
  }
  widget.value = text;
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "ComfyUI-MGIE.ShowText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TEXT_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (text) showText(this, Array.isArray(text) ? text.join("\n") : String(text));
    };
  },
});
