"""A real ComfyUI with this pack, and its web page in headless Chromium: what scripts/browser_check.py drives.

Standard library, Pillow and selenium (``pip install selenium``; Debian's ``chromium`` and ``chromium-driver``).
ComfyUI itself comes from ../shared/tools/comfy/setup.sh (INSTALL_FRONTEND=1 for the web frontend).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PACK = "ComfyUI-MGIE"  # the folder name under custom_nodes/: the Templates address uses it
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WINDOW = (2000, 1300)
CHROME = (80, 110, 40, 90)  # left, top, right, bottom margins the frontend's bars and buttons cover

# the page's nodes as boxes (title bar included) and the pairs that overlap
OVERLAPS_JS = """
const T = LiteGraph.NODE_TITLE_HEIGHT, nodes = app.graph.nodes, box = (n) =>
  [n.pos[0], n.pos[1] - T, n.pos[0] + n.size[0], n.pos[1] + n.size[1]];
const pairs = [];
for (let i = 0; i < nodes.length; i++) for (let j = i + 1; j < nodes.length; j++) {
  const a = box(nodes[i]), b = box(nodes[j]);
  if (a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]) pairs.push([nodes[i].title, nodes[j].title]);
}
return pairs;"""


class Server:
    """``main.py --cpu`` of the ComfyUI at ``comfy_dir``, with the pack linked into custom_nodes/."""

    def __init__(self, comfy_dir: Path, python: Path, port: int, log: Path):
        self.comfy_dir, self.python, self.port, self.log = comfy_dir, python, port, log
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300) -> None:
        link = self.comfy_dir / "custom_nodes" / PACK
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        for picture in (ROOT / "images").glob("*.png"):  # the workflows load scene.png and scene-masked.png
            shutil.copy(picture, self.comfy_dir / "input" / picture.name)
        command = [str(self.python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(command, cwd=self.comfy_dir, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited at start; see {self.log}")
            try:
                self.get("/api/system_stats")
                return
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s; see {self.log}")

    def get(self, path: str) -> tuple[bytes, str]:
        with urllib.request.urlopen(self.url + path, timeout=30) as reply:
            return reply.read(), reply.headers.get("Content-Type", "")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


class Page:
    """ComfyUI's frontend in headless Chromium, driven through its ``app`` object."""

    def __init__(self, url: str, chromium: str, chromedriver: str):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        self.profile = tempfile.TemporaryDirectory(prefix="mgie-chromium-")  # a fresh profile, removed at close
        for flag in [*CHROMIUM_FLAGS, f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={self.profile.name}"]:
            options.add_argument(flag)
        options.binary_location = chromium
        self.driver = webdriver.Chrome(service=Service(chromedriver), options=options)
        self.driver.set_script_timeout(120)
        self.driver.get(url)
        self.wait_for("return !!(window.app && window.app.graph && window.app.extensionManager)", 120)
        time.sleep(3)  # the first-run Templates dialog, if any, opens now
        self.escape()
        self.run("app.extensionManager.setting.set('Comfy.Minimap.Visible', false)")

    def run(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def call(self, body: str, *args):
        """Await an async ``body`` (its last expression's value comes back)."""
        wrapped = f"const done = arguments[arguments.length - 1]; (async () => {{ {body} }})().then(done, " \
                  "(e) => done({error: String(e)}));"
        return self.driver.execute_async_script(wrapped, *args)

    def wait_for(self, condition: str, timeout: float) -> None:
        deadline = time.time() + timeout
        while not self.run(condition):
            if time.time() > deadline:
                raise TimeoutError(condition)
            time.sleep(0.5)

    def escape(self) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        self.driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        time.sleep(0.5)

    def fetch(self, path: str) -> dict:
        return self.call("const r = await fetch(arguments[0]); const body = await r.text();"
                         "return {status: r.status, type: r.headers.get('content-type'), body: body.slice(0, 200000)};",
                         path)

    def load(self, workflow: dict) -> None:
        self.call("await app.loadGraphData(arguments[0]); return true;", workflow)
        time.sleep(1.5)

    def prompt(self) -> dict:
        return self.call("return (await app.graphToPrompt()).output;")

    def queue(self) -> str:
        """Queue the graph as the Run button does; return the new prompt's id once it has finished."""
        before = self.history_ids()
        self.call("await app.queuePrompt(0, 1); return true;")
        while True:
            time.sleep(1)
            queue = json.loads(self.fetch("/api/queue")["body"])
            if queue["queue_running"] or queue["queue_pending"]:
                continue
            new = self.history_ids() - before
            if new:
                return new.pop()

    def history_ids(self) -> set[str]:
        """The ids of the prompts in the server's history (read whole: the history itself outgrows ``fetch``)."""
        return set(self.call("const r = await fetch('/api/history'); return Object.keys(await r.json());"))

    def history(self, prompt_id: str) -> dict:
        return json.loads(self.fetch(f"/api/history/{prompt_id}")["body"])[prompt_id]

    def overlaps(self) -> list:
        return self.run(OVERLAPS_JS)

    def command(self, name: str) -> None:
        self.call("await app.extensionManager.command.execute(arguments[0]); return true;", name)
        time.sleep(1.5)

    def graph_shot(self, pad: int = 24) -> Image.Image:
        """The whole graph on screen at a scale that fits it (at most 1), cropped to it: what an artist sees."""
        self.call("await app.extensionManager.setting.set('Comfy.RightSidePanel.IsOpen', false); return true;")
        bounds = self.run("const T = LiteGraph.NODE_TITLE_HEIGHT, n = app.graph.nodes; return ["
                          "Math.min(...n.map(x => x.pos[0])), Math.min(...n.map(x => x.pos[1] - T)),"
                          "Math.max(...n.map(x => x.pos[0] + x.size[0])), Math.max(...n.map(x => x.pos[1] + x.size[1]))];")
        left, top, right, bottom = bounds[0] - pad, bounds[1] - pad, bounds[2] + pad, bounds[3] + pad
        width, height = self.run("return [window.innerWidth, window.innerHeight]")
        room_w, room_h = width - CHROME[0] - CHROME[2], height - CHROME[1] - CHROME[3]
        scale = min(1.0, room_w / (right - left), room_h / (bottom - top))
        x0 = CHROME[0] + (room_w - (right - left) * scale) / 2
        y0 = CHROME[1] + (room_h - (bottom - top) * scale) / 2
        self.run("const ds = app.canvas.ds; ds.scale = arguments[0]; ds.offset = [arguments[1], arguments[2]];"
                 "app.canvas.setDirty(true, true);", scale, x0 / scale - left, y0 / scale - top)
        time.sleep(1.5)  # the DOM widgets follow the canvas on the next frames
        shot = Image.open(io.BytesIO(self.driver.get_screenshot_as_png())).convert("RGB")
        box = (round(x0), round(y0), round(x0 + (right - left) * scale), round(y0 + (bottom - top) * scale))
        return shot.crop(box)

    def screenshot(self, path: Path) -> Path:
        self.driver.save_screenshot(str(path))
        return path

    def close(self) -> None:
        self.driver.quit()
        self.profile.cleanup()
