"""``python -m mgie_core check``: is my MGIE-7B right? Apple's own published example, run and compared.

Apple's demo (``demo.ipynb`` of apple/ml-mgie) edits ``_input/3.jpg`` with "make cottage a mansion" (greedy,
96 new tokens, no repeated 3-gram, seed 13331) and its ``demo.png`` shows the expressive instruction MGIE-7B
derived. The derived text, cleaned as the demo cleans it, is compared word by word with that text:

- identical: the weights are Apple's MGIE-7B, every piece right;
- near (a word-level similarity of at least :data:`NEAR`): the same answer with a few words changed, which
  fp16 numerics on another GPU (or fp32, bf16, a CPU) can cause; the weights are right;
- different: a wrong piece, the base most often (LLaMA-2 or another model than the original LLaMA-7B), or the
  delta (another LLaVA, or a delta applied twice); the command exits with status 1.
"""

from __future__ import annotations

import argparse
import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..config import EditSettings, PlacementSettings
from ..errors import InputError
from ..files import check_writable
from ..formats.loader import check_model
from ..images import check_output_name, load_image
from .flags import add_settings, settings_from

APPLE_EXAMPLE = "_input/3.jpg"
APPLE_EXAMPLE_URL = "https://raw.githubusercontent.com/apple/ml-mgie/main/_input/3.jpg"
INSTRUCTION = "make cottage a mansion"
# What Apple's demo.png shows for this example, exactly (sic: Apple's own output, typo and missing space included).
EXPECTED = ("If the small cottages in the image were transformed into mansions, the scene would undergo a significant "
            "change.The modest-sized cottples would be replaced with larger, more luxurious homes.")
DEMO = EditSettings()  # the defaults are Apple's demo's: seed 13331, 96 new tokens, no repeated 3-gram, the paper's sampling
NEAR = 0.6  # word-level similarity from which a different text still means the right weights

MEANINGS = {
    "identical": "word for word what Apple's demo.png shows: the LLaMA base, the LLaVA delta and Apple's weights are "
                 "right",
    "near": "the same answer with a few words changed, as fp16 numerics on another GPU (or fp32, bf16, a CPU) can "
            "cause by flipping one greedy choice: the weights are right",
    "different": "not what Apple's MGIE-7B answers: a piece is wrong. Most often the base (it must be the original "
                 "LLaMA-7B, not LLaMA-2 or a fine-tune: fluent but other text), else the delta (it must be "
                 "LLaVA-Lightning-7B-delta-v1-1, applied once: garbled text) or mgie_7b. Assemble again from the right "
                 "pieces (README, 'Getting the weights')",
}
# The verdicts on an example of your own: only the text is compared, nothing is said of Apple's pieces.
YOUR_MEANINGS = {
    "identical": "word for word the text you expected",
    "near": "close to the text you expected, a few words changed",
    "different": "not the text you expected",
}


@dataclass(frozen=True)
class CheckResult:
    verdict: str  # identical, near or different
    similarity: float  # word-level, 0..1
    derived: str
    expected: str
    apples: bool = True  # compared with Apple's own example: the verdict speaks of Apple's pieces

    @property
    def passed(self) -> bool:
        return self.verdict != "different"

    def report(self) -> str:
        figure = "" if self.verdict == "identical" else f" (word similarity {self.similarity:.2f})"
        meanings = MEANINGS if self.apples else YOUR_MEANINGS
        return (f"derived:  {self.derived}\nexpected: {self.expected}\n"
                f"{self.verdict}{figure}: {meanings[self.verdict]}")


def word_similarity(a: str, b: str) -> float:
    """How much two texts share, word by word, in order (difflib's ratio over whitespace-split words)."""
    return difflib.SequenceMatcher(None, a.split(), b.split(), autojunk=False).ratio()


def compare(derived: str, expected: str = EXPECTED, apples: bool = True) -> CheckResult:
    similarity = word_similarity(derived, expected)
    verdict = "identical" if derived == expected else "near" if similarity >= NEAR else "different"
    return CheckResult(verdict, similarity, derived, expected, apples)


