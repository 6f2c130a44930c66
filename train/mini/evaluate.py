"""Measure mgie-mini (and its InstructPix2Pix twin) on held-out scenes of the edit world.

    python -m train.mini.evaluate [--model PATH] [--twin PATH] [--count 200] [--seed 12345] [--family ambiguous]
        [--scheduler euler_ancestral] [--steps 100] [--guidance-scale 2] [--given-expressive] [--json FILE]
        [--against FILE.json[:COLUMN]] [--grid FILE.png]

Prints, per instruction family (ambiguous ones also per kind): (a) expressive-instruction accuracy,
(b) edit success (train/mini/checks.py), and the ceiling of (b): the success of the model's own VAE
round trip of the ground truth, the best any sampler can do through that VAE. With ``--twin``, also
scene by scene: where only one of MGIE-mini and the twin succeeded, and whether that split is chance
(exact McNemar test). Held-out scenes come from another seed than training's stream. ``--grid FILE.png``
also draws input / instruction / expressive / output / ground truth.

``--json`` keeps every scene's outcome too (one "1"/"0" character per scene and column), so a later run
can be paired with it without the models that made it: ``--against OLD.json`` (MGIE-mini's column of that
run) or ``--against OLD.json:ip2p_twin`` (its twin's), on the same scenes; the sampler, steps and guidance
may differ, which is how a shorter schedule is tested against the paper's.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from mgie_core import EditSettings, MGIEPipeline, SampleConfig, load_model, make_generator, sample
from mgie_core.errors import InputError, MGIEError
from mgie_core.files import atomic_write
from mgie_core.frontends.flags import add_settings, settings_from
from mgie_core.images import pil_to_tensor, tensor_to_pil
from mgie_core.stages.imagine import Imagination

from . import world
from .checks import edit_ok, expressive_ok
from .twin import load_twin

HELD_OUT_SEED = 12345
SCENES = ("families", "count", "seed")  # the settings that choose the scenes: two runs pair only when they agree


@dataclass
class Result:
    edit: world.Edit
    expressive: str | None
    output: Image.Image
    expressive_ok: bool | None
    edit_ok: bool


def evaluate_mgie(model, edits: list[world.Edit], settings: EditSettings, batch: int = 25,
                  given_expressive: bool = False) -> list[Result]:
    """Derive and edit with ``settings`` (its seed draws every batch's noise); ``given_expressive`` teacher-forces
    the true expressive instruction instead (the [IMG] tokens still come from the model): what the diffusion side
    does when the MLLM reads right."""
    pipe = MGIEPipeline(model, "cpu", "fp32")
    results = []
    for start in range(0, len(edits), batch):
        chunk = edits[start : start + batch]
        pairs = [world.images(e) for e in chunk]
        given = [e.expressive for e in chunk] if given_expressive else None
        out = pipe([p[0] for p in pairs], [e.instruction for e in chunk], settings, expressive=given)
        for e, (before, target), text, image in zip(chunk, pairs, out.expressive_instructions, out.images):
            results.append(Result(e, text, image, expressive_ok(e, text), edit_ok(e, before, image, target).ok))
    return results


def evaluate_twin(twin, edits: list[world.Edit], config: SampleConfig, seed: int, batch: int = 25) -> list[Result]:
    """Edit with a twin, conditioned on the brief instructions."""
    texts = [e.instruction for e in edits]
    results = []
    for start in range(0, len(edits), batch):
        chunk, words = edits[start : start + batch], texts[start : start + batch]
        pairs = [world.images(e) for e in chunk]
        with torch.no_grad():
            cond = twin.encode(words)
            null = twin.encode([""] * len(chunk))
        out = sample(twin.unet, twin.vae, twin.scheduler_config, pil_to_tensor([p[0] for p in pairs]),
                     Imagination(cond, null), config, make_generator(seed))
        for e, (before, target), image in zip(chunk, pairs, tensor_to_pil(out.images)):
            results.append(Result(e, None, image, None, edit_ok(e, before, image, target).ok))
    return results


@torch.no_grad()
def evaluate_ceiling(vae, edits: list[world.Edit], batch: int = 50) -> list[Result]:
    """The ground truth encoded and decoded by ``vae``: what a perfect denoiser would output."""
    vae = vae.float()
    results = []
    for start in range(0, len(edits), batch):
        chunk = edits[start : start + batch]
        pairs = [world.images(e) for e in chunk]
        x = pil_to_tensor([p[1] for p in pairs]) * 2 - 1
        decoded = vae.decode(vae.encode(x).latent_dist.mode()).sample / 2 + 0.5
        for e, (before, target), image in zip(chunk, pairs, tensor_to_pil(decoded)):
            results.append(Result(e, None, image, None, edit_ok(e, before, image, target).ok))
    return results


def groups(edits: list[world.Edit]) -> dict[str, list[int]]:
    """The table's rows (family, ambiguous kind, all; "all" last) and the indices of their edits."""
    found: dict[str, list[int]] = defaultdict(list)
    for i, edit in enumerate(edits):
        found[edit.family].append(i)
        if edit.family == "ambiguous":
            found[ambiguous_group(edit)].append(i)
        found["all"].append(i)
    return dict(sorted(found.items(), key=lambda kv: (kv[0] == "all", kv[0])))


def table(results: list[Result]) -> dict[str, dict[str, float]]:
    rows = {}
    for name, indices in groups([r.edit for r in results]).items():
        rs = [results[i] for i in indices]
        row = {"n": len(rs), "edit_success": sum(r.edit_ok for r in rs) / len(rs)}
        if rs[0].expressive_ok is not None:
            row["expressive_accuracy"] = sum(r.expressive_ok for r in rs) / len(rs)
        rows[name] = row
    return rows


def paired(first: list[Result], second: list[Result]) -> dict[str, dict]:
    """Two editors on the same scenes, per row of :func:`table`: on how many scenes only the first or only
    the second succeeded, and the exact two-sided McNemar p-value (a sign test on those scenes), the chance
    of a split at least this uneven if neither editor were better."""
    assert [r.edit for r in first] == [r.edit for r in second], "paired results must be on the same scenes"
    rows = {}
    for name, indices in groups([r.edit for r in first]).items():
        only_first = sum(first[i].edit_ok and not second[i].edit_ok for i in indices)
        only_second = sum(second[i].edit_ok and not first[i].edit_ok for i in indices)
        rows[name] = {"n": len(indices), "only_first": only_first, "only_second": only_second,
                      "p": sign_test(only_first, only_second)}
    return rows


def outcomes(results: list[Result], check: str = "edit_ok") -> str:
    """Each scene's edit success (or ``check``), one character per scene ("1" or "0"), in scene order."""
    return "".join("1" if getattr(r, check) else "0" for r in results)


def stored(edits: list[world.Edit], path_and_column: str, settings: dict) -> list[Result]:
    """A stored run's column (``FILE.json`` or ``FILE.json:column``, default ``mgie_mini``) as results on ``edits``;
    its scenes must be the ones of this run. Its sampler, steps and guidance may differ: pairing two samplers on
    the same scenes is how a shorter schedule is tested."""
    path, colon, column = path_and_column.rpartition(":")
    if not colon or any(c in column for c in "/\\") or column.endswith(".json"):  # no column; C:\ is a drive
        path, column = path_and_column, ""
    column = column or "mgie_mini"
    try:
        figures = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"--against {path}: cannot read it as a figures file of this command ({err})") from None
    kept = figures.get("outcomes") or {}
    if column not in kept:
        raise InputError(f"--against {path}: it holds no scene-by-scene outcomes for {column!r} (it has: "
                         f"{', '.join(kept) or 'none; it was written before --json kept them'})")
    differ = [f"{k} {figures.get(k)!r} here {v!r}" for k, v in settings.items() if k in SCENES and figures.get(k) != v]
    if differ:
        raise InputError(f"--against {path}: other scenes ({'; '.join(differ)}); pair runs of the same scenes")
    flags = kept[column]
    if len(flags) != len(edits) or set(flags) - {"0", "1"}:
        raise InputError(f"--against {path}: {column!r} has {len(flags)} outcomes for {len(edits)} scenes")
    return [Result(e, None, None, None, flag == "1") for e, flag in zip(edits, flags)]


