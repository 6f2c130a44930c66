"""The bundle: everything in safetensors, no pickle, and the same results as Apple's folders."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mgie_core import CheckpointError, EditSettings, SampleConfig, load_model
from mgie_core.formats.bundle import FORMAT, save_bundle
from mgie_core.frontends.cli import main
from mgie_core.frontends.pipeline import MGIEPipeline

SETTINGS = EditSettings(max_new_tokens=40, num_inference_steps=4)


def edit(model):
    pipe = MGIEPipeline(model, "cpu", torch.float32)
    return pipe(make_image(), "make the sky blue", SETTINGS, seed=3)


def assert_same_edit(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a.derivation.token_ids, b.derivation.token_ids))
    assert torch.equal(a.derivation.visual_tokens, b.derivation.visual_tokens)
    assert torch.equal(a.imagination.imagination, b.imagination.imagination)
    assert torch.equal(a.output.images, b.output.images)


@pytest.fixture(scope="module")
def reference(tiny_root):
    return edit(load_model(tiny_root))


@pytest.mark.parametrize("name", ["model.safetensors", "bundle-folder"])
def test_round_trip_gives_identical_results(tiny_root, tmp_path, reference, name):
    # fp32 holds every stored dtype exactly: results must be bit-identical.
    out = save_bundle(load_model(tiny_root), tmp_path / name, dtype="fp32")
    bundle = load_model(out)
    assert bundle.info["format"] == "bundle"
    assert_same_edit(edit(bundle), reference)


def test_fp16_bundle_is_close(tiny_root, tmp_path, reference):
    # The LLM weights were fp16 already; only the (fp32) VAE is rounded.
    result = edit(load_model(save_bundle(load_model(tiny_root), tmp_path / "h.safetensors", dtype="fp16")))
    assert torch.equal(result.derivation.visual_tokens, reference.derivation.visual_tokens)
    assert (result.output.images - reference.output.images).abs().max() <= 2 / 255


def test_bundle_loads_without_pickle(tiny_root, tmp_path, monkeypatch, reference):
    out = save_bundle(load_model(tiny_root), tmp_path / "m.safetensors", dtype="fp32")

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load must not be used for a bundle")

    monkeypatch.setattr(torch, "load", no_pickle)
    assert_same_edit(edit(load_model(out)), reference)


def test_bundle_contents(tiny_root, tmp_path):
    out = save_bundle(load_model(tiny_root), tmp_path / "m.safetensors", dtype="bf16")
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == FORMAT and meta["dtype"] == "bf16"
    for field in ("llava_config", "clip_config", "clip_image_config", "edit_head_config", "unet_config",
                  "vae_config", "scheduler_config", "tokenizer"):
        json.loads(meta[field])
    assert {"tokenizer.sp_model", "edit_head.emb", "mllm.lm_head.weight", "unet.conv_in.weight",
            "vae.decoder.conv_out.weight"} <= keys
    assert any(k.startswith("mllm.vision_tower.") for k in keys)
    tensors = load_file(str(out))
    assert tensors["unet.conv_in.weight"].dtype == torch.bfloat16
    assert load_model(out).mllm.lm_head.weight.dtype == torch.bfloat16


def test_bundle_from_a_bundle(tiny_root, tmp_path, reference):
    first = save_bundle(load_model(tiny_root), tmp_path / "a.safetensors", dtype="fp32")
    second = save_bundle(load_model(first), tmp_path / "b.safetensors", dtype="fp32")
    assert_same_edit(edit(load_model(second)), reference)


def test_foreign_or_mixed_bundles_are_refused(tiny_root, tmp_path):
    folder = save_bundle(load_model(tiny_root), tmp_path / "parts")
    unet = load_file(str(folder / "unet.safetensors"))
    save_file(unet, folder / "unet.safetensors", metadata={"format": FORMAT, "format_version": "1", "dtype": "fp32"})
    with pytest.raises(CheckpointError, match="belongs to another bundle"):
        load_model(folder)
    save_file(unet, folder / "unet.safetensors", metadata={"format": FORMAT, "format_version": "99"})
    with pytest.raises(CheckpointError, match="format '99'"):
        load_model(folder / "unet.safetensors")


def test_convert_command(tiny_root, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    assert main(["convert", "--model", str(tiny_root), "--out", str(out), "--dtype", "fp32"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert load_model(out).unet.dtype == torch.float32
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_memory_mapped_tensors_are_aligned(tiny_root, tmp_path):
    # Aligned weights make CPU kernels take the same path as for freshly allocated ones (bit-identical results).
    model = load_model(save_bundle(load_model(tiny_root), tmp_path / "a.safetensors", dtype="fp32"))
    for module in model.modules().values():
        assert all(t.data_ptr() % 64 == 0 for t in module.state_dict().values())


# -- recommended guidance ---------------------------------------------------------------------
def test_recommended_guidance_travels_in_the_bundle_and_is_the_default(tiny_root, tmp_path):
    """A bundle's ``sampling`` metadata is what the pipeline and the CLI sample with unless told otherwise."""
    model = load_model(tiny_root)
    assert model.recommended_sampling == {}  # Apple's layout recommends nothing: the paper's 7.5 / 1.5
    model.info["sampling"] = {"guidance_scale": 3.0, "image_guidance_scale": 1.2}
    path = save_bundle(model, tmp_path / "r.safetensors", dtype="fp32")
    bundle = load_model(path)
    assert bundle.recommended_sampling == {"guidance_scale": 3.0, "image_guidance_scale": 1.2}
    assert load_model(save_bundle(bundle, tmp_path / "again.safetensors")).recommended_sampling == bundle.recommended_sampling

    pipe = MGIEPipeline(bundle, "cpu", torch.float32)
    assert pipe.sample_config() == SampleConfig(guidance_scale=3.0, image_guidance_scale=1.2)
    told = pipe(make_image(), "make the sky blue", SETTINGS.replace(guidance_scale=3.0, image_guidance_scale=1.2),
                seed=3).output.images
    paper = SETTINGS.replace(guidance_scale=7.5, image_guidance_scale=1.5)
    assert not torch.equal(told, pipe(make_image(), "make the sky blue", paper, seed=3).output.images)
    assert torch.equal(told, pipe(make_image(), "make the sky blue", SETTINGS, seed=3).output.images)  # auto: the model's

    image = tmp_path / "in.png"
    make_image().save(image)

    def cli(out: str, *flags: str):
        args = ["edit", "--model", str(path), "--image", str(image), "--instruction", "make the sky blue",
                "--out", str(tmp_path / out), "--steps", "4", "--max-new-tokens", "40", "--quiet", *flags]
        assert main(args) == 0
        return (tmp_path / out).read_bytes()

    assert cli("default.png") == cli("told.png", "--guidance-scale", "3", "--image-guidance-scale", "1.2")
    assert cli("paper.png", "--guidance-scale", "7.5") != cli("default2.png")  # a flag beats the recommendation
    assert cli("paper.png", "--guidance-scale", "7.5") == cli("paper2.png", "--guidance-scale", "7.5",
                                                             "--image-guidance-scale", "1.2")


@pytest.mark.parametrize("sampling, message", [('{"guidance": 2}', "recommended sampling must map"),
                                               ('{"guidance_scale": -1}', "guidance_scale must be")])
def test_bad_recommended_guidance_is_a_clear_error(tiny_root, tmp_path, sampling, message):
    path = save_bundle(load_model(tiny_root), tmp_path / "b.safetensors", dtype="fp32")
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    save_file(load_file(path), path, metadata={**metadata, "sampling": sampling})
    with pytest.raises(CheckpointError, match=f"{message}.*convert the model again"):
        load_model(path)
