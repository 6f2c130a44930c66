"""Draw the README's pictures: the before/after edit on the embedded mgie-mini, the icon, and a thumbnail of
each shipped workflow's graph.

    python scripts/make_readme_images.py          # rewrites docs/before-after.png, docs/icon.png, docs/workflows/*.png

The edit is the README's first command (images/scene.png, "make the biggest shape red", seed 13331, the
model's recommended settings); the thumbnails are drawn from workflows/*.json as ComfyUI lays them out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INSTRUCTION = "make the biggest shape red"
TITLES = {"LoadImage": "Load Image", "SaveImage": "Save Image", "PreviewImage": "Preview Image",
          "PreviewAny": "Preview Any", "ImageScaleBy": "Upscale Image By", "MGIELoader": "Load MGIE",
          "MGIEDeriveInstruction": "Derive Expressive Instruction", "MGIEVisualImagination": "Visual Imagination",
          "MGIESampler": "MGIE Sampler", "MGIEEdit": "MGIE Edit"}
LINK_COLOURS = {"IMAGE": (100, 181, 246), "MGIE_MODEL": (186, 104, 200), "CONDITIONING": (255, 167, 38),
                "MGIE_DERIVATION": (129, 199, 132), "STRING": (160, 160, 160)}


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: one bitmap size
        return ImageFont.load_default()


def before_after(out: Path) -> tuple[Image.Image, Image.Image]:
    """The input, the edit and both instructions, side by side (each picture shown 4x, pixels kept sharp).
    Returns the input and the edit."""
    from mgie_core import MGIEPipeline
    from mgie_core.images import load_image

    image = load_image(ROOT / "images" / "scene.png")
    result = MGIEPipeline.from_pretrained(None)(image, INSTRUCTION, seed=13331)
    side, pad, text_h = 256, 16, 84
    canvas = Image.new("RGB", (2 * side + 3 * pad, side + text_h + 2 * pad), "white")
    for i, (picture, label) in enumerate(((image, "before"), (result.images[0], "after"))):
        canvas.paste(picture.resize((side, side), Image.Resampling.NEAREST), (pad + i * (side + pad), pad))
        ImageDraw.Draw(canvas).text((pad + i * (side + pad) + 6, pad + 4), label, fill="black", font=font(16))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, side + 2 * pad), f"instruction: \u201c{INSTRUCTION}\u201d", fill="black", font=font(16))
    draw.text((pad, side + 2 * pad + 30), f"expressive: \u201c{result.expressive_instructions[0]}\u201d",
              fill=(20, 60, 160), font=font(16))
    _save(canvas, out)
    return image, result.images[0]


def icon(before: Image.Image, after: Image.Image, out: Path) -> Path:
    """Before and after of the same edit, with an arrow between them (256 x 128)."""
    canvas = Image.new("RGB", (256, 128), (30, 30, 36))
    canvas.paste(before.resize((104, 104), Image.Resampling.NEAREST), (8, 12))
    canvas.paste(after.resize((104, 104), Image.Resampling.NEAREST), (144, 12))
    draw = ImageDraw.Draw(canvas)
    draw.polygon([(118, 54), (134, 64), (118, 74)], fill=(255, 167, 38))
    return _save(canvas, out)


def workflow_thumbnail(workflow: dict, out: Path, width: int = 720) -> Path:
    """The graph as ComfyUI lays it out: a box per node with its title, a line per link in its type's colour."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    left = min(n["pos"][0] for n in nodes.values()) - 20
    top = min(n["pos"][1] for n in nodes.values()) - 20
    right = max(n["pos"][0] + n["size"][0] for n in nodes.values()) + 20
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes.values()) + 50
    scale = width / (right - left)
    canvas = Image.new("RGB", (width, round((bottom - top) * scale)), (32, 32, 38))
    draw = ImageDraw.Draw(canvas)

    def at(x: float, y: float) -> tuple[int, int]:
        return round((x - left) * scale), round((y - top) * scale)

    for _, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        a, b = nodes[src], nodes[dst]
        start = at(a["pos"][0] + a["size"][0], a["pos"][1] + 14 + 20 * src_slot)
        end = at(b["pos"][0], b["pos"][1] + 14 + 20 * dst_slot)
        draw.line([start, ((start[0] + end[0]) // 2, start[1]), ((start[0] + end[0]) // 2, end[1]), end],
                  fill=LINK_COLOURS.get(kind, (200, 200, 200)), width=2)
    for n in nodes.values():
        x0, y0 = at(*n["pos"])
        x1, y1 = at(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1] + 30)
        mgie = n["type"].startswith("MGIE")
        draw.rectangle((x0, y0, x1, y1), fill=(53, 53, 60), outline=(90, 90, 100))
        draw.rectangle((x0, y0, x1, y0 + 16), fill=(80, 60, 120) if mgie else (60, 60, 68))
        draw.text((x0 + 4, y0 + 2), n.get("title") or TITLES.get(n["type"], n["type"]), fill="white", font=font(12))
        if n.get("title"):  # a node renamed in the graph: say what it is
            draw.text((x0 + 4, y0 + 20), TITLES.get(n["type"], n["type"]), fill=(170, 170, 180), font=font(11))
    return _save(canvas, out)


def _save(image: Image.Image, out: Path) -> Path:
    from mgie_core.images import save_image_atomic

    print(save_image_atomic(image, out))
    return out


def main() -> int:
    docs = ROOT / "docs"
    icon(*before_after(docs / "before-after.png"), docs / "icon.png")
    for path in sorted((ROOT / "workflows").glob("*.json")):
        workflow_thumbnail(json.loads(path.read_text()), docs / "workflows" / f"{path.stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