def _shown(source: str) -> str:
    """A model's path as the figures file records it: relative to here when it lies below (no home folders)."""
    try:
        return str(Path(source).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return source


def sign_test(a: int, b: int) -> float:
    """Exact two-sided binomial test of an a:b split against 1/2."""
    n = a + b
    tail = sum(math.comb(n, k) for k in range(min(a, b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def format_paired(rows: dict[str, dict], first: str, second: str) -> str:
    head = f"| family | n | {first} only | {second} only | p (McNemar, exact) |"
    lines = [head, "|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['n']} | {row['only_first']} | {row['only_second']} | {row['p']:.2g} |")
    return "\n".join(lines)


def ambiguous_group(edit: world.Edit) -> str:
    """``ambiguous/<kind>`` of an ambiguous edit (biggest, smallest, odd_one_out, leftmost, sunset); the
    recolouring kinds are told apart by the instruction's words."""
    if edit.kind == "sunset":
        return "ambiguous/sunset"
    return f"ambiguous/{_ambiguous_kind(edit.instruction)}"


def _ambiguous_kind(text: str) -> str:
    for kind, words in (("biggest", ("biggest", "largest")), ("smallest", ("smallest", "tiniest")),
                        ("odd_one_out", ("odd", "belong")), ("leftmost", ("left",))):
        if any(w in text for w in words):
            return kind
    return "other"


COLUMNS = {"given_expressive": "edit success (MGIE-mini, true expressive given)",
           "ip2p_twin": "edit success (IP2P twin)", "vae_ceiling": "ceiling (VAE round trip)"}


def format_table(rows: dict, others: dict[str, dict | None], labels: dict[str, str] | None = None) -> str:
    """Markdown: expressive accuracy and edit success per family, then the other edit-success columns, headed
    by :data:`COLUMNS` or ``labels`` (for columns from other runs, such as an earlier model's)."""
    labels = {**COLUMNS, **(labels or {})}
    others = {name: other for name, other in others.items() if other}
    head = "| family | n | expressive accuracy | edit success (MGIE-mini) |"
    head += "".join(f" {labels[name]} |" for name in others)
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, row in rows.items():
        cells = [name, str(row["n"]), f"{row['expressive_accuracy']:.0%}", f"{row['edit_success']:.0%}"]
        for other in others.values():
            cells.append(f"{other[name]['edit_success']:.0%}" if name in other else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw_grid(results: list[Result], path: Path, per_family: int = 2) -> Path:
    """Rows of input | instruction + expressive | output | ground truth, a few per family."""
    picked, seen = [], defaultdict(int)
    for r in results:
        if seen[r.edit.family] < per_family:
            picked.append(r)
            seen[r.edit.family] += 1
    cell, text_w = 128, 300
    grid = Image.new("RGB", (3 * cell + text_w, cell * len(picked)), (255, 255, 255))
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()
    for i, r in enumerate(picked):
        before, target = world.images(r.edit)
        for j, im in enumerate((before, r.output, target)):
            grid.paste(im.resize((cell, cell), Image.Resampling.NEAREST), (j * cell + (text_w if j else 0), i * cell))
        draw.text((cell + 6, i * cell + 10), f"instruction:\n {r.edit.instruction}", fill=(0, 0, 0), font=font)
        draw.text((cell + 6, i * cell + 50), f"expressive:\n {r.expressive}", fill=(0, 0, 120), font=font)
        draw.text((cell + 6, i * cell + 100), f"{r.edit.family}: {'ok' if r.edit_ok else 'miss'}", fill=(90, 90, 90), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="an MGIE model (default: the embedded mgie-mini)")
    parser.add_argument("--twin", help="an InstructPix2Pix twin made by train.mini.twin, to compare")
    parser.add_argument("--given-expressive", action="store_true",
                        help="also edit with the true expressive instruction teacher-forced (MLLM perception factored out)")
    parser.add_argument("--count", type=int, default=200, help="held-out scenes (default: %(default)s)")
    parser.add_argument("--family", action="append", choices=world.FAMILIES,
                        help="only this family's scenes (repeat for several; default: all, in turn)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED,
                        help="the scenes' seed, and the noise's (default: %(default)s)")
    add_settings(parser, EditSettings, only=("preset", "num_inference_steps", "scheduler", "guidance_scale",
                                             "image_guidance_scale", "max_new_tokens"))
    parser.add_argument("--grid", help="write a picture grid here (.png)")
    parser.add_argument("--json", help="write the figures here (with each scene's outcome)")
    parser.add_argument("--against", metavar="FILE.json[:COLUMN]",
                        help="pair MGIE-mini scene by scene with a column of an earlier --json run of the same scenes "
                             "(default column mgie_mini; ip2p_twin, given_expressive, ...)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, edits: list[world.Edit], model, settings: EditSettings,
        earlier: list[Result] | None) -> tuple[dict, list[Result]]:
    """Every column the arguments ask for, on ``edits``: (the figures, MGIE-mini's results)."""
    config = settings.sample_config(model.recommended_sampling)
    results = evaluate_mgie(model, edits, settings)
    columns: dict[str, list[Result]] = {}
    if args.given_expressive:
        columns["given_expressive"] = evaluate_mgie(model, edits, settings, given_expressive=True)
    if args.twin:
        columns["ip2p_twin"] = evaluate_twin(load_twin(args.twin), edits, config, args.seed)
    columns["vae_ceiling"] = evaluate_ceiling(model.vae, edits)
    figures = {"mgie_mini": table(results), **dict.fromkeys(COLUMNS),
               **{name: table(rs) for name, rs in columns.items()},
               "paired_ip2p_twin": paired(results, columns["ip2p_twin"]) if args.twin else None,
               "model": _shown(model.source), "derived": [r.expressive for r in results],
               "outcomes": {"mgie_mini": outcomes(results), "expressive_ok": outcomes(results, "expressive_ok"),
                            **{name: outcomes(rs) for name, rs in columns.items()}}}
    if earlier:
        figures["against"] = {"file": args.against, "table": table(earlier), **paired(results, earlier)}
    return figures, results


def report(figures: dict, settings: dict, config: SampleConfig) -> str:
    """The figures as the command prints them: the table, then each scene-by-scene pairing."""
    families = ", ".join(settings["families"])
    others = {name: figures[name] for name in COLUMNS}
    labels = {}
    if "against" in figures:
        others["against"], labels["against"] = figures["against"]["table"], f"edit success ({figures['against']['file']})"
    lines = [f"held-out scenes: {settings['count']} (seed {settings['seed']}; {families}), sampler: {config.scheduler}, "
             f"{settings['steps']} steps, guidance {config.guidance_scale} (text) / {config.image_guidance_scale} (image)",
             format_table(figures["mgie_mini"], others, labels)]
    if figures["paired_ip2p_twin"]:
        lines += ["scene by scene against the IP2P twin:", format_paired(figures["paired_ip2p_twin"], "MGIE-mini", "IP2P twin")]
    if "against" in figures:
        pairing = {k: v for k, v in figures["against"].items() if k not in ("file", "table")}
        lines += [f"scene by scene against {figures['against']['file']}:", format_paired(pairing, "MGIE-mini", "it")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    edits = world.edits(args.seed, args.count, tuple(args.family or world.FAMILIES))
    try:
        chosen = settings_from(args, EditSettings).replace(seed=args.seed)
        model = load_model(args.model)
        config = chosen.sample_config(model.recommended_sampling)
        settings = {"families": args.family or list(world.FAMILIES), "count": args.count, "seed": args.seed,
                    "steps": config.num_inference_steps, "scheduler": config.scheduler,
                    "guidance_scale": config.guidance_scale, "image_guidance_scale": config.image_guidance_scale}
        earlier = stored(edits, args.against, settings) if args.against else None
    except MGIEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    figures, results = run(args, edits, model, chosen, earlier)
    print(report(figures, settings, config))
    if args.grid:
        print("grid:", draw_grid(results, Path(args.grid)))
    if args.json:
        with atomic_write(args.json) as handle:
            handle.write(json.dumps({**figures, **settings}, indent=2).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
