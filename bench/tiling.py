"""Tiled against whole VAE encode + decode: how far apart the pictures are, whether joins show, what memory it saves.

    python -m bench.tiling --model ComfyUI/models/mgie/MGIE --device cuda --dtype fp16 --size 1024
    python -m bench.tiling --random-sd --device cuda --dtype fp16 --size 2048   # memory only (random weights)
    python -m bench.tiling --size 256                                            # mgie-mini's VAE on the CPU

The picture is images/scene.png (or --image) resized to --size. A seam would show as a row or column of pixels
that differs more than the rest, so beside the mean and maximum difference the table gives the worst row or column
mean against the median one. The tiles are diffusers' (the VAE's ``sample_size``, overlapping by a quarter, blended),
as the sampler uses them (``vae_tiling``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from mgie_core.config import PlacementSettings
from mgie_core.formats import load_model
from mgie_core.frontends.flags import add_settings
from mgie_core.images import pil_to_tensor
from mgie_core.model.mgie import move
from mgie_core.runtime.devices import resolve_device, resolve_dtype
from mgie_core.stages.sample import vae_tiles

from . import publish
from .memory import Peaks

EXAMPLE = Path(__file__).resolve().parents[1] / "images" / "scene.png"


def roundtrip(vae, image: torch.Tensor, tiled: bool, peaks: Peaks) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """(decoded pixels in [0, 1] on the CPU, seconds, peak bytes) of encode (latent mode) + decode."""
    peaks.reset()
    start = time.perf_counter()
    with torch.no_grad(), vae_tiles(vae, tiled):
        latents = vae.encode(image.to(vae.device, vae.dtype) * 2 - 1).latent_dist.mode()
        decoded = vae.decode(latents, return_dict=False)[0]
    pixels = (decoded.float() / 2 + 0.5).clamp(0, 1).cpu()
    return pixels, time.perf_counter() - start, peaks.read()


def seam_profile(difference: torch.Tensor) -> tuple[float, float]:
    """(worst, median) of the per-row and per-column mean differences, in /255."""
    profile = torch.cat([difference.mean(dim=(0, 1, 3)), difference.mean(dim=(0, 1, 2))]) * 255
    return float(profile.max()), float(profile.median())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Apple's MGIE folder or a bundle (default: the embedded mgie-mini)")
    parser.add_argument("--random-sd", action="store_true", help="SD1.5's VAE shape with random weights (memory only)")
    parser.add_argument("--image", default=str(EXAMPLE))
    parser.add_argument("--size", type=int, default=256)
    add_settings(parser, PlacementSettings, only=("device", "dtype"))
    parser.add_argument("--out", help="append the table to this markdown file")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.random_sd:
        from diffusers import AutoencoderKL

        from .random_model import SD_VAE

        torch.manual_seed(0)
        vae, source = AutoencoderKL(**SD_VAE), "SD1.5-shaped VAE, random weights"
    else:
        vae = load_model(args.model).vae
        source = f"the VAE of {args.model or 'mgie-mini'}"
    vae = move(vae, device, dtype).eval()
    picture = Image.open(args.image).convert("RGB").resize((args.size, args.size), Image.BICUBIC)
    image, peaks = pil_to_tensor([picture]), Peaks(device)
    roundtrip(vae, image[..., :64, :64], False, peaks)  # warm-up
    whole, whole_s, whole_peak = roundtrip(vae, image, False, peaks)
    tiled, tiled_s, tiled_peak = roundtrip(vae, image, True, peaks)
    difference = (whole - tiled).abs()
    worst, median = seam_profile(difference)
    gib = (lambda p: f"{p[0] / 2**30:.2f} / {p[1] / 2**30:.2f} GiB") if device.type == "cuda" else (lambda p: "-")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    text = "\n".join([
        f"### VAE tiling, {source}: {args.size}x{args.size}, tiles of {vae.tile_sample_min_size} px, "
        f"{str(dtype).replace('torch.', '')} on {name}",
        "", f"`python -m bench.tiling {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
        "| | whole | tiled |", "|---|---|---|",
        f"| encode + decode | {whole_s:.2f} s | {tiled_s:.2f} s |",
        f"| peak allocated / reserved | {gib(whole_peak)} | {gib(tiled_peak)} |",
        f"| difference, mean / max | | {float(difference.mean()) * 255:.2f} / {float(difference.max()) * 255:.1f} (/255) |",
        f"| worst row or column mean / median one | | {worst:.2f} / {median:.2f} (/255) |",
    ])
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
