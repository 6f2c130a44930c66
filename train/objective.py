"""MGIE's training objective (docs/algorithm.md §3), one graph: L = L_ins + 0.5 * L_edit.

L_ins: cross-entropy on the assistant turn ``"{expressive} [IMG0] ... [IMG7]</s>"`` (teacher forcing).
L_edit: the InstructPix2Pix denoising loss, conditioned on the edit head's output for the hidden
states that predict the ``[IMG]`` tokens, so its gradient reaches the LLM through the visual tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn
from transformers import DynamicCache

from mgie_core.images import clip_pixel_values
from mgie_core.model.mgie import MGIEModel
from mgie_core.stages.decode import with_cache
from mgie_core.stages.prompt import build_conversation, build_prompt

from .data import clip_image, diffusion_pixels

IGNORE = -100


@dataclass
class Latents:
    """The VAE's encoding of a batch: the target's posterior (mean, spread) and the input's mode, (B, C, h, w) each."""

    target_mean: torch.Tensor
    target_std: torch.Tensor
    source: torch.Tensor

    def to(self, device: torch.device) -> Latents:
        return Latents(*(t.to(device) for t in (self.target_mean, self.target_std, self.source)))


@torch.no_grad()
def encode_latents(vae: nn.Module, source: torch.Tensor, target: torch.Tensor) -> Latents:
    """``source`` and ``target`` (B, 3, R, R) in [-1, 1] through the VAE's encoder, on the VAE's device."""
    device = next(vae.parameters()).device
    target_dist = vae.encode(target.to(device, vae.dtype)).latent_dist
    source_mode = vae.encode(source.to(device, vae.dtype)).latent_dist.mode()
    return Latents(target_dist.mean, target_dist.std, source_mode)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T), right-padded
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T), IGNORE on the prompt and padding
    clip_pixels: torch.Tensor  # (B, 3, S, S)
    source: torch.Tensor | None  # (B, 3, R, R) in [-1, 1]; None when the latents are cached
    target: torch.Tensor | None  # (B, 3, R, R) in [-1, 1]; None when the latents are cached
    latents: Latents | None = None  # cached (--cache-latents): the VAE is not needed

    def to(self, device: torch.device) -> Batch:
        return Batch(**{k: None if v is None else v.to(device) for k, v in vars(self).items()})


@dataclass(frozen=True)
class Sample:
    """One loaded training example."""

    source: object  # PIL image
    target: object
    instruction: str
    expressive: str
    latents: Latents | None = None  # its encoding at the training resolution, batch of 1 (--cache-latents)


def conversation_ids(model: MGIEModel, instruction: str, expressive: str) -> tuple[list[int], int]:
    """The teacher-forcing token ids (prompt + answer + ``</s>``) and how many of them are the prompt."""
    tok = model.tokenizer
    full = tok.encode(build_conversation(instruction, expressive, model.spec, tok.eos_token))
    return full, len(tok.encode(build_prompt(instruction, model.spec)))


def collate(samples: list[Sample], model: MGIEModel, resolution: int, clip_resolution: int) -> Batch:
    ids, labels = [], []
    for s in samples:
        full, prompt = conversation_ids(model, s.instruction, s.expressive)
        ids.append(full)
        labels.append([IGNORE] * prompt + full[prompt:])
    length = max(map(len, ids))
    pad = lambda rows, value: torch.tensor([r + [value] * (length - len(r)) for r in rows])  # noqa: E731
    mask = pad([[1] * len(r) for r in ids], 0)
    clip = torch.stack([clip_pixel_values(clip_image(s.source, clip_resolution), model.clip_image_config)
                        for s in samples])
    if all(s.latents is not None for s in samples):
        parts = [torch.cat(group) for group in zip(*((s.latents.target_mean, s.latents.target_std, s.latents.source)
                                                     for s in samples))]
        return Batch(pad(ids, 0), mask, pad(labels, IGNORE), clip, None, None, Latents(*parts))
    return Batch(
        input_ids=pad(ids, 0), attention_mask=mask, labels=pad(labels, IGNORE), clip_pixels=clip,
        source=torch.stack([diffusion_pixels(s.source, resolution) for s in samples]),
        target=torch.stack([diffusion_pixels(s.target, resolution) for s in samples]),
    )


class VisualRows(nn.Module):
    """Trainable copies of the ``[IMG]`` rows of the embedding table and the LM head.

    Fine-tuning trains these K rows without a gradient for the whole (vocab x hidden) tables.
    """

    def __init__(self, model: MGIEModel):
        super().__init__()
        ids = torch.tensor(model.spec.visual_token_ids)
        self.register_buffer("ids", ids, persistent=False)
        self.embed_tokens = nn.Parameter(model.mllm.llm.embed_tokens.weight.detach()[ids].float().clone())
        self.lm_head = nn.Parameter(model.mllm.lm_head.weight.detach()[ids].float().clone())


