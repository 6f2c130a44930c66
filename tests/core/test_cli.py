"""``python -m mgie_core edit``: end to end, intermediates, and one-line errors without partial files."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from mgie_core import EditSettings
from mgie_core.frontends.cli import main
from mgie_core.images import load_image

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--steps", "3", "--max-new-tokens", "40", "--quiet"]


def run(tiny_root, tmp_path, image_path, *extra, instruction="make the sky blue", out="out.png"):
    args = ["edit", "--model", str(tiny_root), "--image", str(image_path), "--instruction", instruction,
            "--out", str(tmp_path / out), *FAST, *extra]
    return main(args)


def test_edit_writes_image_intermediates_and_prints_instruction(tiny_root, tmp_path, image_path, capsys):
    npz = tmp_path / "steps.npz"
    assert run(tiny_root, tmp_path, image_path, "--save-intermediates", str(npz), "--seed", "5") == 0
    said = capsys.readouterr().out.strip()
    assert said == '"make the sky blue" understood as "paint the whole sky a deep blue.keep the rest as it is."'
    out = Image.open(tmp_path / "out.png")
    assert out.size == (64, 48) and out.mode == "RGB"
    data = np.load(npz)
    assert data["token_ids"].ndim == 1 and data["token_ids"][0] == 1  # the full sequence, from <s>
    assert data["visual_tokens"].shape == (8, 64)
    assert data["imagination"].shape == (77, 32) and data["null_imagination"].shape == (77, 32)
    assert str(data["expressive_instruction"]) == "paint the whole sky a deep blue.keep the rest as it is."
    # same seed, same picture; the override changes the imagination
    assert run(tiny_root, tmp_path, image_path, "--seed", "5", out="again.png") == 0
    assert np.array_equal(np.asarray(out), np.asarray(Image.open(tmp_path / "again.png")))
    npz2 = tmp_path / "override.npz"
    assert run(tiny_root, tmp_path, image_path, "--expressive", "turn the apple red.",
               "--save-intermediates", str(npz2)) == 0
    assert capsys.readouterr().out.strip().endswith('understood as "turn the apple red."')
    assert not np.allclose(np.load(npz2)["imagination"], data["imagination"])


def test_instruction_given_twice_is_a_chain_and_each_picture_is_written(tiny_root, tmp_path, image_path, capsys):
    from mgie_core import MGIEPipeline, load_model

    assert run(tiny_root, tmp_path, image_path, "--instruction", "make it red", "--seed", "3") == 0
    assert capsys.readouterr().out.splitlines() == [
        '1. "make the sky blue" understood as "paint the whole sky a deep blue.keep the rest as it is."',
        '2. "make it red" understood as "turn the apple red."']
    pipe = MGIEPipeline(load_model(tiny_root), "cpu", "fp32")
    chain = pipe.edit_in_chain(load_image(image_path), ["make the sky blue", "make it red"],
                               EditSettings(max_new_tokens=40, num_inference_steps=3), seed=3)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out-1.png")), np.asarray(chain[0].images[0]))  # step 1
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(chain[-1].images[0]))  # the last


def test_module_entry_point(tiny_root, tmp_path, image_path):
    cmd = [sys.executable, "-m", "mgie_core", "edit", "--model", str(tiny_root), "--image", str(image_path),
           "--instruction", "make it red", "--out", str(tmp_path / "o.webp"), *(a for a in FAST if a != "--quiet"),
           "--scheduler", "ddim"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '"make it red" understood as "turn the apple red."'
    assert Image.open(tmp_path / "o.webp").size == (64, 48)
    # no terminal: progress as plain lines, the derivation's tokens, then the denoising steps, and no cursor control
    lines = done.stderr.splitlines()
    assert "\x1b" not in done.stderr and "\r" not in done.stderr
    assert "Failed to load" not in done.stderr and "Enum subclass" not in done.stderr  # torchao's and torch's noise
    derived = [i for i, line in enumerate(lines) if line.startswith("[mgie] derive: ") and line.endswith(" tokens")]
    denoised = [i for i, line in enumerate(lines) if line.startswith("[mgie] denoise: ") and line.endswith(" steps")]
    assert derived and denoised and derived[-1] < denoised[0] and lines[denoised[-1]] == "[mgie] denoise: 3/3 steps"


def test_every_edit_option_says_what_it_does_and_its_default():
    from mgie_core.frontends.cli import build_parser

    edit = next(a for a in build_parser()._actions if a.dest == "command").choices["edit"]
    for action in edit._actions:
        if action.dest == "help" or action.required or action.const is not None:  # required flags, switches
            continue
        assert action.help and "default" in action.help, action.dest


def _png16(path: Path, rgb: np.ndarray) -> None:
    """A 48-bit RGB PNG (PIL cannot write one)."""
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_unusual_images_are_converted(tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (20, 10), (200, 100, 50, 0)).save(rgba)
    assert np.asarray(load_image(rgba))[0, 0].tolist() == [200, 100, 50]  # alpha dropped, like convert("RGB")
    gray = tmp_path / "gray.png"
    Image.new("L", (12, 12), 77).save(gray)
    assert np.asarray(load_image(gray))[0, 0].tolist() == [77, 77, 77]
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(gray16)
    assert np.asarray(load_image(gray16))[0, 0].tolist() == [255, 255, 255]  # scaled, not clipped
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(gray16)
    assert np.asarray(load_image(gray16))[0, 0].tolist() == [128, 128, 128]
    rgb16 = tmp_path / "rgb16.png"
    _png16(rgb16, np.stack([np.full((4, 4), v, np.uint16) for v in (65535, 32768, 0)], -1))
    assert np.asarray(load_image(rgb16))[0, 0].tolist() == [255, 128, 0]
    palette = tmp_path / "p.gif"
    Image.new("P", (9, 9), 3).save(palette)
    assert load_image(palette).mode == "RGB"


@pytest.mark.parametrize("kind", ["rgba", "gray", "gray16"])
def test_unusual_images_edit_end_to_end(tiny_root, tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    base = make_image(32, 32)
    {"rgba": lambda: base.convert("RGBA"), "gray": lambda: base.convert("L"),
     "gray16": lambda: Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)}[kind]().save(path)
    assert run(tiny_root, tmp_path, path) == 0
    assert Image.open(tmp_path / "out.png").size == (32, 32)


def test_very_large_image_is_scaled_to_max_side(tiny_root, tmp_path):
    path = tmp_path / "big.png"
    make_image(3000, 2000).save(path)
    assert run(tiny_root, tmp_path, path, "--max-side", "96") == 0
    assert Image.open(tmp_path / "out.png").size == (96, 64)


def test_odd_sizes_are_rounded_down(tiny_root, tmp_path):
    path = tmp_path / "odd.png"
    make_image(33, 27).save(path)
    assert run(tiny_root, tmp_path, path) == 0
    assert Image.open(tmp_path / "out.png").size == (32, 26)  # multiples of the tiny VAE's factor 2


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        (lambda p: p.write_bytes(b"not an image"), [], r"error: cannot read image .*bad.png .*use a PNG, JPEG"),
        (lambda p: None, [], r"error: image not found: .*bad.png"),
        (lambda p: Image.new("RGB", (1, 1)).save(p), [], r"error: image of 1x1 pixels is too small: .* upscale it first"),
        (lambda p: make_image().save(p), ["--instruction", "   "], r"error: --instruction is empty"),
        (lambda p: make_image().save(p), ["--instruction", "a"] * 17, r"error: 17 instructions given; a chain .* 16"),
        (lambda p: make_image().save(p), ["--instruction", "a", "--instruction", "b", "--expressive", "c"],
         r"error: the expressive instruction you give replaces .* a chain"),
        (lambda p: make_image().save(p), ["--instruction", "go " * 500], r"error: instruction is too long: .* shorten"),
        (lambda p: make_image().save(p), ["--model", "/nonexistent/mgie"], r"error: model not found: /nonexistent/mgie"),
        (lambda p: make_image().save(p), ["--steps", "1001"],
         r"error: --steps must be from 1 to 1,000, or 0 \(auto\), got 1001"),
        (lambda p: make_image().save(p), ["--max-side", "4"], r"error: --max-side must be from 8 to 16,384, or 0 "
                                                              r"\(auto\), or -1 \(no limit\), got 4"),
        (lambda p: make_image().save(p), ["--out", "x.txt"], r"error: --out .*x.txt: unknown image extension"),
        (lambda p: make_image().save(p), ["--expressive", "a <im_end> b"],
         r"error: expressive instruction contains the control token"),
        (lambda p: make_image().save(p), ["--device", "nope"], r"error: --device 'nope' is not a torch device"),
    ],
)
def test_bad_input_one_line_error_and_no_output(tiny_root, tmp_path, capsys, setup, extra, message):
    path = tmp_path / "bad.png"
    setup(path)
    instruction = [] if "--instruction" in extra else ["--instruction", "make it red"]  # --instruction appends steps
    args = ["edit", "--model", str(tiny_root), "--image", str(path), *instruction,
            "--out", str(tmp_path / "out.png"), "--save-intermediates", str(tmp_path / "i.npz"), *FAST, *extra]
    assert main(args) == 2
    line = _error(capsys)
    assert __import__("re").match(message, line), line
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "i.npz").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_no_model_and_no_default_is_a_clear_error(tmp_path, image_path, capsys, monkeypatch):
    import mgie_core.formats.loader as loader

    monkeypatch.setattr(loader, "default_model_path", lambda: tmp_path / "missing.safetensors")
    assert main(["edit", "--image", str(image_path), "--instruction", "x", "--out", str(tmp_path / "o.png")]) == 2
    assert "no model given and the embedded mgie-mini is missing" in _error(capsys)


def test_the_fast_preset_sets_sampler_and_steps_unless_given():
    from mgie_core.frontends.cli import build_parser
    from mgie_core.frontends.flags import settings_from

    def resolved(*extra, recommended=None):
        args = build_parser().parse_args(["edit", "--image", "x.png", "--instruction", "x", "--out", "o.png", *extra])
        return settings_from(args).sample_config(recommended)

    paper = resolved()
    assert (paper.scheduler, paper.num_inference_steps, paper.guidance_scale, paper.max_side) == (
        "euler_ancestral", 100, 7.5, 1024)
    fast = resolved("--preset", "fast")
    assert (fast.scheduler, fast.num_inference_steps) == ("dpmpp_2m_karras", 25)
    mine = resolved("--preset", "fast", "--steps", "30")
    assert (mine.scheduler, mine.num_inference_steps) == ("dpmpp_2m_karras", 30)
    auto = resolved("--steps", "auto", "--guidance-scale", "0", "--max-side", "0", recommended={"guidance_scale": 2.0,
                                                                                              "max_side": 64})
    assert (auto.num_inference_steps, auto.guidance_scale, auto.max_side) == (100, 2.0, 64)  # 0 and auto: the same
    assert resolved("--max-side", "-1", recommended={"max_side": 64}).max_side == -1  # no limit, whatever it recommends


def test_the_library_silences_only_the_noise_from_torchao_and_torch():
    """A real run's stderr holds none of those lines (test_module_entry_point); here, the filters drop those lines
    only, not torchao's other warnings."""
    import logging

    import mgie_core  # noqa: F401  (installs the filters)

    def shown(logger, msg, *args):
        return logging.getLogger(logger).filter(logging.LogRecord(logger, logging.WARNING, __file__, 1, msg, args, None))

    assert not shown("torchao", "Failed to load /x/_C_mxfp8.so: Could not load this library")
    assert not shown("torch.utils._pytree", "%s is an Enum subclass and is now natively supported", "KernelPreference")
    assert shown("torchao", "kept") and shown("torch.utils._pytree", "another warning")
