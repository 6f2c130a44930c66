"""Where an edit's time goes: torch.profiler over a few decode tokens and a few denoising steps.

    python -m bench.profile --preset full --device cuda --dtype fp16 [--compile]
    python -m bench.profile --preset tiny                                  # the same on a CPU

Prints the operators that took the most time (CUDA time on a GPU, CPU time elsewhere) for each half,
after a warm-up run of the same work (so compiling, if asked for, is not in the profile).
"""

from __future__ import annotations

import argparse

import torch
from PIL import Image
from torch.profiler import ProfilerActivity, profile

from mgie_core.config import EditSettings, PlacementSettings
from mgie_core.frontends.flags import add_settings
from mgie_core.images import clip_pixel_values, pil_to_tensor
from mgie_core.runtime.compiled import compile_unet
from mgie_core.runtime.devices import resolve_device, resolve_dtype
from mgie_core.stages.decode import greedy_generate
from mgie_core.stages.imagine import Imagination
from mgie_core.stages.prompt import build_prompt
from mgie_core.stages.sample import sample

from .random_model import PRESETS, build_random_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny")
    add_settings(parser, PlacementSettings, only=("device", "dtype", "compile"))
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args(argv)
    preset, device = PRESETS[args.preset], resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(0)
    model = build_random_model(preset, device, dtype)
    image = Image.new("RGB", (preset.size, preset.size), (120, 90, 60))
    ids = torch.tensor([model.tokenizer.encode(build_prompt("make it look like winter", model.spec))], device=device)
    with torch.no_grad():
        features = model.mllm.image_features(clip_pixel_values(image, model.clip_image_config)[None])
        embeds = model.mllm.embed(ids, features, model.spec.im_patch_token_id)
    unet = compile_unet(model.unet) if args.compile else model.unet
    width = model.unet.config.cross_attention_dim
    conditioning = Imagination(torch.randn(1, 77, width, device=device, dtype=dtype),
                               torch.randn(1, 77, width, device=device, dtype=dtype))
    settings = EditSettings(max_new_tokens=args.tokens, num_inference_steps=args.steps)
    derive_config, sample_config = settings.derive_config(), settings.sample_config(model.recommended_sampling)
    halves = {
        f"decode ({args.tokens} tokens)": lambda: greedy_generate(model, ids, embeds, derive_config, compiled=args.compile),
        f"denoise ({args.steps} steps)": lambda: sample(unet, model.vae, model.scheduler_config, pil_to_tensor([image]),
                                                        conditioning, sample_config),
    }
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    for name, work in halves.items():
        work()  # warm-up (and compiling)
        with profile(activities=activities) as prof:
            work()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        print(f"### {name}, preset {args.preset}, {str(dtype).replace('torch.', '')} on {device.type}"
              f"{', compiled' if args.compile else ''}\n")
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