def run_check(model: str | Path, image: Image.Image, instruction: str = INSTRUCTION, expected: str = EXPECTED,
              placement: PlacementSettings = PlacementSettings(), out: str | Path | None = None,
              apples: bool = True) -> CheckResult:
    """Derive the expressive instruction for ``image`` and ``instruction`` with Apple's demo settings and compare
    it with ``expected`` (Apple's example unless given). ``out``: also edit the image (the whole edit, by the one
    runner) and save it. ``apples``: the example is Apple's own, so the verdict may speak of Apple's pieces."""
    from ..images import save_image_atomic
    from .pipeline import MGIEPipeline

    pipe = MGIEPipeline.from_pretrained(model, device=placement.device, dtype=placement.dtype)
    if out is None:
        derived = pipe.derive([image], [instruction], DEMO).expressive_instructions[0]
    else:
        result = pipe(image, instruction, DEMO)
        save_image_atomic(result.images[0], out)
        derived = result.expressive_instructions[0]
    return compare(derived, expected, apples)


def example_image(apple_repo: str | Path | None, download: bool, progress: bool = True) -> Image.Image:
    """Apple's ``_input/3.jpg``: from a clone of apple/ml-mgie, or fetched (``--download``; ``MGIE_EXAMPLE_URL``
    overrides the address) into ``$MGIE_CACHE``."""
    if apple_repo is not None:
        path = Path(apple_repo) / APPLE_EXAMPLE
        if not path.is_file():
            raise InputError(f"--apple-repo {apple_repo} has no {APPLE_EXAMPLE}: give your clone of "
                             "https://github.com/apple/ml-mgie")
        return load_image(path)
    if download:
        from ..assemble.download import cache_dir, fetch_url

        url = os.environ.get("MGIE_EXAMPLE_URL") or APPLE_EXAMPLE_URL
        return load_image(fetch_url(url, cache_dir() / "ml-mgie" / APPLE_EXAMPLE, progress))
    raise InputError(f"check needs Apple's example picture: give --apple-repo DIR (a clone of apple/ml-mgie) or "
                     f"--download to fetch {APPLE_EXAMPLE}")


# -- command line ---------------------------------------------------------------------------------
def add_check_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("check", help="run Apple's published example and compare the text with Apple's",
                            description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the MGIE-7B to check: a bundle or Apple's folders")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--apple-repo", metavar="DIR", help="a clone of https://github.com/apple/ml-mgie (for _input/3.jpg)")
    source.add_argument("--download", action="store_true", help="fetch _input/3.jpg from Apple's repository")
    source.add_argument("--image", help="your own example picture instead of Apple's (with --instruction, --expected)")
    parser.add_argument("--instruction", default=INSTRUCTION, help="the instruction (default: %(default)r, Apple's)")
    parser.add_argument("--expected", default=EXPECTED,
                        help="the expressive instruction to expect (default: the one Apple's demo.png shows)")
    add_settings(parser, PlacementSettings, only=("device", "dtype"))
    parser.add_argument("--out", help="also edit the picture (100 steps, seed 13331) and save the result here")
    parser.add_argument("--quiet", action="store_true", help="no log lines")
    parser.set_defaults(run=run_check_command)


def run_check_command(args: argparse.Namespace) -> int:
    check_model(args.model)  # a model, before anything asks for a picture
    placement = settings_from(args, PlacementSettings)
    if args.out:
        check_writable(Path(args.out), "--out")
        check_output_name(args.out)
    image = load_image(args.image) if args.image else example_image(args.apple_repo, args.download, not args.quiet)
    apples = not args.image and args.instruction == INSTRUCTION and args.expected == EXPECTED
    result = run_check(args.model, image, args.instruction, args.expected, placement, args.out, apples)
    print(result.report())
    return 0 if result.passed else 1
