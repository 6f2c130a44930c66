"""``losses.png``: both losses of a run against its steps, drawn with PIL (no plotting library), beside
``losses.jsonl`` at each save. Two panels over one step axis, each on its own scale: L_ins falls from about
ten to below one while L_edit stays near the noise's variance, so one shared axis would flatten one of them."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from mgie_core.formats.run import PLOT, read_losses
from mgie_core.images import save_image_atomic

WIDTH, PANEL, MARGIN, LEFT = 720, 220, 28, 64
CURVES = (("loss_ins", "L_ins (instruction)", (25, 103, 210)), ("loss_edit", "L_edit (denoising)", (216, 96, 24)))


def plot_losses(records: list[dict]) -> Image.Image:
    """Both losses against steps, one panel each, with their range and the steps marked."""
    image = Image.new("RGB", (WIDTH, 2 * PANEL + 3 * MARGIN), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    steps = [r["step"] for r in records]
    for index, (key, label, colour) in enumerate(CURVES):
        top = MARGIN + index * (PANEL + MARGIN)
        values = [float(r[key]) for r in records if math.isfinite(float(r[key]))]
        _panel(draw, font, top, label, colour, steps[: len(values)], values)
    return image


def _panel(draw: ImageDraw.ImageDraw, font, top: int, label: str, colour, steps: list[int], values: list[float]):
    left, right, bottom = LEFT, WIDTH - MARGIN, top + PANEL - 18
    draw.rectangle((left, top, right, bottom), outline=(180, 180, 180))
    draw.text((left + 6, top + 4), label, fill=colour, font=font)
    if not values:
        return
    low, high = min(values), max(values)
    span = high - low or 1.0
    first, last = steps[0], steps[-1]
    x = lambda s: left + (right - left) * (s - first) / max(1, last - first)  # noqa: E731
    y = lambda v: bottom - (bottom - top - 20) * (v - low) / span  # noqa: E731
    points = [(x(s), y(v)) for s, v in zip(steps, values)]
    if len(points) > 1:
        draw.line(points, fill=colour, width=2)
    else:
        draw.ellipse((points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2), fill=colour)
    for value in (low, high):
        draw.text((4, y(value) - 6), f"{value:.3g}", fill=(90, 90, 90), font=font)
    for step in (first, last):
        draw.text((x(step) - 8, bottom + 3), str(step), fill=(90, 90, 90), font=font)
    draw.text(((left + right) // 2 - 12, bottom + 3), "step", fill=(90, 90, 90), font=font)


def write_loss_plot(output: Path) -> Path | None:
    """``OUTPUT/losses.png`` from ``OUTPUT/losses.jsonl``, written whole (None when there is nothing to plot yet)."""
    records = read_losses(output)
    return save_image_atomic(plot_losses(records), output / PLOT) if records else None
