"""The README's Python section runs as written, outside the repository, once the library is installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def python_snippet() -> str:
    return re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)


def test_the_readme_python_snippet_runs_as_written(tmp_path):
    code = python_snippet()
    for name in set(re.findall(r'"([\w/.-]+\.png)"', code)) - {"edited.png"}:  # the pictures it reads
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # what `pip install -e .` gives; the cwd is not the repository
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    said = done.stdout.strip()
    comment = re.search(r"print\(result\.expressive_instructions\[0\]\)\s+# (.*)", code).group(1)
    assert said == comment  # the comment shows what it prints
    assert (tmp_path / "edited.png").is_file()
