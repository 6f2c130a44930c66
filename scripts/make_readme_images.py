"""Draw the README's pictures: the before/after edit on the embedded mgie-mini, the icon, and a fine-tuning run's
loss plot and last sample edit.

    python scripts/make_readme_images.py          # rewrites docs/before-after.png, docs/icon.png and
                                                  # docs/fine-tuning-losses.png, docs/fine-tuning-sample.png

The edit is the README's first command (images/scene.png, "make the biggest shape red", the default seed, the
model's recommended settings). The workflows' thumbnails are screenshots of ComfyUI's real frontend
(scripts/browser_check.py --thumbnails).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INSTRUCTION = "make the biggest shape red"


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
    result = MGIEPipeline.from_pretrained(None)(image, INSTRUCTION)  # the default seed, as the README says
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


def fine_tuning(docs: Path) -> None:
    """Train mgie-mini on the example sepia pairs for 100 steps, as the template does (``train/finetune.py``), and
    keep the run's ``losses.png`` and its last sample edit (shown 3x, pixels kept sharp)."""
    from mgie_core.formats.run import PLOT, latest_sample

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        subprocess.run([sys.executable, str(ROOT / "train" / "finetune.py"), "--data", str(ROOT / "images" / "sepia-pairs"),
                        "--output", str(run), "--max-steps", "100", "--learning-rate", "0.003", "--lora-rank", "8",
                        "--sample-every", "25", "--seed", "0"], check=True)
        _save(Image.open(run / PLOT).convert("RGB"), docs / "fine-tuning-losses.png")
        sample = Image.open(latest_sample(run)).convert("RGB")
        _save(sample.resize((sample.width * 3, sample.height * 3), Image.Resampling.NEAREST),
              docs / "fine-tuning-sample.png")


def _save(image: Image.Image, out: Path) -> Path:
    from mgie_core.images import save_image_atomic

    print(save_image_atomic(image, out))
    return out


def main() -> int:
    docs = ROOT / "docs"
    icon(*before_after(docs / "before-after.png"), docs / "icon.png")
    fine_tuning(docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
