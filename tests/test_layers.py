"""Architecture rules that keep the layers apart."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFY_MODULES = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "execution", "nodes")


def test_mgie_core_never_imports_comfyui_at_runtime():
    code = (
        "import sys, mgie_core, mgie_core.cli, mgie_core.formats.bundle, mgie_core.pipeline\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {COMFY_MODULES!r}]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mgie_core_sources_do_not_name_comfyui():
    for path in (ROOT / "mgie_core").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in COMFY_MODULES, f"{path}: imports {name}"


def test_library_imports_inside_the_package_are_relative():
    for path in (ROOT / "mgie_core").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("mgie_core"), f"{path}: absolute import of {node.module}"