def _embed(model: MGIEModel, ids: torch.Tensor, rows: VisualRows | None) -> torch.Tensor:
    embeds = model.mllm.llm.embed_tokens(ids)  # (B, T, H)
    if rows is None:
        return embeds
    position = (ids[..., None] == rows.ids).float()  # (B, T, K): which [IMG] token sits where
    is_visual = position.sum(-1, keepdim=True)  # (B, T, 1)
    return embeds * (1 - is_visual) + (position @ rows.embed_tokens).to(embeds.dtype)


def _logits(model: MGIEModel, hidden: torch.Tensor, rows: VisualRows | None) -> torch.Tensor:
    logits = model.mllm.lm_head(hidden)  # (B, T, V)
    if rows is None:
        return logits
    visual = hidden @ rows.lm_head.to(hidden.dtype).T  # (B, T, K)
    return logits.index_copy(-1, rows.ids, visual)


def visual_emb(model: MGIEModel, rows: VisualRows | None, tie_to_rows: bool) -> torch.Tensor:
    """The ``[IMG]`` embeddings the edit head adds to the visual tokens, (1, K, H).

    Apple's training used the live ``[IMG]`` rows of the embedding table (``tie_to_rows``, used when
    training from scratch); its inference uses the separately stored ``emb``. Fine-tuning a released
    model trains that stored ``emb`` with the edit head, so training and inference see the same
    tensor and an untrained LoRA changes nothing.
    """
    if not tie_to_rows:
        return model.edit_head.emb
    table = rows.embed_tokens if rows is not None else model.mllm.llm.embed_tokens.weight[list(model.spec.visual_token_ids)]
    return table[None]


def select_from_labels(hidden: torch.Tensor, labels: torch.Tensor, first_visual_id: int, count: int) -> torch.Tensor:
    """Visual tokens (B, K, H): per sample, the states before ``[IMG0]`` in the labels (reference rule)."""
    out = []
    for states, row in zip(hidden, labels.tolist()):
        p = row.index(first_visual_id) - 1 if first_visual_id in row else len(row) - (count + 1)
        p = min(len(states) - (count + 1), p)
        out.append(states[p : p + count])
    return torch.stack(out)


def shared_prefix(input_ids: torch.Tensor, im_patch_token_id: int) -> int:
    """How many leading tokens every row has in common (the system prompt), stopping before the image."""
    same = (input_ids == input_ids[:1]).all(0) & (input_ids[0] != im_patch_token_id)
    return min(int(same.long().cumprod(0).sum()), input_ids.shape[1] - 1)


def llm_states(llm: nn.Module, embeds: torch.Tensor, attention_mask: torch.Tensor, prefix: int) -> torch.Tensor:
    """The LLM's last hidden states (B, T, H), with the ``prefix`` tokens all rows share run once, not B times.

    Causal attention makes the states of a common prefix the same in every row: one batch-1 pass caches
    its keys and values, repeated for the batch (the gradient of every row flows back through them),
    and the rest of the sequence attends to them. The same loss as one full pass; the system prompt is
    ~40 % of mgie-mini's training sequence. Gradient checkpointing cannot keep a cache, so it takes the
    full pass.
    """
    batch = embeds.shape[0]
    checkpointing = getattr(llm, "is_activation_checkpointing", None)  # transformers >= 5 spelling
    if checkpointing is None:
        checkpointing = getattr(llm, "is_gradient_checkpointing", False)
    if prefix < 2 or batch == 1 or checkpointing:
        return llm(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).last_hidden_state
    cache = DynamicCache()
    head = llm(inputs_embeds=embeds[:1, :prefix], use_cache=True, **with_cache(llm, cache)).last_hidden_state
    cache.batch_repeat_interleave(batch)
    tail = llm(inputs_embeds=embeds[:, prefix:], attention_mask=attention_mask, use_cache=True,
               **with_cache(llm, cache)).last_hidden_state
    return torch.cat([head.expand(batch, -1, -1), tail], dim=1)


@dataclass
class Losses:
    total: torch.Tensor
    instruction: torch.Tensor
    edit: torch.Tensor


