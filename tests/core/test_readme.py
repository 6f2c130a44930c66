"""The README's Python section runs as written, outside the repository, once the library is installed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def python_snippet() -> str:
    return re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)


def test_the_readme_python_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    code = python_snippet()
    for name in set(re.findall(r'"([\w/.-]+\.png)"', code)) - {"edited.png"}:  # the pictures it reads
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)  # not the repository: the library is found as `pip install -e .` finds it
    exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})
    said = capsys.readouterr().out.strip()
    comment = re.search(r"print\(result\.expressive_instructions\[0\]\)\s+# (.*)", code).group(1)
    assert said == comment  # the comment shows what it prints
    assert (tmp_path / "edited.png").is_file()
