"""Loading Apple's layout: what is read from where, and a clear error for every way it can be wrong."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mgie_core import CheckpointError, load_model
from mgie_core.formats.weights import read_state_dict


@pytest.fixture()
def root(tiny_root, tmp_path) -> Path:
    """A private copy of the tiny checkpoint that a test may damage."""
    copy = tmp_path / "mgie"
    shutil.copytree(tiny_root, copy)
    return copy


def test_loads_everything_from_the_files(tiny_root):
    model = load_model(tiny_root)
    mllm_pt = torch.load(tiny_root / "mgie_7b" / "mllm.pt", weights_only=True)
    # mllm.pt rows override LLaVA's (the shards hold different, smaller tables)
    assert torch.equal(model.mllm.llm.embed_tokens.weight, mllm_pt["model.embed_tokens.weight"])
    assert torch.equal(model.mllm.lm_head.weight, mllm_pt["lm_head.weight"])
    assert torch.equal(model.edit_head.emb, mllm_pt["emb"])
    unet_pt = torch.load(tiny_root / "mgie_7b" / "unet.pt", weights_only=True)
    assert all(torch.equal(model.unet.state_dict()[k], v) for k, v in unet_pt.items())  # unet.pt replaces ip2p's
    vae_bin = torch.load(tiny_root / "instruct-pix2pix" / "vae" / "diffusion_pytorch_model.bin", weights_only=True)
    assert torch.equal(model.vae.state_dict()["encoder.mid_block.attentions.0.to_q.weight"],
                       vae_bin["encoder.mid_block.attentions.0.query.weight"])  # old names renamed
    assert model.spec.num_visual_tokens == 8 and model.spec.num_image_patches == 16
    assert model.spec.visual_token_ids[0] == model.tokenizer.sp.get_piece_size() + 3
    assert model.scheduler_config["_class_name"] == "EulerAncestralDiscreteScheduler"
    assert model.clip_image_config.shortest_edge == 32


def test_vision_tower_resolution(root, tmp_path, monkeypatch):
    clip = root / "clip-vit-large-patch14"
    elsewhere = tmp_path / "models" / "my-clip"
    shutil.move(clip, elsewhere)
    with pytest.raises(CheckpointError, match=r"CLIP vision tower 'openai/clip-vit-large-patch14' not found; looked in"):
        load_model(root)
    assert load_model(root, vision_tower=elsewhere).mllm.vision_tower is not None  # explicit path
    config = json.loads((root / "LLaVA-7B-v1" / "config.json").read_text())
    config["mm_vision_tower"] = str(elsewhere)  # the config may hold a path
    (root / "LLaVA-7B-v1" / "config.json").write_text(json.dumps(config))
    load_model(root)
    config["mm_vision_tower"] = "openai/clip-vit-large-patch14"
    (root / "LLaVA-7B-v1" / "config.json").write_text(json.dumps(config))
    # the local Hugging Face cache, read without network
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--openai--clip-vit-large-patch14" / "snapshots" / "0123abcd"
    shutil.copytree(elsewhere, snapshot)
    (cache / "models--openai--clip-vit-large-patch14" / "refs").mkdir()
    (cache / "models--openai--clip-vit-large-patch14" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert load_model(root).mllm.vision_tower is not None


def test_vision_tower_beside_the_llava_folder(root, tmp_path):
    shutil.move(root / "LLaVA-7B-v1", tmp_path / "LLaVA-7B-v1")
    os.symlink(tmp_path / "LLaVA-7B-v1", root / "LLaVA-7B-v1")
    shutil.move(root / "clip-vit-large-patch14", tmp_path / "clip-vit-large-patch14")
    assert load_model(root).spec.num_image_patches == 16


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: shutil.rmtree(r / "LLaVA-7B-v1"), r"LLaVA-7B-v1 not found: .* must contain the LLaVA-7B-v1 folder"),
        (lambda r: (r / "mgie_7b" / "unet.pt").unlink(),
         r"missing .*mgie_7b/unet.pt: unpack Apple's mgie_7b.tar.gz there \(README, 'Getting the weights'\)"),
        (lambda r: (r / "LLaVA-7B-v1" / "pytorch_model-00002-of-00002.bin").unlink(),
         r"shard .*pytorch_model-00002-of-00002.bin named in pytorch_model.bin.index.json is missing"),
        (lambda r: shutil.rmtree(r / "instruct-pix2pix"), r"InstructPix2Pix folder not found: looked in"),
        (lambda r: (r / "instruct-pix2pix" / "unet" / "config.json").write_text("{oops"), r"config.json is not valid JSON"),
        (lambda r: (r / "LLaVA-7B-v1" / "tokenizer.model").unlink(), r"SentencePiece model not found"),
    ],
)
def test_missing_or_broken_files(root, damage, message):
    damage(root)
    with pytest.raises(CheckpointError, match=message):
        load_model(root)


def test_truncated_weights(root):
    shard = root / "LLaVA-7B-v1" / "pytorch_model-00001-of-00002.bin"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"pytorch_model-00001-of-00002.bin could not be read .* truncated or corrupt"):
        load_model(root)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_not_run(root, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "payload": _Exploit(marker)}, root / "mgie_7b" / "mllm.pt")
    with pytest.raises(CheckpointError, match=r"mllm.pt was refused: it holds pickled objects other than tensors"):
        load_model(root)
    assert not marker.exists()


def test_mismatched_shapes(root):
    unet = torch.load(root / "mgie_7b" / "unet.pt", weights_only=True)
    unet["conv_in.weight"] = torch.zeros(32, 4, 3, 3)  # a text-to-image UNet, 4 input channels
    torch.save(unet, root / "mgie_7b" / "unet.pt")
    message = r"unet.pt: tensor conv_in.weight has shape \(32, 4, 3, 3\), the model expects \(32, 8, 3, 3\)"
    with pytest.raises(CheckpointError, match=message):
        load_model(root)


def test_missing_keys_name_the_file(root):
    mllm = torch.load(root / "mgie_7b" / "mllm.pt", weights_only=True)
    del mllm["edit_head.hid2feat.bias"]
    torch.save(mllm, root / "mgie_7b" / "mllm.pt")
    with pytest.raises(CheckpointError, match=r"mllm.pt: weights do not fit the model: 1 missing \(e.g. hid2feat.bias\)"):
        load_model(root)


def test_vocabulary_mismatch(root):
    mllm = torch.load(root / "mgie_7b" / "mllm.pt", weights_only=True)
    mllm["model.embed_tokens.weight"] = mllm["model.embed_tokens.weight"][:-1]
    mllm["lm_head.weight"] = mllm["lm_head.weight"][:-1]
    torch.save(mllm, root / "mgie_7b" / "mllm.pt")
    with pytest.raises(CheckpointError, match="vocabulary mismatch"):
        load_model(root)


def test_not_a_model(tmp_path):
    with pytest.raises(CheckpointError, match="model not found"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"is neither Apple.s MGIE layout nor an MGIE bundle .*Getting the weights"):
        load_model(tmp_path)
    save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not an MGIE bundle"):
        load_model(tmp_path / "other.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(tmp_path / "broken.safetensors")


def test_read_state_dict_errors(tmp_path):
    with pytest.raises(CheckpointError, match="weight file not found"):
        read_state_dict(tmp_path / "none.bin")
    torch.save([1, 2, 3], tmp_path / "list.bin")
    with pytest.raises(CheckpointError, match="holds a list, not a dictionary of tensors"):
        read_state_dict(tmp_path / "list.bin")