def diffusion_goal(ddpm, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict: the noise, or the velocity for a v-prediction scheduler."""
    return ddpm.get_velocity(latents, noise, t) if ddpm.config.prediction_type == "v_prediction" else noise


@dataclass(frozen=True)
class Share:
    """This process's rows of a global batch: ``start`` .. ``start`` + its batch size, of ``total``."""

    start: int
    total: int


def draw(sampler, shape: tuple[int, ...] | torch.Size, generator: torch.Generator, share: Share | None) -> torch.Tensor:
    """``sampler(shape)`` from ``generator``; with a ``share``, the global batch's draw, cut to this process's rows."""
    if share is None:
        return sampler(tuple(shape), generator=generator)
    return sampler((share.total, *shape[1:]), generator=generator)[share.start : share.start + shape[0]]


def dropout_masks(batch: int, p: float, generator: torch.Generator,
                  share: Share | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(null conditioning, keep image latent): prob < 2p drops the text; p <= prob < 3p drops the image."""
    prob = draw(torch.rand, (batch,), generator, share)
    return prob < 2 * p, ~((prob >= p) & (prob < 3 * p))


def conversation_states(model: MGIEModel, batch: Batch, rows: VisualRows | None = None) -> torch.Tensor:
    """The LLM's final hidden states (B, T, H) over the teacher-forced conversation, image patches spliced in."""
    spec, mllm = model.spec, model.mllm
    features = mllm.image_features(batch.clip_pixels)  # (B, N, H); the vision tower trains only if asked to
    embeds = _embed(model, batch.input_ids, rows)
    embeds = embeds.masked_scatter((batch.input_ids == spec.im_patch_token_id)[..., None], features.to(embeds.dtype))
    return llm_states(mllm.llm, embeds, batch.attention_mask, shared_prefix(batch.input_ids, spec.im_patch_token_id))


def instruction_loss(model: MGIEModel, batch: Batch, rows: VisualRows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L_ins of the teacher-forced conversation, and the LLM's final hidden states (B, T, H) it came from."""
    hidden = conversation_states(model, batch, rows)
    logits = _logits(model, hidden, rows)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten(), ignore_index=IGNORE)
    return loss, hidden


def mgie_loss(model: MGIEModel, batch: Batch, ddpm: DDPMScheduler, generator: torch.Generator,
              edit_weight: float = 0.5, dropout: float = 0.05, rows: VisualRows | None = None,
              tie_emb_to_rows: bool = False, sample_target_latent: bool = True, share: Share | None = None) -> Losses:
    """The full MGIE loss for one batch; randomness comes only from ``generator`` (CPU).

    ``sample_target_latent``: the reference draws the target latent from the VAE posterior; SD's VAE
    has a tiny posterior spread, a small VAE trained from scratch may not (then use its mode).
    ``share``: this batch is rows ``start`` .. of a global batch split across processes; the random draws are
    the global batch's, so each sample gets the noise it would get in one process.
    """
    device, spec = model.mllm.device, model.spec

    # 1. the multimodal LLM, teacher-forced on prompt + expressive instruction + [IMG] tokens
    loss_ins, hidden = instruction_loss(model, batch, rows)

    # 2. visual tokens -> visual imagination (and the null imagination for dropout)
    visual = select_from_labels(hidden, batch.labels, spec.visual_token_ids[0], spec.num_visual_tokens)
    emb = visual_emb(model, rows, tie_emb_to_rows).to(visual.dtype)
    imagination = model.edit_head(visual, emb)  # (B, Q, D)
    null = model.edit_head(torch.zeros_like(visual), emb)

    # 3. the diffusion side: target latent (sampled, scaled), input latent (mode, unscaled); cached or encoded now
    with torch.no_grad():
        latents = batch.latents if batch.latents is not None else encode_latents(model.vae, batch.source, batch.target)
        eps = draw(torch.randn, latents.target_mean.shape, generator, share).to(device, latents.target_mean.dtype)
        spread = latents.target_std if sample_target_latent else torch.zeros_like(latents.target_std)
        target = (latents.target_mean + spread * eps) * model.vae.config.scaling_factor  # latent_dist.sample()
        source = latents.source
    noise = draw(torch.randn, target.shape, generator, share).to(device, target.dtype)
    t = draw(partial(torch.randint, 0, ddpm.config.num_train_timesteps), (target.shape[0],), generator, share).to(device)
    noisy = ddpm.add_noise(target, noise, t)

    # 4. conditioning dropout (classifier-free guidance on both text and image)
    drop_text, keep_image = (m.to(device) for m in dropout_masks(target.shape[0], dropout, generator, share))
    cond = torch.where(drop_text[:, None, None], null, imagination)
    source = source * keep_image[:, None, None, None].to(source.dtype)

    unet = model.unet
    pred = unet(torch.cat([noisy, source], dim=1).to(unet.dtype), t, cond.to(unet.dtype)).sample
    goal = diffusion_goal(ddpm, target, noise, t)
    loss_edit = F.mse_loss(pred.float(), goal.float())
    return Losses(loss_ins + edit_weight * loss_edit, loss_ins.detach(), loss_edit.detach())
