"""The texts MGIE feeds its LLM (docs/algorithm.md §2.2, §2.7, §3), and checks of user instructions."""

from __future__ import annotations

from ..errors import InputError
from ..model.mgie import IM_END, IM_PATCH, IM_START, ModelSpec, visual_token_names
from ..model.tokenizer import LegacyLlamaTokenizer

# Vicuna v1.1, the conversation template of LLaVA v1 (SeparatorStyle.TWO, sep " ").
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
USER, ASSISTANT = "USER", "ASSISTANT"


def build_prompt(instruction: str, spec: ModelSpec) -> str:
    """The full prompt text for one edit, up to and including ``ASSISTANT:``."""
    image = IM_PATCH * spec.num_image_patches
    if spec.use_im_start_end:
        image = IM_START + image + IM_END
    message = f"what will this image be like if '{instruction}'\n{image}"
    return f"{SYSTEM} {USER}: {message} {ASSISTANT}:"


def build_answer(expressive: str, spec: ModelSpec) -> str:
    """The assistant turn MGIE is trained on: ``"{expressive} [IMG0] ... [IMG7]"``."""
    return f"{expressive} " + " ".join(visual_token_names(spec.num_visual_tokens))


def build_conversation(instruction: str, expressive: str, spec: ModelSpec, eos_token: str) -> str:
    """Prompt + answer + ``</s>``, the teacher-forcing text (vicuna_v1_1's ``get_prompt``)."""
    return f"{build_prompt(instruction, spec)} {build_answer(expressive, spec)}{eos_token}"


def check_instruction(text: object, tokenizer: LegacyLlamaTokenizer, what: str = "instruction") -> str:
    """The instruction as given, or an InputError saying what is wrong with it."""
    if not isinstance(text, str):
        raise InputError(f"{what} must be text, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"{what} is empty: describe the edit, e.g. 'make it look like winter'")
    token = tokenizer.find_special_text(text)
    if token is not None:
        raise InputError(f"{what} contains the control token {token!r}, which MGIE reserves; remove it")
    return text


def clean_expressive(answer: str, first_visual_token: str = "[IMG0]", eos_token: str = "</s>") -> str:
    """The expressive instruction to display, by the demo's ``remove_alter`` rule.

    Cut before ``</s>``, before the word "alternative" (any case) and before ``[IMG0]``; keep the
    first two '.'-separated pieces, each stripped, joined by '.' (no space, as Apple's code does);
    end with a period.
    """
    text = answer.strip()
    if eos_token in text:
        text = text[: text.index(eos_token)].strip()
    if "alternative" in text.lower():
        text = text[: text.lower().index("alternative")]
    if first_visual_token in text:
        text = text[: text.index(first_visual_token)]
    text = ".".join(piece.strip() for piece in text.split(".")[:2])
    if not text.endswith("."):
        text += "."
    return text.strip()
