"""Every file a document or a docstring names exists: a reader who follows a reference finds it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP = ("docs", "mgie_core", "nodes", "train", "bench", "scripts", "workflows", "examples", "tests", "web", "locales")
TOPS = "|".join(TOP)
PATH = re.compile(rf"(?<![\w/.-])((?:{TOPS})/[\w./-]*\w\.(?:md|py|json|png|jpg|sh|safetensors|js|txt))")


def named_paths(text: str) -> set[str]:
    return {m for m in PATH.findall(text) if not re.search(r"[A-Z]{3,}|\*", m.split("/", 1)[1])}  # not NAME.json, *.py


def sources() -> list[Path]:
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "bench").glob("*.md")]
    for top in ("mgie_core", "nodes", "train", "bench", "scripts"):
        files += (ROOT / top).rglob("*.py")
    return [f for f in files if f.is_file()]


def test_every_named_file_exists():
    missing = []
    for source in sources():
        for name in named_paths(source.read_text(encoding="utf-8")):
            if not (ROOT / name).exists():
                missing.append(f"{source.relative_to(ROOT)} names {name}")
    assert not missing, "\n".join(missing)


def test_the_check_finds_a_missing_file():
    assert named_paths("see docs/algorithm.md §2 and docs/nowhere.md, not docs/NAME.md") == {"docs/algorithm.md",
                                                                                             "docs/nowhere.md"}
