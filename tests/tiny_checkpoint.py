"""Build a *tiny* MGIE checkpoint in exactly Apple's on-disk layout (docs/algorithm.md §1), in seconds.

    ROOT/LLaVA-7B-v1/        config.json (model_type "llava", mm_* fields), tokenizer.model (SentencePiece
                             trained here), added_tokens.json, tokenizer_config.json, special_tokens_map.json,
                             pytorch_model-0000{1,2}-of-00002.bin + pytorch_model.bin.index.json
    ROOT/clip-vit-large-patch14/  a full CLIPModel folder (config.json, pytorch_model.bin, preprocessor_config.json),
                             found through the hub id "openai/clip-vit-large-patch14" in the LLaVA config
    ROOT/mgie_7b/            mllm.pt (embed_tokens/lm_head grown by [IMG0..7], edit_head.*, emb), unet.pt (fp16)
    ROOT/instruct-pix2pix/   model_index.json, unet/config.json, vae/ (old attention key names), scheduler/

The LM is trained so that its greedy answers exercise every branch of the visual-token rule:
``BEHAVIOURS`` maps instructions to the answer it learns. The projector maps every image to the same
features (zero weight, fixed bias), so answers do not depend on the picture.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import sentencepiece as spm
import torch
from diffusers import EulerAncestralDiscreteScheduler
from transformers import CLIPConfig, CLIPModel

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mgie_core.model.build import ModelConfigs, build_model  # noqa: E402
from mgie_core.model.edit_head import EditHeadConfig  # noqa: E402
from mgie_core.model.mgie import IM_END, IM_PATCH, IM_START, ModelSpec, visual_token_names  # noqa: E402
from mgie_core.model.tokenizer import LegacyLlamaTokenizer  # noqa: E402
from mgie_core.stages.prompt import SYSTEM, build_prompt  # noqa: E402

NUM_VISUAL = 8
HIDDEN = 64
CLIP_IMAGE, CLIP_PATCH = 32, 8  # 16 image patches
IMG = visual_token_names(NUM_VISUAL)
ALL_IMG = " ".join(IMG)

# instruction -> trained answer (the text after "ASSISTANT: ", "</s>" ends it unless noted)
BEHAVIOURS = {
    # 1. [IMG0..7] generated in full: p = index([IMG0]) - 1
    "make the sky blue": f"paint the whole sky a deep blue. keep the rest as it is. {ALL_IMG}</s>",
    # 2. no [IMG0] within the budget: p = len(states) - 9 (the answer is longer than the budget used in tests)
    "tell me a story": "once upon a time there was a small red fox who lived near a green river "
                       "and every day the fox walked along the river to find food for the winter",
    # 3. [IMG0] generated too close to the end: p clamped to len(states) - 9
    "make it red": f"turn the apple red. {' '.join(IMG[:3])}</s>",
    # the n-gram ban changes this answer: it repeats a trigram
    "add a hat": f"put a tall hat on the cat and put a tall hat on the dog. {ALL_IMG}</s>",
    # the word "alternative" and a third sentence are cut from the displayed text
    "make it cozy": f"add a warm lamp. light the fire. open the door. alternative: add a rug. {ALL_IMG}</s>",
}

TOKENIZER_CORPUS = [
    SYSTEM,
    "USER: what will this image be like if ASSISTANT:",
    "Hello world, hello WORLD! 12345 67890 tabs\tand\nnewlines",
    "a photo of a cat; a photo of a dog: the quick brown fox jumps over the lazy dog.",
    "café naïve über résumé — “quotes” ‘single’ ... !? #@$%^&*()",
]


def _corpus() -> list[str]:
    lines = list(TOKENIZER_CORPUS)
    for instruction, answer in BEHAVIOURS.items():
        lines += [instruction, answer.replace("</s>", "").replace("[IMG", "IMG")]
    return lines * 8


def train_sentencepiece(vocab_size: int = 420) -> bytes:
    """A LLaMA-like SentencePiece BPE model (byte fallback, dummy prefix, no whitespace folding)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        hard_vocab_limit=False, minloglevel=2, num_threads=1,
    )
    return model.getvalue()


