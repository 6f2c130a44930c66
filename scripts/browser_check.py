"""The pack as an artist meets it: ComfyUI's real web frontend in headless Chromium.

    MIRROR_ROOT=... INSTALL_FRONTEND=1 bash ../shared/tools/comfy/setup.sh     # ComfyUI 0.19.3 and its frontend
    python scripts/browser_check.py --comfy-dir /tmp/comfyui --python /tmp/comfy-venv/bin/python \
        [--thumbnails] [--out /tmp/mgie-browser] [--run "MGIE quick edit" ...]

Starts ComfyUI with the pack, opens its page, and for every template of the pack:
- fetches it from the Templates address (/api/workflow_templates/ComfyUI-MGIE/NAME.json) and opens it;
- checks that no two nodes overlap;
- for the workflows it runs (--run; with --thumbnails, all of them), runs it from the page and checks that it
  succeeded, that the MGIE nodes show their text, that the page's prompt is the same after the run (ComfyUI's
  cache holds), that a re-run of the unchanged graph executes nothing (and how long it takes), that a change of
  the Save Image file name re-runs that node only, that no two nodes overlap after the run, and that the text
  is still there after a switch to another workflow tab and back; screenshots the graph (--thumbnails: into
  workflows/NAME.jpg, the template's thumbnail and the README's picture);
- checks that its thumbnail is served as a JPEG.
Then opens the Templates dialog and a template from it, shows an error as the artist reads it, and the nodes in
Chinese and Japanese. Screenshots go to --out. Exits 1 if a check failed. Not run in CI: it needs ComfyUI.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from pathlib import Path

from comfy_page import PACK, ROOT, Page, Server
from PIL import Image

sys.path.insert(0, str(ROOT))
from mgie_core.files import atomic_write  # noqa: E402

MUST_RUN = ["MGIE quick edit", "MGIE edit in stages", "MGIE multi-step edit", "MGIE fine-tune then edit"]
LEAST_SIZES: dict[str, list[int]] = {}  # node type -> the least size the frontend gives it (computeSize)
TEXTS_JS = """return app.graph.nodes.filter((n) => n.widgets?.some((w) => w.name === 'mgie_text'))
  .map((n) => [n.title, n.widgets.find((w) => w.name === 'mgie_text').value]);"""


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, what: str, ok: bool, detail: object = "") -> bool:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}{f': {detail}' if detail != '' else ''}", flush=True)
        if not ok:
            self.failed.append(what)
        return ok


def template_path(name: str, suffix: str) -> str:
    return f"/api/workflow_templates/{PACK}/{urllib.parse.quote(name)}{suffix}"


def executed_nodes(history: dict, prompt: dict) -> set[str]:
    """The prompt's nodes that ran (not served from ComfyUI's cache)."""
    cached = {node for kind, data in history["status"]["messages"] if kind == "execution_cached" for node in data["nodes"]}
    return set(prompt) - cached


def server_seconds(history: dict) -> float:
    """From execution_start to execution_success, as the server stamped them."""
    stamps = {kind: data["timestamp"] for kind, data in history["status"]["messages"] if "timestamp" in data}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000


def run_and_check(page: Page, name: str, checks: Checks) -> dict:
    figures = {}
    before = page.prompt()
    start = time.perf_counter()
    history = page.history(page.queue())
    figures["run_s"] = round(time.perf_counter() - start, 1)
    checks.check(f"{name}: runs from the page", history["status"]["status_str"] == "success", f"{figures['run_s']} s")
    texts = page.run(TEXTS_JS)
    checks.check(f"{name}: text on the MGIE nodes", bool(texts) and all(t for _, t in texts),
                 "; ".join(f"{title}: {text!r}" for title, text in texts))
    checks.check(f"{name}: the prompt is the same after the run", page.prompt() == before)
    checks.check(f"{name}: no two nodes overlap after the run", not page.overlaps(), page.overlaps())
    start = time.perf_counter()
    again = page.history(page.queue())
    figures["rerun_s"], figures["rerun_server_s"] = round(time.perf_counter() - start, 2), server_seconds(again)
    checks.check(f"{name}: a re-run of the unchanged graph executes nothing", not executed_nodes(again, before),
                 f"{sorted(executed_nodes(again, before))} executed, {figures['rerun_server_s']:.3f} s on the server, "
                 f"{figures['rerun_s']} s on the page")
    page.command("Comfy.NewBlankWorkflow")
    page.command("Workspace.PreviousOpenedWorkflow")
    checks.check(f"{name}: the text is still there after a tab switch", page.run(TEXTS_JS) == texts)
    save = page.run("return app.graph.nodes.find((n) => n.type === 'SaveImage')?.id")
    if save is not None:
        page.run("const w = app.graph.getNodeById(arguments[0]).widgets.find((w) => w.name === 'filename_prefix');"
                 "w.value = w.value + '_renamed';", save)
        changed = page.history(page.queue())
        checks.check(f"{name}: a new Save Image file name re-runs Save Image only",
                     executed_nodes(changed, page.prompt()) == {str(save)}, sorted(executed_nodes(changed, page.prompt())))
        page.run("const w = app.graph.getNodeById(arguments[0]).widgets.find((w) => w.name === 'filename_prefix');"
                 "w.value = w.value.replace('_renamed', '');", save)
    return figures


def save_thumbnail(image, path: Path, width: int = 1000) -> Path:
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), resample=3)  # LANCZOS
    with atomic_write(path) as handle:
        image.save(handle, format="JPEG", quality=85, optimize=True)
    return path


def check_template(page: Page, name: str, run: bool, args: argparse.Namespace, checks: Checks) -> dict:
    print(f"{name}", flush=True)
    served = page.fetch(template_path(name, ".json"))
    try:
        workflow = json.loads(served["body"])
    except json.JSONDecodeError as error:
        checks.check(f"{name}: opens from the Templates address", False, f"HTTP {served['status']}, {error}")
        return {}
    page.load(workflow)
    if args.steps:
        page.run("for (const n of app.graph.nodes) for (const w of n.widgets ?? []) if (w.name === 'steps') "
                 "w.value = arguments[0];", args.steps)
    count = page.run("return app.graph.nodes.length")
    checks.check(f"{name}: opens from the Templates address", count == len(workflow["nodes"]), f"{count} nodes")
    checks.check(f"{name}: no two nodes overlap when it opens", not page.overlaps(), page.overlaps())
    sizes = page.run("return app.graph.nodes.map((n) => [n.id, n.type, [...n.size], n.computeSize()]);")
    grown = [(kind, size) for node_id, kind, size, _ in sizes
             if any(abs(a - b) > 0.5 for a, b in zip(size, next(n["size"] for n in workflow["nodes"] if n["id"] == node_id)))]
    checks.check(f"{name}: every node opens at its saved size", not grown, grown)
    for _, kind, _, least in sizes:  # what tests/nodes/test_workflows.py keeps as MIN_SIZES
        LEAST_SIZES[kind] = [max(a, round(b)) for a, b in zip(LEAST_SIZES.get(kind, [0, 0]), least)]
    figures = run_and_check(page, name, checks) if run else {}
    shot = page.graph_shot()
    shot.save(args.out / f"{name}.png")
    print(f"  screenshot: {args.out / f'{name}.png'}")
    if args.thumbnails and run:
        print(f"  thumbnail: {save_thumbnail(shot, ROOT / 'workflows' / f'{name}.jpg')}")
    thumb = page.fetch(template_path(name, ".jpg"))
    checks.check(f"{name}: has its JPEG thumbnail", thumb["status"] == 200 and thumb["type"] == "image/jpeg",
                 f"HTTP {thumb['status']}, {thumb['type']}")
    return figures


def templates_dialog(page: Page, args: argparse.Namespace, checks: Checks) -> None:
    print("Templates dialog", flush=True)
    click = ("const el = Array.from(document.querySelectorAll('body *')).find((e) => e.childElementCount === 0 &&"
             " e.textContent.trim() === arguments[0]); if (!el) return false; el.scrollIntoView(); el.click(); return true;")
    opened = page.run(click, "Templates") and (time.sleep(3) or page.run(click, PACK))
    time.sleep(4)
    shown, seen = {}, "return Array.from(document.querySelectorAll('img')).map((i) => [i.alt, i.naturalWidth]);"
    for index in range(len(page.run(seen))):  # a card loads its picture when scrolled to, and may drop it after
        page.run("const i = document.querySelectorAll('img')[arguments[0]]; if (i) i.scrollIntoView();", index)
        time.sleep(1)
        shown.update((alt, width) for alt, width in page.run(seen) if width or alt not in shown)
    names = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
    widths = {name: Image.open(ROOT / "workflows" / f"{name}.jpg").width if (ROOT / "workflows" / f"{name}.jpg").is_file()
              else None for name in names}
    checks.check("the pack's templates show their thumbnails", opened and all(shown.get(n) == w for n, w in widths.items()),
                 {n: shown.get(n) for n in names})
    print(f"  screenshot: {page.screenshot(args.out / 'templates-dialog.png')}")
    page.run(click, MUST_RUN[0])
    time.sleep(4)
    types = page.run("return app.graph.nodes.map((n) => n.type)")
    checks.check(f"a click on {MUST_RUN[0]!r} opens it", "MGIEEdit" in types, types)


def error_as_read(page: Page, args: argparse.Namespace, checks: Checks) -> None:
    print("An error, as the artist reads it", flush=True)
    page.load(json.loads(page.fetch(template_path(MUST_RUN[0], ".json"))["body"]))
    page.run("app.graph.nodes.find((n) => n.type === 'MGIEEdit').widgets.find((w) => w.name === 'instruction').value = ' ';")
    page.queue()
    time.sleep(2)
    shown = page.run("return Array.from(document.querySelectorAll('body *')).filter((e) => e.childElementCount === 0"
                     " && e.textContent.includes('the instruction is empty')).map((e) => e.textContent.trim());")
    checks.check("the error's title names the problem", bool(shown) and shown[0].startswith("MGIE input error: "), shown)
    print(f"  screenshot: {page.screenshot(args.out / 'error.png')}")
    page.run("Array.from(document.querySelectorAll('button')).find((b) => b.textContent.trim() === 'See Errors')?.click()")
    time.sleep(2)
    whole = page.run("return Array.from(document.querySelectorAll('body *')).some((e) => e.childElementCount === 0"
                     " && e.textContent.trim().endsWith('(one instruction per line for a chain of edits)')"
                     " && e.scrollHeight <= e.clientHeight + 1 && e.getBoundingClientRect().width > 0)")  # not clipped
    checks.check("the error's whole sentence is shown in the errors panel", whole)
    print(f"  screenshot: {page.screenshot(args.out / 'error-panel.png')}")
    page.call("await app.extensionManager.setting.set('Comfy.RightSidePanel.IsOpen', false); return true;")
    page.escape()


def translated(page: Page, args: argparse.Namespace, checks: Checks) -> None:
    for lang, title in (("zh", "MGIE 编辑"), ("ja", "MGIE編集")):
        print(f"Locale {lang}", flush=True)
        page.run("app.extensionManager.setting.set('Comfy.Locale', arguments[0])", lang)
        page.driver.refresh()
        page.wait_for("return !!(window.app && window.app.graph && window.app.extensionManager)", 120)
        time.sleep(3)
        page.escape()
        page.load(json.loads(page.fetch(template_path(MUST_RUN[0], ".json"))["body"]))
        titles = page.run("return app.graph.nodes.map((n) => n.title)")
        checks.check(f"the nodes read in {lang}", title in titles, titles)
        page.graph_shot().save(args.out / f"locale-{lang}.png")
        print(f"  screenshot: {args.out / f'locale-{lang}.png'}")
    page.run("app.extensionManager.setting.set('Comfy.Locale', 'en')")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfy-dir", type=Path, default=Path("/tmp/comfyui"))
    parser.add_argument("--python", type=Path, default=Path("/tmp/comfy-venv/bin/python"), help="ComfyUI's Python")
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("--out", type=Path, default=Path("/tmp/mgie-browser"), help="folder for the screenshots")
    parser.add_argument("--run", nargs="*", default=MUST_RUN, help="the workflows to run (default: %(default)s)")
    parser.add_argument("--thumbnails", action="store_true", help="run every workflow; write workflows/NAME.jpg")
    parser.add_argument("--steps", type=int, default=None, help="set every steps widget first (a quicker check; "
                        "not with --thumbnails)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = parser.parse_args(argv)
    if args.steps and args.thumbnails:
        parser.error("--steps changes the graphs: the thumbnails must show them as shipped")
    args.out.mkdir(parents=True, exist_ok=True)
    checks, figures = Checks(), {}
    server = Server(args.comfy_dir, args.python, args.port, args.out / "comfyui.log")
    server.start()
    page = None
    try:
        page = Page(server.url, args.chromium, args.chromedriver)
        names = sorted(json.loads(server.get("/api/workflow_templates")[0])[PACK])
        for name in names:
            figures[name] = check_template(page, name, args.thumbnails or name in args.run, args, checks)
        templates_dialog(page, args, checks)
        error_as_read(page, args, checks)
        translated(page, args, checks)
    finally:
        if page is not None:
            page.close()
        server.stop()
    print("least node sizes in this frontend:", json.dumps(LEAST_SIZES))
    print(json.dumps({k: v for k, v in figures.items() if v}, indent=1))
    print(f"{len(checks.failed)} checks failed" + (f": {checks.failed}" if checks.failed else ""))
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
