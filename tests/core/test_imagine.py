"""Stage 2: the edit head and the null imagination."""

from __future__ import annotations

import torch
from conftest import make_image

from mgie_core import DeriveConfig, derive, imagine
from mgie_core.model.edit_head import EditHeadConfig


def test_sizes_come_from_the_weights(tiny_model):
    config = tiny_model.edit_head.config
    assert config == EditHeadConfig(llm_hidden_size=64, num_visual_tokens=8, hidden_size=32, num_queries=77,
                                    output_size=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                                    feedforward_size=64)
    mapper = tiny_model.edit_head.mapper
    layer = mapper.encoder.layers[0]
    assert layer.norm_first and layer.dropout.p == 0.0 and layer.self_attn.batch_first
    assert layer.activation is torch.nn.functional.relu or layer.activation_relu_or_gelu == 1


def test_edit_head_is_apple_edit_mapper(tiny_model):
    head = tiny_model.edit_head
    torch.manual_seed(0)
    visual = torch.randn(3, 8, 64)
    with torch.no_grad():
        hid = head.llm2hid(visual + head.emb)
        expected = head.hid2feat(head.mapper(hid, head.query.repeat(3, 1, 1)))
        assert torch.allclose(head(visual), expected, atol=1e-6)
        # null imagination: the head on zeros (plus emb), one row
        null = head.null_imagination()
        assert null.shape == (1, 77, 32)
        assert torch.allclose(null, head(torch.zeros(1, 8, 64)))


def test_imagine_batch(tiny_model):
    images = [make_image(seed=1), make_image(seed=2)]
    d = derive(tiny_model, images, ["make the sky blue", "make it red"], DeriveConfig(max_new_tokens=40))
    out = imagine(tiny_model.edit_head, d)
    assert out.imagination.shape == (2, 77, 32) and out.null_imagination.shape == (2, 77, 32)
    assert torch.equal(out.null_imagination[0], out.null_imagination[1])
    assert not torch.allclose(out.imagination[0], out.imagination[1])  # different instructions, different imagination
    assert not torch.allclose(out.imagination[0], out.null_imagination[0])
    single = imagine(tiny_model.edit_head, derive(tiny_model, images[1:], ["make it red"], DeriveConfig(max_new_tokens=40)))
    torch.testing.assert_close(out.imagination[1], single.imagination[0], rtol=1e-5, atol=1e-5)
