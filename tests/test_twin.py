"""The IP2P twin of mgie-mini: it trains on the same target rule as mgie-mini and survives a save/load;
the same training is mgie-mini's InstructPix2Pix stage."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler
from safetensors import safe_open
from safetensors.torch import save_file

from train.mini.build import edit_at, pictures, train_ip2p
from train.mini.build import main as build_main
from train.mini.model import VAE, build_mini, train_tokenizer
from train.mini.perception import main as perception_main
from train.mini.twin import Twin, load_twin, save_twin, snr_weights, starting_vae, train_twin
from train.mini.twin import main as twin_main


def test_twin_trains_and_round_trips(tmp_path):
    torch.manual_seed(0)
    twin = Twin(train_tokenizer(), AutoencoderKL(**VAE))
    assert twin.scheduler_config["prediction_type"] == "v_prediction"  # sampled like mgie-mini
    before = {k: v.clone() for k, v in twin.unet.state_dict().items()}
    log = tmp_path / "twin.log.jsonl"
    train_twin(twin, steps=2, batch_size=2, lr=1e-3, seed=0, log=log)
    assert any(not torch.equal(before[k], v) for k, v in twin.unet.state_dict().items())
    assert log.read_text().count("\n") == 1  # the last step is always logged

    loaded = load_twin(save_twin(twin, tmp_path / "twin.safetensors"))
    texts = ["make it brighter", "paint the circle blue", ""]
    torch.testing.assert_close(loaded.encode(texts), twin.encode(texts), rtol=0, atol=0)
    for (name, a), b in zip(twin.unet.state_dict().items(), loaded.unet.state_dict().values()):
        assert torch.equal(a, b), name


def test_expi_twin_trains_on_expressive_words_and_keeps_that_on_load(tmp_path, monkeypatch):
    torch.manual_seed(0)
    twin = Twin(train_tokenizer(), AutoencoderKL(**VAE), text="expressive")
    seen = []
    encode = twin.encode
    monkeypatch.setattr(twin, "encode", lambda texts: seen.extend(texts) or encode(texts))
    train_twin(twin, steps=1, batch_size=2, lr=1e-3, seed=0, log=tmp_path / "log.jsonl")
    assert [edit_at(0, i).expressive for i in range(2)] == [t for t in seen if t]
    assert load_twin(save_twin(twin, tmp_path / "expi.safetensors")).text == "expressive"


def test_ip2p_stage_trains_mgie_minis_own_unet_on_brief_instructions(tmp_path, monkeypatch):
    model = build_mini()
    seen = []
    encode = Twin.encode
    monkeypatch.setattr(Twin, "encode", lambda self, texts: seen.extend(texts) or encode(self, texts))
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    log = tmp_path / "log.jsonl"
    train_ip2p(model, steps=1, batch_size=2, lr=1e-3, seed=0, log=log)
    assert any(not torch.equal(before[k], v) for k, v in model.unet.state_dict().items())
    # its own stretch of the stream (the joint stage starts at edit_at(0, 0)), brief instructions
    assert [t for t in seen if t] == [edit_at(3, i).instruction for i in range(2)]
    assert json.loads(log.read_text())["phase"] == "ip2p"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("main, argv", [(build_main, []), (twin_main, ["--vae", "missing.safetensors"]),
                                        (perception_main, [])])
def test_asking_for_cuda_without_a_gpu_is_a_one_line_error(main, argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--device", "cuda", "--out", str(tmp_path / "out.safetensors")])
    assert stop.value.code == 2
    assert "sees no CUDA GPU; use --device cpu" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_continued_twin_takes_up_the_stream_and_the_schedule_where_it_stopped(tmp_path, monkeypatch):
    twin = Twin(train_tokenizer(), AutoencoderKL(**VAE))
    seen, rates = [], []
    encode = Twin.encode
    monkeypatch.setattr(Twin, "encode", lambda self, texts: seen.extend(texts) or encode(self, texts))
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: rates.append(self.param_groups[0]["lr"])
                        or step(self, *a, **k))
    train_twin(twin, steps=8, batch_size=2, lr=1e-3, seed=0, log=tmp_path / "log.jsonl", start=6)
    # steps 6 and 7 of the stream, not 0 and 1 again
    assert [t for t in seen if t] == [edit_at(0, i).instruction for i in range(12, 16)]
    # the learning rate of an 8-step cosine at steps 6 and 7 (past its 1-step warmup), not a fresh warmup
    assert rates == pytest.approx([1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * s / 8))) for s in (6, 7)])


@pytest.mark.parametrize("argv, message", [
    (["--init", "twin.safetensors"], "--init needs --start-step"),
    (["--vae", "vae.safetensors", "--init", "twin.safetensors", "--start-step", "5"], "give --vae (a new twin) or --init"),
    ([], "give --vae (a new twin) or --init"),
    (["--vae", "vae.safetensors", "--ema", "1.5"], "--ema is a decay between 0 and 1"),
    (["--vae", "vae.safetensors", "--snr-gamma", "-1"], "--snr-gamma is a positive SNR cap"),
])
def test_twin_arguments_are_checked_before_anything_is_loaded(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        twin_main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_a_new_twin_takes_a_bundles_vae_with_its_scaling_factor():
    """v17's budget-matched twin starts from the shipped bundle's VAE: the same weights (fp16 in the bundle)
    and the latent scaling the model was trained with, not one calibrated again from the rounded weights."""
    from mgie_core import default_model_path

    bundle = default_model_path()
    vae = starting_vae(bundle, seed=0)
    with safe_open(str(bundle), framework="pt") as handle:
        stored = {k.removeprefix("vae."): handle.get_tensor(k) for k in handle.keys() if k.startswith("vae.")}
        config = json.loads(handle.metadata()["vae_config"])
    assert vae.dtype == torch.float32 and set(vae.state_dict()) == set(stored)
    for name, weight in vae.state_dict().items():
        assert torch.equal(weight, stored[name].float()), name
    assert vae.config.scaling_factor == config["scaling_factor"]


def test_a_vae_file_is_scaled_as_the_build_scales_it(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "vae.safetensors"
    save_file(AutoencoderKL(**VAE).state_dict(), str(path))
    vae = starting_vae(path, seed=0)
    x = pictures([edit_at(2, i) for i in range(128)])
    assert vae.encode(x).latent_dist.mode().std().item() * vae.config.scaling_factor == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("make, message", [
    (None, "weight file not found"),
    (lambda p: save_file({"unet.conv_in.weight": torch.zeros(2)}, str(p)), "neither an mgie-mini bundle nor a VAE"),
    (lambda p: p.write_bytes(b"not a safetensors file"), "not a readable safetensors file"),
])
def test_a_vae_that_is_not_one_is_a_one_line_error_before_training(make, message, tmp_path, capsys):
    path = tmp_path / "vae.safetensors"
    if make:
        make(path)
    with pytest.raises(SystemExit) as stop:
        twin_main(["--vae", str(path), "--out", str(tmp_path / "twin.safetensors")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err
    assert not (tmp_path / "twin.safetensors").exists()


def test_min_snr_weights_cap_the_easy_timesteps_and_keep_the_mean_loss_scale():
    ddpm = DDPMScheduler.from_config(Twin(train_tokenizer(), AutoencoderKL(**VAE)).scheduler_config)
    snr = ddpm.alphas_cumprod / (1 - ddpm.alphas_cumprod)
    weights = snr_weights(ddpm, gamma=5.0)  # one per timestep
    assert weights.mean().item() == pytest.approx(1.0)
    # min(SNR, 5) / (SNR + 1), up to the common scale: capped where the picture is nearly clean (t = 0, SNR ~ 1e3),
    # SNR / (SNR + 1) where it is nearly noise (t = 999, SNR ~ 5e-3); 1 / (SNR + 1) would be v-prediction's own
    unscaled = snr.clamp(max=5) / (snr + 1)
    torch.testing.assert_close(weights, unscaled / unscaled.mean())
    assert snr[0] > 5 > snr[999] and weights[0] < weights[300] and weights[999] < weights[300]


def test_the_twin_command_makes_its_folder_and_writes_an_ema_of_the_weights(tmp_path, monkeypatch):
    vae = tmp_path / "vae.safetensors"
    torch.manual_seed(0)
    save_file(AutoencoderKL(**VAE).state_dict(), str(vae))
    seen = []  # conv_in's weight before the first optimizer step, then after each
    step = torch.optim.AdamW.step

    def stepped(self, *a, **k):
        conv_in = next(p for p in self.param_groups[0]["params"] if p.shape == (32, 8, 3, 3))
        seen.extend([] if seen else [conv_in.detach().clone()])
        result = step(self, *a, **k)
        seen.append(conv_in.detach().clone())
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", stepped)
    out = tmp_path / "new" / "twin.safetensors"  # the log is written beside it: the folder is made first
    argv = ["--vae", str(vae), "--out", str(out), "--steps", "3", "--batch-size", "2", "--ema", "0.9", "--snr-gamma", "5"]
    assert twin_main(argv) == 0
    assert json.loads(out.with_suffix(".log.jsonl").read_text().splitlines()[-1])["step"] == 3
    trained, averaged = load_twin(out), load_twin(tmp_path / "new" / "twin-ema.safetensors")
    assert torch.equal(trained.unet.conv_in.weight, seen[-1])
    expected = seen[0]  # the shadow starts at the initial weights; after step s it keeps min(0.9, (1 + s) / (10 + s))
    for s, weight in enumerate(seen[1:]):
        decay = min(0.9, (1 + s) / (10 + s))
        expected = decay * expected + (1 - decay) * weight
    torch.testing.assert_close(averaged.unet.conv_in.weight, expected)
    assert not torch.allclose(expected, seen[-1])
    for (name, a), b in zip(trained.vae.state_dict().items(), averaged.vae.state_dict().values()):
        assert torch.equal(a, b), name  # the VAE is not trained, nor averaged
