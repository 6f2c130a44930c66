"""Progress on the command line: a bar per stage in a terminal; plain lines, with no cursor control, when the
output goes to a file or a pipe (a log stays readable)."""

from __future__ import annotations

import sys

from ..runner import StageProgress
from ..runtime.progress import ProgressCallback

STAGE_NAMES = {"derive": ("derive", "token"), "sample": ("denoise", "step")}
QUARTERS = 4  # plain lines per stage: at each quarter of it


def in_terminal() -> bool:
    return sys.stderr.isatty()


class StageBars:
    """A progress bar per stage of the edit in progress (tokens while deriving, steps while denoising)."""

    def __init__(self, position: int = 0):
        self.position = position

    def __call__(self, stage: str, index: int) -> ProgressCallback:
        name, unit = STAGE_NAMES.get(stage, (stage, "step"))
        return _bar(name, unit, self.position) if in_terminal() else _lines(name, unit)


def _bar(name: str, unit: str, position: int) -> ProgressCallback:
    from tqdm.auto import tqdm

    bar = tqdm(total=1, desc=f"[mgie] {name}", unit=unit, leave=False, file=sys.stderr, position=position)

    def show(step: int, total: int) -> None:
        bar.total, bar.n = total, step
        bar.refresh()
        if step >= total:
            bar.close()

    return show


def _lines(name: str, unit: str) -> ProgressCallback:
    """One line at each quarter of the stage (a stage that stops early, as a derivation at its end token, ends at
    the quarter it reached)."""
    said = [0]

    def show(step: int, total: int) -> None:
        quarter = step * QUARTERS // max(1, total)
        if quarter > said[0]:
            said[0] = quarter
            print(f"[mgie] {name}: {step}/{total} {unit}s", file=sys.stderr, flush=True)

    return show


class BatchBars:
    """Pictures done over the whole run, and under it the stages of the batch in progress."""

    def __init__(self, total: int):
        self.total, self.terminal = total, in_terminal()
        self.stages = StageBars(position=1)
        if self.terminal:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="[mgie] pictures", unit="picture", file=sys.stderr)

    def __call__(self, done: int, total: int) -> StageProgress:
        if self.terminal:
            self.bar.n = done
            self.bar.refresh()
        else:
            print(f"[mgie] pictures: {done}/{total} done", file=sys.stderr, flush=True)
        return self.stages

    def close(self, done: int) -> None:
        if self.terminal:
            self.bar.n = done
            self.bar.close()
