"""Chains of instructions: several instructions applied in turn, each editing the previous result.

The paper names compositional instructions ("make it winter and add a dog") as a limit of MGIE; one
instruction after another is how an artist gets them. In a text, one instruction per line.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InputError

MAX_CHAIN = 16


def parse_chain(instructions: str | Sequence[str]) -> list[str]:
    """The instructions of a chain: one per line of a text (or per item of a list); blank lines are skipped.
    At least one and at most ``MAX_CHAIN``."""
    lines = instructions.splitlines() if isinstance(instructions, str) else [str(item) for item in instructions]
    chain = [line.strip() for line in lines if line.strip()]
    if not chain:
        raise InputError('the instruction is empty: describe the edit, e.g. "make it look like winter" (one '
                         "instruction per line for a chain of edits)")
    if len(chain) > MAX_CHAIN:
        raise InputError(f"{len(chain)} instructions given; a chain takes at most {MAX_CHAIN}, one per line: split "
                         "it into several edits")
    return chain


def chain_text(expressive: Sequence[str]) -> str:
    """The expressive instructions of a chain, numbered (a single one as it is)."""
    if len(expressive) == 1:
        return expressive[0]
    return "\n".join(f"{i}. {text}" for i, text in enumerate(expressive, start=1))
