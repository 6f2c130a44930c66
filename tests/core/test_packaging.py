"""What a user installs and what the Comfy Registry publishes: declared requirements, license, registry metadata."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~ \[;]", line.strip(), maxsplit=1)[0].lower() for line in requirements}


def test_requirements_and_pyproject_declare_the_same_packages_and_never_torch():
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    declared = _names(lines)
    assert declared == _names(PYPROJECT["project"]["dependencies"])
    assert "torch" not in declared  # ComfyUI users bring their own CUDA build
    assert {"transformers", "diffusers", "safetensors", "sentencepiece", "scipy"} <= declared


def test_the_license_file_is_the_one_pyproject_names():
    assert PYPROJECT["project"]["license"] == {"file": "LICENSE"}
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "License :: OSI Approved :: Apache Software License" in PYPROJECT["project"]["classifiers"]


def test_registry_metadata_is_complete_and_the_icon_ships():
    comfy = PYPROJECT["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["requires-comfyui"].startswith(">=")
    in_repo = comfy["Icon"].split("/main/", 1)[1]  # a raw URL of a file of this repository
    with Image.open(ROOT / in_repo) as icon:
        assert icon.width <= 800 and icon.height <= 400  # the registry's limit


def test_the_example_picture_ships_in_the_library_as_in_the_repository():
    from mgie_core import example_image

    shipped = ROOT / "mgie_core" / "assets" / "scene.png"
    assert shipped.read_bytes() == (ROOT / "images" / "scene.png").read_bytes()  # the README's picture, both ways
    assert "assets/*.png" in PYPROJECT["tool"]["setuptools"]["package-data"]["mgie_core"]
    assert example_image().size == Image.open(shipped).size


def test_the_registry_archive_leaves_out_tests_and_benchmarks():
    ignored = (ROOT / ".comfyignore").read_text().split()
    assert {"tests/", "bench/", "scripts/", ".ci/"} <= set(ignored)
    assert not {"mgie_core/", "nodes/", "workflows/", "train/"} & set(ignored)
