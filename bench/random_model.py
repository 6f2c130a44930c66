"""A randomly initialised MGIE of a chosen size: MGIE-7B's shapes (``full``), or smaller ones for a CPU.

No download: the weights are random, the tokenizer is trained on the spot on the prompt template.
Speed and memory do not depend on the weights, so the benchmarks measure on these.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass

import sentencepiece as spm
import torch

from mgie_core.images import ClipImageConfig
from mgie_core.model.build import ModelConfigs, build_model
from mgie_core.model.edit_head import EditHeadConfig
from mgie_core.model.mgie import IM_END, IM_PATCH, IM_START, MGIEModel, visual_token_names
from mgie_core.model.tokenizer import LegacyLlamaTokenizer
from mgie_core.stages.prompt import SYSTEM

SD_UNET = dict(sample_size=64, in_channels=8, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
SD_SCHEDULER = dict(_class_name="EulerAncestralDiscreteScheduler", beta_start=0.00085, beta_end=0.012,
                    beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1, prediction_type="epsilon")


@dataclass(frozen=True)
class Preset:
    llm: dict
    vision: dict
    edit_head: dict
    unet: dict
    vae: dict
    size: int  # image side
    steps: int


PRESETS = {
    # MGIE-7B: LLaMA-7B (vocab 32011), CLIP ViT-L/14 at 224, the real edit head, SD1.5 UNet (8 ch.) and VAE
    "full": Preset(
        llm=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 vocab_size=32011, max_position_embeddings=2048, rms_norm_eps=1e-6, mm_vision_select_layer=-2),
        vision=dict(model_type="clip_vision_model", image_size=224, patch_size=14, hidden_size=1024,
                    intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
        edit_head=dict(hidden_size=512, num_queries=77, output_size=768, num_encoder_layers=4, num_decoder_layers=4,
                       feedforward_size=2048),
        unet=SD_UNET, vae=SD_VAE, size=512, steps=100),
    # about 0.3B parameters: big enough for loading times to mean something on a CPU
    "small": Preset(
        llm=dict(hidden_size=1024, intermediate_size=2752, num_hidden_layers=8, num_attention_heads=16,
                 vocab_size=32011, max_position_embeddings=2048, rms_norm_eps=1e-6, mm_vision_select_layer=-2),
        vision=dict(model_type="clip_vision_model", image_size=224, patch_size=14, hidden_size=768,
                    intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        edit_head=dict(hidden_size=512, num_queries=77, output_size=768, num_encoder_layers=4, num_decoder_layers=4,
                       feedforward_size=2048),
        unet=dict(SD_UNET, block_out_channels=(160, 320, 640, 640), layers_per_block=1, attention_head_dim=8),
        vae=SD_VAE, size=256, steps=20),
    # the same code paths at a size a laptop CPU runs in seconds (256 image patches, as the real one)
    "tiny": Preset(
        llm=dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8, vocab_size=32011,
                 max_position_embeddings=2048, rms_norm_eps=1e-6, mm_vision_select_layer=-2),
        vision=dict(model_type="clip_vision_model", image_size=224, patch_size=14, hidden_size=128, intermediate_size=256,
                    num_hidden_layers=2, num_attention_heads=4),
        edit_head=dict(hidden_size=128, num_queries=77, output_size=128, num_encoder_layers=2, num_decoder_layers=2,
                       feedforward_size=256),
        unet=dict(SD_UNET, block_out_channels=(32, 64, 64, 64), cross_attention_dim=128, layers_per_block=1),
        vae=dict(SD_VAE, block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=16),
        size=128, steps=20),
}


def bench_tokenizer() -> LegacyLlamaTokenizer:
    model = io.BytesIO()
    corpus = [SYSTEM, "USER: what will this image be like if ASSISTANT: make it look like winter"] * 50
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=400, model_type="bpe",
                                   byte_fallback=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
                                   normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    proto = model.getvalue()
    base = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    tok = LegacyLlamaTokenizer(proto, {IM_PATCH: base, IM_START: base + 1, IM_END: base + 2})
    tok.add_tokens(visual_token_names(8))
    return tok


def build_random_model(preset: Preset, device: torch.device, dtype: torch.dtype) -> MGIEModel:
    """Random weights, created directly on ``device`` in ``dtype`` (7B fits no CPU-side fp32 copy)."""
    tok = bench_tokenizer()
    vocab = preset.llm["vocab_size"] or tok.vocab_size  # 0: exactly the tokenizer's (for loading benchmarks)
    llava = {**preset.llm, "vocab_size": vocab, "mm_hidden_size": preset.vision["hidden_size"], "mm_use_im_start_end": True}
    size = preset.vision["image_size"]
    configs = ModelConfigs(
        llava=llava, clip=preset.vision, unet=preset.unet, vae=preset.vae, scheduler=dict(SD_SCHEDULER),
        edit_head=EditHeadConfig(llm_hidden_size=preset.llm["hidden_size"], num_visual_tokens=8, **preset.edit_head),
        clip_image=ClipImageConfig(shortest_edge=size, crop_height=size, crop_width=size))
    model = build_model(tok, configs, vocab_size=vocab, device=device, dtype=dtype, source="random").eval()
    model.spec = dataclasses.replace(model.spec, eos_token_id=-1)  # every answer has the forced length: no </s>
    return model
