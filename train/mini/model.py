"""mgie-mini's architecture: the real MGIE classes (LLaMA, CLIP vision, projector, edit head, an
8-channel InstructPix2Pix UNet, a KL VAE) at a size a 2-core CPU trains and runs."""

from __future__ import annotations

import io
import re
from typing import Any

import sentencepiece as spm
import torch
from diffusers import EulerAncestralDiscreteScheduler

from mgie_core.images import ClipImageConfig
from mgie_core.model.build import ModelConfigs, build_model
from mgie_core.model.edit_head import EditHeadConfig
from mgie_core.model.mgie import IM_END, IM_PATCH, IM_START, MGIEModel, visual_token_names
from mgie_core.model.tokenizer import LegacyLlamaTokenizer
from mgie_core.stages.prompt import SYSTEM

from .world import COLOURS, SIZE, edits

NUM_VISUAL = 8
VISION = {"model_type": "clip_vision_model", "image_size": SIZE, "patch_size": 16, "hidden_size": 128,
          "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_channels": 3}
LLM = {"model_type": "llava", "architectures": ["LlavaLlamaForCausalLM"], "hidden_size": 160, "intermediate_size": 432,
       "num_hidden_layers": 4, "num_attention_heads": 4, "rms_norm_eps": 1e-6, "max_position_embeddings": 512,
       "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
       "mm_vision_tower": "mgie-mini-vision", "mm_hidden_size": VISION["hidden_size"], "mm_use_im_start_end": True,
       "mm_vision_select_layer": -2, "use_mm_proj": True}
EDIT_HEAD = dict(hidden_size=64, num_queries=16, output_size=64, num_heads=4, num_encoder_layers=2,
                 num_decoder_layers=2, feedforward_size=128)
# Cross-attention at the 8x8 and 4x4 latent levels only: 6x cheaper than at 16x16, still per object.
UNET = dict(sample_size=SIZE // 4, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 128),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=EDIT_HEAD["output_size"], attention_head_dim=32, norm_num_groups=32)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64), layers_per_block=1,
           down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
           norm_num_groups=16, sample_size=SIZE, mid_block_add_attention=False)


TEMPLATE = [SYSTEM, "USER: what will this image be like if ASSISTANT:"]


def tokenizer_corpus(count: int = 4000, seed: int = 99) -> list[str]:
    # The template appears in every prompt: weighting it like the edits gives it whole-word pieces.
    lines = TEMPLATE * count
    for edit in edits(seed, count):
        lines += [edit.instruction, edit.expressive]
    return lines + [" ".join(COLOURS)] * 20


def whole_words(corpus: list[str]) -> list[str]:
    """The world's words as pieces of their own ("▁sunset"). With 512 pieces, half of them bytes, BPE has too few
    merges left for them, and a word spelt in sub-word pieces (s-u-ns-et) can repeat 3 tokens of the instruction
    in its answer, which derivation's no-repeat rule then forbids (checks.unsayable). The template's
    own words are left to BPE (weighted, it makes them whole), and since SentencePiece matches these pieces
    anywhere, longest first, so is a word that begins a longer template word ("be", "between")."""
    template = {w for line in TEMPLATE for w in re.findall(r"[A-Za-z]+", line)}
    words = {w for line in corpus for w in re.findall(r"[A-Za-z]+", line)} - template
    return sorted("▁" + w for w in words if not any(t != w and t.startswith(w) for t in template))


def train_tokenizer(vocab_size: int = 512) -> LegacyLlamaTokenizer:
    """A LLaMA-style SentencePiece BPE model on the world's vocabulary, plus MGIE's added tokens."""
    model = io.BytesIO()
    corpus = tokenizer_corpus()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False,
        user_defined_symbols=whole_words(corpus), minloglevel=2, num_threads=1)
    proto = model.getvalue()
    base = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    tokenizer = LegacyLlamaTokenizer(proto, {IM_PATCH: base, IM_START: base + 1, IM_END: base + 2})
    tokenizer.add_tokens(visual_token_names(NUM_VISUAL))
    return tokenizer


def scheduler_config() -> dict[str, Any]:
    # SD1.5's noise schedule. v-prediction instead of epsilon: a UNet trained from scratch for minutes must also
    # learn what the picture is at high noise (where predicting epsilon is nearly free), or samples drift.
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                steps_offset=1, prediction_type="v_prediction")
    return {"_class_name": "EulerAncestralDiscreteScheduler", **dict(scheduler.config)}


def clip_image_config() -> ClipImageConfig:
    """The CLIP processor's settings: the 64x64 world picture as it is (no resize, no crop)."""
    side = VISION["image_size"]
    return ClipImageConfig(shortest_edge=side, crop_height=side, crop_width=side)


def build_mini(seed: int = 0) -> MGIEModel:
    """A freshly initialised mgie-mini: random weights (from ``seed``) and the trained tokenizer."""
    torch.manual_seed(seed)
    tokenizer = train_tokenizer()
    configs = ModelConfigs(
        llava={**LLM, "vocab_size": tokenizer.vocab_size}, clip=dict(VISION), unet=UNET, vae=VAE,
        edit_head=EditHeadConfig(llm_hidden_size=LLM["hidden_size"], num_visual_tokens=NUM_VISUAL, **EDIT_HEAD),
        scheduler=scheduler_config(), clip_image=clip_image_config())
    model = build_model(tokenizer, configs, source="mgie-mini", info={"format": "mini"})
    with torch.no_grad():
        model.edit_head.emb.copy_(model.mllm.llm.embed_tokens.weight[-NUM_VISUAL:][None])
    return model
