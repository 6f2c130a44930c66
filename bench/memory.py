"""Peak GPU memory and time per edit in each memory mode, beside the unquantized, all-resident baseline.

    python -m bench.memory --preset full --device cuda --dtype fp16     # MGIE-7B-sized, random weights
    python -m bench.memory --preset tiny --device cpu --modes resident,int8

Modes: ``resident`` (every part on the device: the baseline), ``staged`` (the LLM and the UNet never on the GPU
together), ``int8`` and ``int4`` (staged, with the LLM's linear layers quantized). Each mode gets a fresh copy of
one random model (weights do not change memory or time), built on the CPU; the pipeline then places it. Per stage
it reports ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` (reserved is what makes a card run out),
and the time of one whole edit after a warm-up edit. Quality: whether each mode's answer tokens are the baseline's, and how far
its visual tokens and imagination are from the baseline's on the baseline's own answer (relative L2).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import platform
import sys
import time

import torch
from PIL import Image

from mgie_core.config import EditSettings, PlacementSettings
from mgie_core.frontends.flags import add_settings
from mgie_core.frontends.pipeline import MGIEPipeline
from mgie_core.images import clip_pixel_values
from mgie_core.runner import Edit, run_edit
from mgie_core.runtime.devices import resolve_device, resolve_dtype
from mgie_core.runtime.placement import CANDIDATES, Placement
from mgie_core.stages.derive import Derivation, select_visual_tokens

from . import publish
from .random_model import PRESETS, build_random_model

MODES = CANDIDATES  # the placements an edit's memory plan chooses from, by the plan's names
INSTRUCTION = "make it look like winter"


def wordless(model):
    """The random model's answers hold ids past its small tokenizer's vocabulary (it keeps LLaMA's 32011 rows, whose
    memory counts): decode those as ``<unk>``, since only the answer's length and states matter here."""
    tokenizer, size = model.tokenizer, model.tokenizer.vocab_size
    decode = tokenizer.decode
    tokenizer.decode = lambda ids: decode([i if int(i) < size else 0 for i in ids])
    return model


class Peaks:
    """Peak allocated / reserved bytes on a CUDA device since the last :meth:`reset` (zeros elsewhere)."""

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> tuple[int, int]:
        if not self.cuda:
            return 0, 0
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device), torch.cuda.max_memory_reserved(self.device)


def measure(base, mode: str, device: torch.device, dtype: torch.dtype, image: Image.Image, settings: EditSettings,
            reference: Derivation | None = None) -> tuple[dict, Derivation]:
    """One mode: load peak, per-stage peaks, seconds per edit; and the edit itself (for the quality columns)."""
    quant, staged = MODES[mode]
    peaks, row = Peaks(device), {}
    peaks.reset()
    pipe = MGIEPipeline(copy.deepcopy(base), placement=Placement(device, dtype, quant, staged))
    row["load"] = peaks.read()
    pipe(image, INSTRUCTION, settings)  # warm-up: kernels, cuBLAS handles, allocator pools
    if device.type == "cuda":
        torch.cuda.empty_cache()
    peaks.reset()

    def stage_starts(stage: str, index: int) -> None:  # the runner's hook as each stage starts
        if stage == "sample":
            row["derive"] = peaks.read()  # deriving and imagining
            peaks.reset()

    start = time.perf_counter()
    out = run_edit(pipe, Edit.of(image, INSTRUCTION, seed=settings.seed), settings.derive_config(),
                   pipe.sample_config(settings), stage_starts)[0]
    derivation = out.derivation
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    row["seconds"] = time.perf_counter() - start
    row["sample"] = peaks.read()
    row["edit"] = tuple(max(a, b) for a, b in zip(row["derive"], row["sample"]))
    if reference is not None:
        row["quality"] = quality(pipe, image, derivation, reference)
    del pipe, out
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row, derivation


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm())


