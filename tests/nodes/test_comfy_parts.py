"""Load MGIE's MODEL and VAE outputs: MGIE's own weights under ComfyUI's model and VAE classes (stubbed here;
the stock-sampler workflows run in a real ComfyUI, see the README)."""

from __future__ import annotations

import types

import comfy_harness as harness
import pytest
import torch
from test_nodes import comfy_image, load_outputs

from mgie_core import load_model


def test_model_output_is_comfyuis_ip2p_model_over_mgies_own_parameters(comfy, tiny_root):
    nodes = comfy[0]
    import comfy.utils

    handle, model, _ = load_outputs(nodes)
    diffusion = model.model.diffusion_model
    shared = {id(p) for p in diffusion.parameters()}
    assert shared == {id(p) for p in handle.model.unet.parameters()}  # the same Parameter objects: no copy
    assert len(diffusion.names) == len(handle.model.unet.state_dict())
    config = model.model.model_config
    assert config.unet_config["num_heads"] == 8 and config.unet_config["num_head_channels"] == -1  # 8 heads of 4
    assert config.latent_format.scale_factor == handle.model.vae.config.scaling_factor
    assert config.sampling_settings == {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012,
                                        "timesteps": 1000, "zsnr": False}
    assert model.model.model_type.name == "EPS"
    # the tiny UNet: cross-attention at the first level only, one resnet per level
    assert comfy.utils.layouts[-1] == {"num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [1, 0],
                                       "transformer_depth_output": [1, 1, 0, 0], "transformer_depth_middle": 1}


def test_vae_output_encodes_and_decodes_as_mgie_does(comfy):
    nodes = comfy[0]
    handle, _, vae = load_outputs(nodes)
    image = comfy_image((32, 24))
    latents = vae.encode(image)
    core = handle.model.vae
    expected = core.encode(image.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(latents, expected)
    assert vae.downscale_ratio == 2 and vae.latent_channels == 4  # the tiny VAE halves each side
    decoded = vae.decode(latents)
    torch.testing.assert_close(decoded, ((core.decode(expected).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1))
    assert decoded.shape == image.shape


@pytest.mark.skipif(not (harness.ROOT / "mgie_core" / "assets" / "mgie-mini.safetensors").is_file(),
                    reason="mgie-mini is not built")
def test_mgie_mini_model_output_predicts_v(comfy):
    nodes = comfy[0]
    handle, model, vae = load_outputs(nodes, "mgie-mini (embedded)")
    assert model.model.model_type.name == "V_PREDICTION"
    assert model.model.model_config.unet_config["num_heads"] == handle.model.unet.config.attention_head_dim
    assert vae.downscale_ratio == 4


def test_a_unet_comfyui_cannot_express_is_named(comfy, tiny_root):
    nodes = comfy[0]
    from importlib import import_module

    parts = import_module(f"{harness.PACK_NAME}.nodes.comfy_parts")
    config = types.SimpleNamespace(**{**load_model(tiny_root).unet.config, "norm_num_groups": 16})
    with pytest.raises(Exception, match=r"no ComfyUI MODEL equivalent \(norm_num_groups\); use MGIE Sampler"):
        parts.ldm_layout(config)
    with pytest.raises(Exception, match="predicts 'sample'"):
        parts.model_type({"prediction_type": "sample"})
    assert nodes["MGIELoader"]  # the pack itself loaded
