"""Fine-tuning's data: pairs of pictures (input, target) with a brief instruction and an optional expressive one.

Two formats:

* a JSONL manifest, one object per line: ``{"input": "a.png", "target": "a_edit.png",
  "instruction": "make it snowy", "expressive": "cover the ground with snow"}`` (paths relative
  to the manifest; ``expressive`` optional);
* a folder an artist can make by hand::

      my_edits/
        input/NAME.png           the picture before
        target/NAME.png          the picture after (same NAME, any image extension)
        NAME.txt                 the brief instruction
        NAME.expressive.txt      optional: the expressive instruction

Every pair is opened and checked before any model loads, by the checks editing uses for its pictures and
instructions. Bad samples (unreadable image, missing pair, empty instruction, an input and a target of different
shapes) are reported by file name; with ``strict`` the first one is fatal, otherwise they are skipped and counted.
An input and a target of one shape but different sizes are both center-cropped and resized to the training size, so
they stay aligned; of different shapes (aspect ratios), their crops would show different parts of the scene, so the
pair is refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..images import PICTURE_SUFFIXES, read_picture
from ..stages.prompt import check_text

logger = logging.getLogger("mgie.train")

SAME_SHAPE = 0.02  # relative difference of aspect ratios under which an input and its target are one shape


@dataclass(frozen=True)
class Triplet:
    name: str
    input: Path
    target: Path
    instruction: str
    expressive: str | None = None


@dataclass(frozen=True)
class DataReport:
    triplets: list[Triplet]
    skipped: list[str]  # one line per skipped sample: "NAME: what is wrong"


def read_triplets(path: str | Path, strict: bool = False) -> DataReport:
    """Read and check every triplet (images are opened once to catch unreadable files early)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".jsonl":
        candidates, problems = _from_manifest(path)
    elif path.is_dir():
        candidates, problems = _from_folder(path)
    elif not path.exists():
        raise InputError(f"--data {path}: not found (looked in {path.resolve().parent}); give a folder with input/, "
                         "target/ and NAME.txt, or a .jsonl manifest")
    else:
        raise InputError(f"--data {path} is a file but not a .jsonl manifest; give a folder with input/ and target/, "
                         "or a .jsonl manifest")
    triplets = []
    for triplet in candidates:
        problem = _check(triplet)
        if problem:
            problems.append(f"{triplet.name}: {problem}")
        else:
            triplets.append(triplet)
    for problem in problems:
        if strict:
            raise InputError(f"bad training sample ({problem}); fix it or run without --strict to skip it")
        logger.warning("skipping %s", problem)
    if not triplets:
        raise InputError(f"no usable training samples in {path} ({len(problems)} skipped)")
    logger.info("%d training samples, %d skipped", len(triplets), len(problems))
    return DataReport(triplets, problems)


def _from_manifest(path: Path) -> tuple[list[Triplet], list[str]]:
    triplets, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            item = json.loads(line)
            triplets.append(Triplet(
                name=where, input=path.parent / item["input"], target=path.parent / item["target"],
                instruction=item.get("instruction", ""), expressive=item.get("expressive") or None))
        except (ValueError, KeyError, TypeError) as err:
            problems.append(f"{where}: not a valid sample ({type(err).__name__}: {err}); "
                            'expected {"input": ..., "target": ..., "instruction": ...}')
    return triplets, problems


def _from_folder(path: Path) -> tuple[list[Triplet], list[str]]:
    inputs, targets = _images(path / "input"), _images(path / "target")
    if not inputs:
        manifests = sorted(path.glob("*.jsonl"))
        hint = f"; {path} holds a manifest: give --data {manifests[0]}" if manifests else ""
        raise InputError(f"--data {path}: no images in {path / 'input'} (expected input/NAME.png, target/NAME.png, "
                         f"NAME.txt){hint}")
    triplets, problems = [], []
    for name in sorted(set(inputs) | set(targets)):
        if name not in targets:
            problems.append(f"{inputs[name]}: no target/{name}.* to pair it with")
            continue
        if name not in inputs:
            problems.append(f"{targets[name]}: no input/{name}.* to pair it with")
            continue
        text, expressive = path / f"{name}.txt", path / f"{name}.expressive.txt"
        if not text.is_file():
            problems.append(f"{name}: instruction file {text} is missing")
            continue
        triplets.append(Triplet(name=name, input=inputs[name], target=targets[name],
                                instruction=text.read_text(encoding="utf-8").strip(),
                                expressive=expressive.read_text(encoding="utf-8").strip() if expressive.is_file() else None))
    return triplets, problems


def _images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in PICTURE_SUFFIXES}


def _check(triplet: Triplet) -> str | None:
    """What is wrong with a pair (None: nothing), checked as an edit's inputs are."""
    try:
        check_text(triplet.instruction)
        if triplet.expressive is not None:
            check_text(triplet.expressive, "expressive")
        sizes = [read_picture(path, role)[0].size for role, path in (("input", triplet.input), ("target", triplet.target))]
    except InputError as err:
        return str(err)
    (w1, h1), (w2, h2) = sizes
    if abs(w1 / h1 - w2 / h2) > SAME_SHAPE * (w1 / h1):
        return (f"the input is {w1}x{h1} and the target {w2}x{h2}: of different shapes, their crops would show different "
                "parts of the scene; give a target of the input's shape")
    if (w1, h1) != (w2, h2):
        logger.info("%s: the input is %dx%d and the target %dx%d; both are resized to the training size alike",
                    triplet.name, w1, h1, w2, h2)
    return None