@torch.no_grad()
def quality(pipe: MGIEPipeline, image: Image.Image, derivation: Derivation, reference: Derivation) -> dict:
    """Answer tokens against the reference's, and the visual tokens and imagination this mode computes for the
    reference's own sequence (teacher-forced, so a different greedy answer does not hide the precision's error)."""
    model, ids = pipe.model, reference.token_ids[0]
    same = torch.equal(derivation.token_ids[0], ids)
    pipe.place("derive")
    features = model.mllm.image_features(clip_pixel_values(image, model.clip_image_config)[None])
    embeds = model.mllm.embed(ids[None].to(model.mllm.device), features, model.spec.im_patch_token_id)
    states = model.mllm.llm(inputs_embeds=embeds).last_hidden_state[0, :-1]  # as decoding: none after the last
    visual = select_visual_tokens(states, ids, model.spec.visual_token_ids[0], model.spec.num_visual_tokens)[None]
    forced = dataclasses.replace(reference, visual_tokens=visual)
    ours, theirs = pipe.imagine(forced).imagination, pipe.imagine(reference).imagination
    return {"tokens": "same" if same else "differ", "visual": relative(visual, reference.visual_tokens),
            "imagination": relative(ours, theirs)}


def table(rows: dict[str, dict], header: str, cuda: bool) -> str:
    gib = (lambda pair: f"{pair[0] / 2**30:.2f} / {pair[1] / 2**30:.2f}") if cuda else (lambda pair: "-")
    lines = [header, "", "| mode | load peak | derive peak | sample peak | edit peak | one edit | ratio to resident "
             "| answer tokens | visual tokens rel. err. | imagination rel. err. |", "|---|---|---|---|---|---|---|---|---|---|"]
    base = rows.get("resident", {}).get("seconds")
    for mode, r in rows.items():
        ratio = f"{r['seconds'] / base:.2f}x" if base else ""
        q = r.get("quality")
        tokens, visual, imagination = ((q["tokens"], f"{q['visual']:.2e}", f"{q['imagination']:.2e}") if q else
                                       ("reference" if mode == "resident" else "-", "-", "-"))
        lines.append(f"| {mode} | {gib(r['load'])} | {gib(r['derive'])} | {gib(r['sample'])} | {gib(r['edit'])} | "
                     f"{r['seconds']:.2f} s | {ratio} | {tokens} | {visual} | {imagination} |")
    if cuda:
        lines += ["", "Memory columns: GiB allocated / reserved (torch.cuda.max_memory_*), peak of each stage."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny")
    add_settings(parser, PlacementSettings, only=("device", "dtype"))
    parser.add_argument("--modes", default="resident,staged,int8,int4", help="comma-separated, from " + ", ".join(MODES))
    parser.add_argument("--steps", type=int, help="denoising steps (preset default)")
    parser.add_argument("--size", type=int, help="image side (preset default)")
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--out", help="append the table to this markdown file")
    args = parser.parse_args(argv)
    preset, device = PRESETS[args.preset], resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    steps, size = args.steps or preset.steps, args.size or preset.size
    torch.manual_seed(0)
    began = time.perf_counter()
    # Built on the device (fast), kept on the CPU: every mode starts from host memory, as loading does.
    base = wordless(build_random_model(preset, device, dtype).to("cpu"))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    print(f"built the {args.preset} model in {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    image = Image.new("RGB", (size, size), (120, 90, 60))
    settings = EditSettings(seed=0, num_inference_steps=steps, max_new_tokens=args.answer_tokens + 8)
    rows, reference = {}, None
    for mode in sorted(modes, key=lambda m: m != "resident"):  # the baseline first: the others compare with it
        try:
            rows[mode], derivation = measure(base, mode, device, dtype, image, settings, reference)
        except Exception as error:  # one mode failing (e.g. int4 without its kernel) must not lose the others
            print(f"{mode}: failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            continue
        reference = derivation if mode == "resident" else reference
        print(f"{mode}: {rows[mode]}", file=sys.stderr, flush=True)
    import diffusers
    import transformers

    try:
        import torchao
        ao = f", torchao {torchao.__version__}"
    except Exception:  # noqa: BLE001
        ao = ", no torchao"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    header = (f"### memory modes, preset {args.preset}: {size}x{size}, {steps} steps, {args.answer_tokens}+8 answer "
              f"tokens, {str(dtype).replace('torch.', '')} on {device.type} ({name})\n\n"
              f"torch {torch.__version__}, transformers {transformers.__version__}, diffusers {diffusers.__version__}{ao}; "
              f"`python -m bench.memory {' '.join(argv if argv is not None else sys.argv[1:])}`")
    text = table(rows, header, device.type == "cuda")
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
