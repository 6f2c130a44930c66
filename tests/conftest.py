"""Shared fixtures: the tiny Apple-layout checkpoint (built once per session) and small images."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Tests never reach a hub: fail loudly instead of downloading anything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from tiny_checkpoint import build_tiny_checkpoint  # noqa: E402

from mgie_core import load_model  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-gpu", action="store_true", help="run tests marked gpu")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-gpu") and torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and --run-gpu")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MGIE checkpoint in Apple's layout; tests must not modify it (copy it first)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "mgie")


@pytest.fixture()
def tiny_model(tiny_root: Path):
    """A fresh fp32 model on the CPU (loading takes a fraction of a second)."""
    return load_model(tiny_root).to("cpu", torch.float32).eval()


@pytest.fixture()
def image_path(tmp_path: Path) -> Path:
    """A 64x48 picture on disk."""
    path = tmp_path / "in.png"
    make_image(64, 48).save(path)
    return path


def accelerate_launch(processes: int = 2) -> list[str]:
    """The command that starts ``processes`` processes on this CPU, as ``accelerate launch`` does GPUs (torchrun,
    gloo), on a port free now rather than the default 29500 another run may still hold."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no"]


def make_image(width: int = 40, height: int = 32, seed: int = 0) -> Image.Image:
    """A deterministic picture with structure (gradients + a square), not pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), np.full_like(x, 90)], -1)
    pixels = pixels + rng.normal(0, 8, pixels.shape)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = (230, 40, 40)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


@pytest.fixture()
def image() -> Image.Image:
    return make_image()


@pytest.fixture()
def comfy(tmp_path, tiny_root):
    """The pack loaded like ComfyUI loads it, on stubbed ComfyUI modules, with the tiny model in models/mgie.

    Yields (node classes by id, comfy.model_management, comfy.utils, folder_paths, tmp_path).
    """
    import comfy_harness as harness

    harness.install_stub(tmp_path)
    import folder_paths

    models = tmp_path / "models" / "mgie"
    models.mkdir(parents=True)
    (models / "tiny").symlink_to(tiny_root, target_is_directory=True)
    extra = tmp_path / "extra"  # as extra_model_paths.yaml would add before the pack is imported
    extra.mkdir()
    folder_paths.add_model_folder_path("mgie", str(extra))
    nodes = harness.load_pack(tmp_path / "custom_nodes")
    import comfy.model_management as mm
    import comfy.utils

    yield nodes, mm, comfy.utils, folder_paths, tmp_path
    harness.remove_stub()
