"""Multi-step edits: several instructions applied in turn, each on the previous result.

The paper names compositional instructions ("make it winter and add a dog") as a limit of MGIE;
one instruction per step is how an artist gets them.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import InputError

MAX_STEPS = 16


def parse_steps(instructions: str | Sequence[str]) -> list[str]:
    """The steps of a multi-step edit: one instruction per line of a text (or per item of a list);
    blank lines are skipped. At least one and at most ``MAX_STEPS`` steps."""
    lines = instructions.splitlines() if isinstance(instructions, str) else [str(item) for item in instructions]
    steps = [line.strip() for line in lines if line.strip()]
    if not steps:
        raise InputError('the instruction is empty: describe the edit, e.g. "make it look like winter" (one '
                         "instruction per line for a multi-step edit)")
    if len(steps) > MAX_STEPS:
        raise InputError(f"{len(steps)} steps given; a multi-step edit takes at most {MAX_STEPS} instructions, one "
                         "per line: split it into several edits")
    return steps


def steps_text(expressive: Sequence[str]) -> str:
    """The expressive instructions of every step, numbered (a single step as it is)."""
    if len(expressive) == 1:
        return expressive[0]
    return "\n".join(f"{i}. {text}" for i, text in enumerate(expressive, start=1))
