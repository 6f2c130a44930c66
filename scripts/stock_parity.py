"""MGIE Sampler against ComfyUI's stock path (DualCFGGuider + SamplerCustomAdvanced) in a real ComfyUI.

    python scripts/stock_parity.py prompt --model tiny --sampler euler --scheduler normal --denoising-steps 100 > p.json
    python3 ../shared/tools/comfy/run_workflow.py --project . --workflow p.json --input-image images/scene.png \
        --extra-model-paths extra_model_paths.yaml --expect-images 2 > run.json
    python scripts/stock_parity.py compare run.json       # max and mean difference, in 1/255

The prompt runs both paths on one image with the same seed, steps and guidance, and saves A_mgie and
B_stock. MGIE Sampler's scheduler is named after ComfyUI's sampler (``_karras`` with the karras scheduler).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the repository root

from mgie_core.config import SETTINGS, EditSettings  # noqa: E402

PAPER = EditSettings().sample_config()  # what MGIE Sampler's 0 / auto resolve to for MGIE-7B: the paper's values


def prompt(model: str, sampler: str, scheduler: str, steps: int, text: float, image: float, seed: int) -> dict:
    mgie_scheduler = f"{sampler}_karras" if scheduler == "karras" else sampler
    sampling = {"seed": seed, "steps": steps, "guidance_scale": text, "image_guidance_scale": image,
                "scheduler": mgie_scheduler, "max_side": 0}
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "scene.png"}},
        "2": {"class_type": "MGIELoader", "inputs": {"model": model, "dtype": "fp32", "memory": "auto"}},
        "3": {"class_type": "MGIEDeriveInstruction", "inputs": {"mgie_model": ["2", 0], "image": ["1", 0],
              "instruction": "make the biggest shape red", "max_new_tokens": SETTINGS["max_new_tokens"].default,
              "expressive_override": ""}},
        "4": {"class_type": "MGIEVisualImagination", "inputs": {"derivation": ["3", 0]}},
        "5": {"class_type": "MGIESampler", "inputs": {"mgie_model": ["2", 0], "image": ["1", 0], "positive": ["4", 0],
              "negative": ["4", 1], **sampling}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "A_mgie"}},
        "7": {"class_type": "InstructPixToPixConditioning", "inputs": {"positive": ["4", 0], "negative": ["4", 1],
              "vae": ["2", 2], "pixels": ["1", 0]}},
        "8": {"class_type": "DualCFGGuider", "inputs": {"model": ["2", 1], "cond1": ["7", 0], "cond2": ["7", 1],
              "negative": ["4", 1], "cfg_conds": text, "cfg_cond2_negative": image, "style": "regular"}},
        "9": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "10": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}},
        "11": {"class_type": "BasicScheduler", "inputs": {"model": ["2", 1], "scheduler": scheduler, "steps": steps,
               "denoise": 1.0}},
        "12": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["9", 0], "guider": ["8", 0],
               "sampler": ["10", 0], "sigmas": ["11", 0], "latent_image": ["7", 2]}},
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["2", 2]}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "B_stock"}},
    }


def compare(summary: dict) -> str:
    paths = {o["filename"][0]: o["path"] for o in summary["outputs"] if o.get("kind") == "images"}
    a, b = (np.asarray(Image.open(paths[k]).convert("RGB")).astype(int) for k in ("A", "B"))
    diff = np.abs(a - b)
    return f"max {diff.max()}/255, mean {diff.mean():.3f}/255, pixels over 2/255: {(diff > 2).any(-1).mean():.2%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prompt", help="write the API-format prompt to stdout")
    p.add_argument("--model", default="mgie-mini (embedded)")
    p.add_argument("--sampler", default="euler", help="ComfyUI's sampler name (default: %(default)s)")
    p.add_argument("--scheduler", default="normal", help="ComfyUI's scheduler name (default: %(default)s)")
    p.add_argument("--denoising-steps", type=int, default=PAPER.num_inference_steps, help="(default: %(default)s)")
    p.add_argument("--guidance", type=float, default=PAPER.guidance_scale, help="text guidance (default: %(default)s)")
    p.add_argument("--image-guidance", type=float, default=PAPER.image_guidance_scale,
                   help="image guidance (default: %(default)s)")
    p.add_argument("--seed", type=int, default=7)
    c = sub.add_parser("compare", help="compare the two images of a run_workflow.py JSON summary")
    c.add_argument("summary")
    args = parser.parse_args()
    if args.command == "prompt":
        print(json.dumps(prompt(args.model, args.sampler, args.scheduler, args.denoising_steps, args.guidance,
                                args.image_guidance, args.seed), indent=1))
    else:
        print(compare(json.loads(open(args.summary).read())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
