"""Progress bars over bytes (tqdm ships with transformers). Shown on a terminal only, so that logs and
captured output keep to the lines that matter, such as the one line of a refusal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm


@contextmanager
def byte_bar(total: int, description: str, enabled: bool = True, initial: int = 0) -> Iterator[tqdm]:
    """A bar counting bytes; ``enabled=False`` (``--quiet``) hides it, and so does a stderr that is no terminal."""
    bar = tqdm(total=total, desc=f"[mgie] {description}", unit="B", unit_scale=True, unit_divisor=1024,
               file=sys.stderr, disable=None if enabled else True, initial=initial, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
