"""Speed and memory of our pipeline against the reference stack, stage by stage, in one run.

    python -m bench.speed --preset full --device cuda          # MGIE-7B-sized, random weights
    python -m bench.speed --preset tiny --device cpu           # the same code at CPU scale

The model is built with random weights (no download), so timings cannot depend on the weights and
answers are forced to a fixed length (``--answer-tokens`` + the [IMG] tokens). The reference stack is
transformers' default ``generate`` (as Apple's demo calls it) plus diffusers'
``StableDiffusionInstructPix2PixPipeline`` with default settings, fed the same embeddings.
Results are printed as a markdown table and, with ``--out``, appended to a file (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from PIL import Image

from mgie_core.config import EditSettings, PlacementSettings
from mgie_core.frontends.flags import add_settings
from mgie_core.images import clip_pixel_values, pil_to_tensor
from mgie_core.model.mgie import MGIEModel
from mgie_core.runtime.compiled import compile_unet
from mgie_core.runtime.devices import resolve_device, resolve_dtype
from mgie_core.stages.decode import greedy_generate
from mgie_core.stages.derive import Derivation
from mgie_core.stages.imagine import imagine
from mgie_core.stages.prompt import build_prompt
from mgie_core.stages.sample import sample
from mgie_core.stages.schedulers import make_scheduler

from . import publish
from .random_model import PRESETS, build_random_model


# -- timing helpers ------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable, repeat: int = 1):
    """(result, best seconds of ``repeat`` calls, peak bytes) of ``fn`` (peak on CUDA; process max RSS on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    best = float("inf")
    for _ in range(max(1, repeat)):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss_bytes()
    return result, best, peak


def rss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# -- our pipeline, stage by stage ------------------------------------------------------------------
def run_ours(model: MGIEModel, images: list[Image.Image], instruction: str, tokens: int, steps: int,
             device: torch.device, repeat: int = 1, unet: torch.nn.Module | None = None,
             compiled: bool = False) -> dict[str, float]:
    """Our stages; ``compiled``: the compiled decode step, and ``unet`` (a compiled UNet) denoises."""
    spec, unet = model.spec, unet or model.unet
    config = EditSettings(max_new_tokens=tokens + spec.num_visual_tokens).derive_config()
    ids = torch.tensor([model.tokenizer.encode(build_prompt(instruction, spec))], device=device)
    out: dict[str, float] = {}
    pixels = torch.stack([clip_pixel_values(im, model.clip_image_config) for im in images])

    def prefill():
        with torch.no_grad():
            features = model.mllm.image_features(pixels)
            embeds = model.mllm.embed(ids.expand(len(images), -1), features, spec.im_patch_token_id)
            return model.mllm.llm(inputs_embeds=embeds).last_hidden_state

    _, out["vision + prefill"], _ = timed(device, prefill, repeat)
    results = []

    def generate():  # one instruction over the batch: all rows decode together
        results.clear()
        with torch.no_grad():
            features = model.mllm.image_features(pixels)
            batch_ids = ids.expand(len(images), -1)
            embeds = model.mllm.embed(batch_ids, features, spec.im_patch_token_id)
            results.extend(greedy_generate(model, batch_ids, embeds, config, compiled=compiled))

    _, seconds, out["peak LLM"] = timed(device, generate, repeat)
    out["derive (all tokens)"] = seconds
    out["decode per token (batch)"] = max(0.0, seconds - out["vision + prefill"]) / config.max_new_tokens
    states = torch.stack([s[-(spec.num_visual_tokens + 1):-1] for _, s in results])
    derivation = _fake_derivation(states, [r[0] for r in results])
    imagination, out["edit head"], _ = timed(device, lambda: imagine(model.edit_head, derivation), repeat)
    pix = pil_to_tensor(images)
    with torch.no_grad():
        _, out["VAE encode"], _ = timed(device, lambda: model.vae.encode((pix * 2 - 1).to(device, model.vae.dtype)), repeat)
    cfg, m = EditSettings(num_inference_steps=steps).sample_config(model.recommended_sampling), model
    res, out["denoise total (incl. VAE)"], out["peak diffusion"] = timed(
        device, lambda: sample(unet, m.vae, m.scheduler_config, pix, imagination, cfg, torch.Generator().manual_seed(0)),
        repeat)
    out["denoise per step"] = out["denoise total (incl. VAE)"] / steps
    latents = res.latents.to(device, model.vae.dtype)
    with torch.no_grad():
        _, out["VAE decode"], _ = timed(device, lambda: model.vae.decode(latents), repeat)
    out["end to end"] = out["derive (all tokens)"] + out["edit head"] + out["denoise total (incl. VAE)"]
    return out


def _fake_derivation(states: torch.Tensor, ids: list[torch.Tensor]) -> Derivation:
    return Derivation(tuple(ids), tuple(0 for _ in ids), states, tuple("" for _ in ids), tuple(False for _ in ids))


# -- the reference stack -------------------------------------------------------------------------
def run_reference(model: MGIEModel, images: list[Image.Image], instruction: str, tokens: int, steps: int,
                  device: torch.device, repeat: int = 1) -> dict[str, float]:
    from transformers import LlamaForCausalLM

    spec, out = model.spec, {}
    with torch.device("meta"):  # a shell: building 7B fresh weights on the CPU would take minutes
        lm = LlamaForCausalLM(model.mllm.llm.config)
    lm.model, lm.lm_head = model.mllm.llm, model.mllm.lm_head
    ids = torch.tensor([model.tokenizer.encode(build_prompt(instruction, spec))], device=device)
    pixels = torch.stack([clip_pixel_values(im, model.clip_image_config) for im in images])
    new = tokens + spec.num_visual_tokens
    hidden = []

    def generate():
        hidden.clear()
        with torch.no_grad():
            for i in range(len(images)):
                embeds = model.mllm.embed(ids, model.mllm.image_features(pixels[i : i + 1]), spec.im_patch_token_id)
                g = lm.generate(input_ids=ids, inputs_embeds=embeds, do_sample=False, num_beams=1, max_new_tokens=new,
                                min_new_tokens=new, no_repeat_ngram_size=3, return_dict_in_generate=True,
                                output_hidden_states=True, pad_token_id=0, eos_token_id=2)
                hidden.append(torch.cat([h[-1] for h in g.hidden_states], dim=1)[0, -(spec.num_visual_tokens + 1):-1])

    _, out["derive (all tokens)"], out["peak LLM"] = timed(device, generate, repeat)
    imagination = imagine(model.edit_head, _fake_derivation(torch.stack(hidden), [ids[0]] * len(images)))
    pipe = StableDiffusionInstructPix2PixPipeline(vae=model.vae, text_encoder=None, tokenizer=None, unet=model.unet,
                                                  scheduler=make_scheduler("euler_ancestral", model.scheduler_config),
                                                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    emb = imagination.imagination.to(model.unet.dtype)
    null = imagination.null_imagination.to(model.unet.dtype)
    _, out["denoise total (incl. VAE)"], out["peak diffusion"] = timed(
        device, lambda: pipe(image=images, prompt_embeds=emb, negative_prompt_embeds=null, num_inference_steps=steps,
                             generator=torch.Generator(device=device).manual_seed(0), output_type="pt"), repeat)
    out["denoise per step"] = out["denoise total (incl. VAE)"] / steps
    out["end to end"] = out["derive (all tokens)"] + out["denoise total (incl. VAE)"]
    return out


def format_results(rows: dict[int, dict[str, dict]], header: str) -> str:
    """One line per batch and stage: each side's median, and the reference's time over ours."""
    sides = list(next(iter(rows.values())))
    ours = [side for side in sides if side != "reference"]
    head = " | ".join(sides) + "".join(f" | ratio (ref / {side})" for side in ours if "reference" in sides)
    lines = [header, "", f"| batch | stage | {head} |", "|---|---|" + "---|" * (head.count("|") + 1)]
    for batch, results in rows.items():
        stages = list(dict.fromkeys(stage for side in sides for stage in results[side]))
        for stage in stages:
            is_mem = stage.startswith("peak")
            values = [results[side].get(stage) for side in sides]
            cells = [_format(v, is_mem) for v in values]
            ref = results.get("reference", {}).get(stage)
            if "reference" in sides:
                cells += [f"{ref / results[side][stage]:.2f}x" if ref is not None and results[side].get(stage)
                          and not is_mem else "" for side in ours]
            lines.append(f"| {batch} | {stage} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _format(value: float | None, is_mem: bool) -> str:
    if value is None:
        return ""
    if is_mem:
        return f"{value / 2**30:.2f} GiB"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each stage's median over repeated runs (peaks: the largest)."""
    stages = runs[0]
    return {k: (max if k.startswith("peak") else statistics.median)([r[k] for r in runs]) for k in stages}


def _progress(text: str) -> None:
    """Partial results on stderr as they come (a run cut short still says where its time went)."""
    print(text, file=sys.stderr, flush=True)


def bench_batch(model: MGIEModel, images: list[Image.Image], args: argparse.Namespace, steps: int,
                device: torch.device, compiled_unet: torch.nn.Module | None) -> dict[str, dict[str, float]]:
    """Every side on one batch: a warm-up edit each (the compiled side compiles then), then ``--repeat`` runs
    of each, the sides' order alternating, and each stage's median."""
    instruction, tokens = "make it look like winter", args.answer_tokens
    sides = {"ours": lambda: run_ours(model, images, instruction, tokens, steps, device)}
    if compiled_unet is not None:
        sides["ours compiled"] = lambda: run_ours(model, images, instruction, tokens, steps, device,
                                                  unet=compiled_unet, compiled=True)
    if not args.no_reference:
        sides["reference"] = lambda: run_reference(model, images, instruction, tokens, steps, device)
    first = {}
    for name, run in sides.items():
        began = time.perf_counter()
        run()
        first[name] = time.perf_counter() - began
    runs: dict[str, list] = {name: [] for name in sides}
    for repeat in range(max(1, args.repeat)):
        for name in list(sides) if repeat % 2 == 0 else list(sides)[::-1]:
            runs[name].append(sides[name]())
    results = {name: median_of(r) for name, r in runs.items()}
    if compiled_unet is not None:
        results["ours compiled"]["first edit (compiles)"] = first["ours compiled"]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny")
    add_settings(parser, PlacementSettings, only=("device", "dtype"))
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, help="denoising steps (preset default: 100 full, 20 tiny)")
    parser.add_argument("--size", type=int, help="image side (preset default: 512 full, 128 tiny)")
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--repeat", type=int, default=3,
                        help="whole runs of each side, the sides' order alternating; the median is reported")
    parser.add_argument("--compile", action="store_true",
                        help="also ours compiled (decode step and UNet); its first edit, which compiles, is reported")
    parser.add_argument("--out", help="append the table to this markdown file")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    steps, size = args.steps or preset.steps, args.size or preset.size
    torch.manual_seed(0)
    began = time.perf_counter()
    model = build_random_model(preset, device, dtype)
    _progress(f"built the {args.preset} model in {time.perf_counter() - began:.1f} s")
    image = Image.new("RGB", (size, size), (120, 90, 60))
    compiled_unet = compile_unet(model.unet) if args.compile else None
    rows = {}
    for batch in (int(b) for b in args.batch.split(",")):
        rows[batch] = bench_batch(model, [image] * batch, args, steps, device, compiled_unet)
        _progress(format_results({batch: rows[batch]}, f"batch {batch}:"))
    import diffusers
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    header = (f"### preset {args.preset}: {size}x{size}, {steps} steps, {args.answer_tokens}+8 answer tokens, "
              f"median of {max(1, args.repeat)} (order alternating, after a warm-up edit of each side), "
              f"{str(dtype).replace('torch.', '')} on {device.type} ({name}, {torch.get_num_threads()} threads)\n\n"
              f"torch {torch.__version__}, transformers {transformers.__version__}, diffusers {diffusers.__version__}; "
              f"`python -m bench.speed {' '.join(argv if argv is not None else sys.argv[1:])}`")
    text = format_results(rows, header)
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
