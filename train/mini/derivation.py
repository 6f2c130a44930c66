"""Where mgie-mini's derivation goes wrong, in seconds (the MLLM only, no diffusion).

    python -m train.mini.derivation [--model PATH] [--count 500] [--seed 777] [--family ambiguous]

Prints expressive-instruction accuracy per family and per size of the object the edit is about
(recolour, remove and the ambiguous kinds name one), and sorts the wrong answers that name an object:
the right object with the wrong change, the right colour on the wrong shape, the right shape in the
wrong colour, another object of the scene, or an object the scene does not hold. The default seed is
the validation seed guidance was chosen on, not the held-out one. It also counts the true expressive
instructions that derivation's n-gram ban makes unsayable with the model's tokenizer.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import Counter, defaultdict

import torch

from mgie_core import DeriveConfig, MGIEPipeline, load_model
from train.objective import conversation_ids

from . import world
from .checks import expressive_ok
from .evaluate import ambiguous_group

VALIDATION_SEED = 777
MISSES = ("wrong change", "wrong shape", "wrong colour", "another object", "not in the scene", "no object named")
_NAMED = re.compile(r"\b(small|large) (" + "|".join(world.COLOURS) + r") (" + "|".join(world.SHAPES) + r")\b")


def miss(edit: world.Edit, text: str) -> str | None:
    """None when ``text`` is right, else which of :data:`MISSES` it is (for an edit about one object)."""
    if expressive_ok(edit, text):
        return None
    named = _NAMED.search(text)
    if named is None:
        return "no object named"
    _, colour, shape = named.groups()
    target = edit.target
    if (colour, shape) == (target.colour, target.shape):
        return "wrong change"
    if colour == target.colour:
        return "wrong shape"
    if shape == target.shape:
        return "wrong colour"
    if any((o.colour, o.shape) == (colour, shape) for o in edit.before.objects):
        return "another object"
    return "not in the scene"


def unsayable(model, edit: world.Edit, n: int = DeriveConfig.no_repeat_ngram_size) -> bool:
    """True when derivation's n-gram ban (MGIE.md §2.5: no n tokens of prompt or answer twice) forbids the
    true expressive instruction, so no model can derive it: one of its n-grams of tokens came before."""
    if n < 1:
        return False  # no ban
    ids, start = conversation_ids(model, edit.instruction, edit.expressive)
    seen = {tuple(ids[i : i + n]) for i in range(start - n + 1)}
    for end in range(start + 1, len(ids) + 1):
        gram = tuple(ids[end - n : end])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def group(edit: world.Edit) -> str:
    return ambiguous_group(edit) if edit.family == "ambiguous" else edit.family


def breakdown(edits: list[world.Edit], texts: list[str], banned: list[bool] | None = None) -> dict[str, dict]:
    """Rows ``group`` and ``group, small/large target``: n, accuracy, how many true answers are ``banned``
    (unsayable) and, where there is a target, the misses."""
    rows: dict[str, list] = defaultdict(list)
    for edit, text, ban in zip(edits, texts, banned or [False] * len(edits)):
        names = [group(edit), "all"]
        if edit.target is not None and edit.family != "add":  # an added object is always small
            names.append(f"{group(edit)}, {edit.target.size} target")
        for name in names:
            rows[name].append((edit, text, ban))
    table = {}
    for name in sorted(rows, key=lambda n: (n == "all", n)):
        triples = rows[name]
        pairs = [(e, t) for e, t, _ in triples]
        row = {"n": len(pairs), "accuracy": sum(expressive_ok(e, t) for e, t in pairs) / len(pairs),
               "unsayable": sum(b for _, _, b in triples)}
        if "target" in name:
            row["misses"] = dict(Counter(m for e, t in pairs if (m := miss(e, t))))
        table[name] = row
    return table


def derive_texts(model, edits: list[world.Edit], batch: int = 100) -> list[str]:
    pipe = MGIEPipeline(model, "cpu", "fp32")
    texts = []
    for start in range(0, len(edits), batch):
        chunk = edits[start : start + batch]
        derived = pipe.derive([world.images(e)[0] for e in chunk], [e.instruction for e in chunk],
                              DeriveConfig(max_new_tokens=48))
        texts += derived.expressive_instructions
    return texts


def format_breakdown(table: dict[str, dict]) -> str:
    lines = ["| group | n | expressive accuracy | unsayable | " + " | ".join(MISSES) + " |",
             "|" + "---|" * (4 + len(MISSES))]
    for name, row in table.items():
        misses = row.get("misses")
        cells = [str(misses.get(m, 0)) if misses is not None else "" for m in MISSES]
        lines.append(f"| {name} | {row['n']} | {row['accuracy']:.0%} | {row['unsayable']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="an MGIE model (default: the embedded mgie-mini)")
    parser.add_argument("--count", type=int, default=500, help="scenes, the families in turn")
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED)
    parser.add_argument("--family", action="append", choices=world.FAMILIES,
                        help="only these families (repeatable; default: all, in turn)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be at least 1, got {args.count}")
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    edits = world.edits(args.seed, args.count, tuple(args.family or world.FAMILIES))
    model = load_model(args.model)
    print(f"scenes: {args.count} (seed {args.seed}); unsayable: true answers the {DeriveConfig.no_repeat_ngram_size}"
          "-gram ban forbids; misses: what the wrong answers name")
    banned = [unsayable(model, e) for e in edits]
    print(format_breakdown(breakdown(edits, derive_texts(model, edits), banned)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