def tiny_spec(tokenizer: LegacyLlamaTokenizer) -> ModelSpec:
    return ModelSpec(
        im_patch_token_id=tokenizer.added_tokens[IM_PATCH], im_start_token_id=tokenizer.added_tokens[IM_START],
        im_end_token_id=tokenizer.added_tokens[IM_END],
        visual_token_ids=tuple(tokenizer.added_tokens[t] for t in IMG), eos_token_id=tokenizer.eos_token_id,
        num_image_patches=(CLIP_IMAGE // CLIP_PATCH) ** 2, max_position_embeddings=512,
    )


def llava_config(vocab_size: int) -> dict:
    return {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "hidden_size": HIDDEN,
        "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "rms_norm_eps": 1e-6,
        "vocab_size": vocab_size, "max_position_embeddings": 512, "max_sequence_length": 512,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "float16",
        "mm_vision_tower": "openai/clip-vit-large-patch14", "mm_hidden_size": 32, "mm_use_im_start_end": True,
        "mm_vision_select_layer": -2, "use_mm_proj": True, "tie_word_embeddings": False,
        "transformers_version": "4.28.0.dev0",
    }


def train_llm(llm, head, tokenizer: LegacyLlamaTokenizer, spec: ModelSpec, patch_feature: torch.Tensor, steps: int = 400):
    """Teach the 2-layer LLaMA the BEHAVIOURS answers (cross-entropy on the answer tokens only)."""
    llm.train().requires_grad_(True)
    head.requires_grad_(True)
    rows, starts = [], []
    for instruction, answer in BEHAVIOURS.items():
        starts.append(len(tokenizer.encode(build_prompt(instruction, spec))))
        rows.append(tokenizer.encode(build_prompt(instruction, spec) + " " + answer))
    # one right-padded batch: causal attention never looks ahead, so the padding changes no answer token's logits
    ids = torch.tensor([r + [0] * (max(map(len, rows)) - len(r)) for r in rows])
    labels = torch.full_like(ids, -100)
    for i, (row, start) in enumerate(zip(rows, starts)):
        labels[i, start : len(row)] = ids[i, start : len(row)]
    params = list(llm.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    for _ in range(steps):
        loss = _answer_loss(llm, head, ids, labels, spec, patch_feature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return llm.eval(), head.eval(), float(loss.detach())


def _answer_loss(llm, head, ids, labels, spec, patch_feature):
    """Cross-entropy on the answer tokens, averaged per answer (each behaviour counts alike, whatever its length)."""
    embeds = llm.embed_tokens(ids)  # (B, T, H)
    mask = (ids == spec.im_patch_token_id)[..., None]
    embeds = torch.where(mask, patch_feature.to(embeds.dtype), embeds)
    logits = head(llm(inputs_embeds=embeds).last_hidden_state)[:, :-1]  # (B, T-1, V)
    targets = labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    counted = (targets != -100).float()
    return ((per_token * counted).sum(1) / counted.sum(1)).mean()


def tiny_clip_config() -> CLIPConfig:
    return CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0,
                     "eos_token_id": 2, "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                       "image_size": CLIP_IMAGE, "patch_size": CLIP_PATCH},
        projection_dim=16,
    )


UNET = dict(sample_size=8, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), norm_num_groups=32,
           down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
           up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=32)
EDIT_HEAD = EditHeadConfig(llm_hidden_size=HIDDEN, num_visual_tokens=NUM_VISUAL, hidden_size=32, num_queries=77,
                           output_size=32, num_encoder_layers=2, num_decoder_layers=2, feedforward_size=64)


def tiny_model(tokenizer: LegacyLlamaTokenizer, base_vocab: int):
    """The tiny MGIE's modules, at random, built by the library's one factory (what the files below hold)."""
    configs = ModelConfigs(llava=llava_config(base_vocab + 3), clip=tiny_clip_config().to_dict(), edit_head=EDIT_HEAD,
                           unet=UNET, vae=VAE)
    return build_model(tokenizer, configs, source="tiny")


def _old_vae_names(state: dict) -> dict:
    """Store the VAE with the attention names diffusers used before 0.14, as the real ip2p folder may."""
    renames = ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn."))
    out = {}
    for key, value in state.items():
        if ".attentions." in key:
            for new, old in renames:
                key = key.replace(new, old)
        out[key] = value
    return out


def _save_sharded(state: dict, folder: Path) -> None:
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    weight_map = {}
    for i, part in enumerate(halves, start=1):
        name = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({k: state[k] for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def build_tiny_checkpoint(root: str | Path, train_steps: int = 200) -> Path:
    """Write the tiny checkpoint under ``root`` and return ``root``."""
    root = Path(root)
    llava, mgie, ip2p, clip = root / "LLaVA-7B-v1", root / "mgie_7b", root / "instruct-pix2pix", root / "clip-vit-large-patch14"
    for folder in (llava, mgie, ip2p, clip):
        folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1234)

    # tokenizer: SentencePiece + <im_patch>, <im_start>, <im_end>; [IMG0..7] come with mllm.pt
    sp_bytes = train_sentencepiece()
    (llava / "tokenizer.model").write_bytes(sp_bytes)
    base_vocab = spm.SentencePieceProcessor(model_proto=sp_bytes).get_piece_size()
    added = {IM_PATCH: base_vocab, IM_START: base_vocab + 1, IM_END: base_vocab + 2}
    _write_json(llava / "added_tokens.json", added)
    token = lambda s: {"__type": "AddedToken", "content": s, "lstrip": False, "normalized": True,  # noqa: E731
                       "rstrip": False, "single_word": False}
    _write_json(llava / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": token("<s>"), "eos_token": token("</s>"),
        "unk_token": token("<unk>"), "model_max_length": 512, "pad_token": None, "tokenizer_class": "LlamaTokenizer"})
    _write_json(llava / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    _write_json(llava / "config.json", llava_config(base_vocab + 3))

    tokenizer = LegacyLlamaTokenizer(sp_bytes, added)
    tokenizer.add_tokens(IMG)
    spec = tiny_spec(tokenizer)

    # CLIP (full CLIPModel, old-style keys with the vision_model. prefix) and the projector
    clip_model = CLIPModel(tiny_clip_config())
    clip_model.config.save_pretrained(clip)
    torch.save({("vision_model." + k if not k.startswith(("vision_model.", "text_model.", "visual_projection",
                "text_projection", "logit_scale")) else k): v for k, v in clip_model.state_dict().items()},
               clip / "pytorch_model.bin")
    _write_json(clip / "preprocessor_config.json", {
        "crop_size": CLIP_IMAGE, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": CLIP_IMAGE})
    projector_bias = torch.randn(HIDDEN) * 0.5
    torch.manual_seed(0)
    model = tiny_model(tokenizer, base_vocab)
    llm, head, _ = train_llm(model.mllm.llm, model.mllm.lm_head, tokenizer, spec, projector_bias, steps=train_steps)

    # LLaVA shards: the base vocabulary only, with *different* rows than mllm.pt (which must override them)
    llava_state = {f"model.{k}": v.detach().clone().half() for k, v in llm.state_dict().items()}
    llava_state["model.embed_tokens.weight"] = torch.randn(base_vocab + 3, HIDDEN).half()
    llava_state["lm_head.weight"] = torch.randn(base_vocab + 3, HIDDEN).half()
    llava_state["model.mm_projector.weight"] = torch.zeros(HIDDEN, 32).half()
    llava_state["model.mm_projector.bias"] = projector_bias.half()
    for i in range(2):
        llava_state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.ones(HIDDEN // 8)
    _save_sharded(llava_state, llava)

    # mllm.pt: trained embed/lm_head rows for the whole grown vocabulary, the edit head, emb
    edit_head = model.edit_head
    with torch.no_grad():
        edit_head.emb.normal_()
    mllm = {"model.embed_tokens.weight": llm.embed_tokens.weight.detach().half(),
            "lm_head.weight": head.weight.detach().half(), "emb": edit_head.emb.detach().half()}
    mllm.update({f"edit_head.{k}": v.detach().half() for k, v in edit_head.state_dict().items() if k != "emb"})
    torch.save(mllm, mgie / "mllm.pt")

    unet = model.unet
    torch.save({k: v.half() for k, v in unet.state_dict().items()}, mgie / "unet.pt")
    unet.save_config(ip2p / "unet")
    vae = model.vae
    vae.save_config(ip2p / "vae")
    torch.save(_old_vae_names(vae.state_dict()), ip2p / "vae" / "diffusion_pytorch_model.bin")
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                steps_offset=1)
    scheduler.save_config(ip2p / "scheduler")
    _write_json(ip2p / "model_index.json", {
        "_class_name": "StableDiffusionInstructPix2PixPipeline", "_diffusers_version": "0.12.0.dev0",
        "feature_extractor": ["transformers", "CLIPFeatureExtractor"], "safety_checker": ["stable_diffusion",
        "StableDiffusionSafetyChecker"], "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]})
    return root


if __name__ == "__main__":
    out = build_tiny_checkpoint(sys.argv[1] if len(sys.argv) > 1 else "tiny-mgie")
    print(out)
