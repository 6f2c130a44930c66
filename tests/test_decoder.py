"""The decoder fine-tune (train/mini/decoder.py): only the decoder learns, the latents keep their meaning,
the twin gets the same decoder, and a VAE with another encoder is refused."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors import safe_open

from mgie_core import load_model
from mgie_core.errors import InputError
from mgie_core.formats.bundle import save_bundle
from train.mini.build import edits_at, pictures
from train.mini.decoder import finetune_decoder, main, same_encoder, swap_decoder
from train.mini.model import VAE, build_mini, train_tokenizer
from train.mini.twin import Twin, load_twin, save_twin


def _l1(vae: AutoencoderKL, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (vae.decode(vae.encode(x).latent_dist.mode()).sample - x).abs().mean().item()


def test_only_the_decoder_learns_and_the_round_trip_gets_closer():
    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE)
    x = pictures(edits_at(99, 0, 4))  # pictures the fine-tune never sees
    before, l1_before = {k: v.clone() for k, v in vae.state_dict().items()}, _l1(vae, x)
    rows = finetune_decoder(vae, steps=30, batch_size=4, lr=3e-3, log_every=10)
    assert [r["step"] for r in rows] == [10, 20, 30]
    changed = {k for k, v in vae.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    assert any(k.startswith("decoder.") for k in changed) and any(k.startswith("post_quant_conv.") for k in changed)
    assert _l1(vae, x) < 0.8 * l1_before  # measured: 0.67 -> 0.50
    assert not any(p.requires_grad for p in vae.parameters()) and not vae.training


def test_swap_decoder_copies_the_decoder_and_refuses_another_encoder():
    torch.manual_seed(0)
    source = AutoencoderKL(**VAE)
    same = AutoencoderKL(**VAE)
    encoder = {k: v.half().float() for k, v in source.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
    same.load_state_dict(encoder, strict=False)  # the encoder as a fp16 bundle stores it, a decoder of its own
    assert same_encoder(same, source)
    swap_decoder(same, source)
    for k, v in source.state_dict().items():
        if k.startswith(("decoder.", "post_quant_conv.")):
            assert torch.equal(same.state_dict()[k], v), k
    other = AutoencoderKL(**VAE)
    assert not same_encoder(other, source)
    with pytest.raises(InputError, match="encoder"):
        swap_decoder(other, source)


def test_command_writes_a_bundle_and_a_twin_that_share_the_new_decoder(tmp_path):
    torch.manual_seed(0)
    model = build_mini(0)
    bundle = save_bundle(model, tmp_path / "mini.safetensors", dtype="fp16")
    twin = save_twin(Twin(train_tokenizer(), load_model(bundle).vae.float()), tmp_path / "twin.safetensors")
    out, twin_out = tmp_path / "mini-dec.safetensors", tmp_path / "twin-dec.safetensors"
    assert main(["--model", str(bundle), "--out", str(out), "--steps", "2", "--batch-size", "2",
                 "--twin", str(twin), "--twin-out", str(twin_out)]) == 0
    before, after = load_model(bundle), load_model(out)
    old, new, new_twin = before.vae, after.vae, load_twin(twin_out).vae
    assert same_encoder(new, old)
    decoder = [k for k in old.state_dict() if k.startswith("decoder.")]
    assert any(not torch.equal(old.state_dict()[k], new.state_dict()[k]) for k in decoder)
    for k in decoder:  # the twin stores fp32, the bundle fp16: the same decoder up to that rounding
        torch.testing.assert_close(new_twin.state_dict()[k].half(), new.state_dict()[k].half(), rtol=0, atol=0)
    assert after.info["extra"]["decoder_steps"] == 2
    assert after.fingerprint() != before.fingerprint()  # a new decoder is a new model for LoRA files
    for part in ("mllm", "edit_head", "unet"):  # nothing but the decoder moved
        for name, a in before.modules()[part].state_dict().items():
            assert torch.equal(a, after.modules()[part].state_dict()[name]), (part, name)
    with safe_open(str(twin_out), framework="pt") as handle:
        assert handle.metadata()["format"] == "mgie-mini-ip2p-twin"


def test_a_twin_with_another_encoder_is_refused_before_training(tmp_path, capsys):
    torch.manual_seed(0)
    bundle = save_bundle(build_mini(0), tmp_path / "mini.safetensors", dtype="fp16")
    twin = save_twin(Twin(train_tokenizer(), AutoencoderKL(**VAE)), tmp_path / "twin.safetensors")
    with pytest.raises(SystemExit):
        main(["--model", str(bundle), "--out", str(tmp_path / "x.safetensors"), "--twin", str(twin),
              "--twin-out", str(tmp_path / "y.safetensors")])
    assert "encoder" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_decoder_from_takes_another_bundles_decoder_without_training(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_mini(0)
    bundle = save_bundle(model, tmp_path / "mini.safetensors", dtype="fp16")
    tuned = tmp_path / "tuned.safetensors"  # the same encoder, a decoder fine-tuned on it
    assert main(["--model", str(bundle), "--out", str(tuned), "--steps", "2", "--batch-size", "2"]) == 0
    trained_on = build_mini(0)  # the model trained on: same VAE, another UNet
    with torch.no_grad():
        for param in trained_on.unet.parameters():
            param.add_(0.01)
    other = save_bundle(trained_on, tmp_path / "trained-on.safetensors", dtype="fp16")
    out = tmp_path / "out.safetensors"
    assert main(["--model", str(other), "--decoder-from", str(tuned), "--out", str(out)]) == 0
    got, want, base = load_model(out), load_model(tuned), load_model(other)
    for k, v in got.vae.state_dict().items():  # the tuned decoder, the shared encoder
        assert torch.equal(v, want.vae.state_dict()[k]), k
    for name, a in base.unet.state_dict().items():  # the model's own UNet, not the source's
        assert torch.equal(a, got.unet.state_dict()[name]), name
    assert got.info["extra"]["decoder_steps"] == 2 and got.info["extra"]["decoder_from"] == "tuned.safetensors"

    stranger = build_mini(0)
    stranger.vae = AutoencoderKL(**VAE)  # another encoder
    foreign = save_bundle(stranger, tmp_path / "foreign.safetensors", dtype="fp16")
    with pytest.raises(SystemExit):
        main(["--model", str(other), "--decoder-from", str(foreign), "--out", str(tmp_path / "x.safetensors")])
    assert "encoder" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
