"""The texts MGIE feeds its LLM (docs/algorithm.md §2.2, §2.7, §3), and checks of user instructions."""

from __future__ import annotations

import re
import unicodedata

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


def check_text(text: object, what: str = "instruction") -> str:
    """An instruction (or expressive instruction) as given: text that is not blank; what needs no model."""
    if not isinstance(text, str):
        raise InputError(f"the {what} must be text, got {text!r}")
    if not text.strip():
        raise InputError(f'the {what} is empty: describe the edit, e.g. "make it look like winter"')
    return text


def check_instruction(text: object, tokenizer: LegacyLlamaTokenizer, what: str = "instruction") -> str:
    """The instruction as given, or an InputError saying what is wrong with it."""
    check_text(text, what)
    token = tokenizer.find_special_text(text)
    if token is not None:
        raise InputError(f"{what} contains the control token {token!r}, which MGIE reserves; remove it")
    return text


def language_notices(text: str, model) -> list[str]:
    """What to say before deriving from ``text``: that it is not English, the only language MGIE was trained on
    (letters of another script), or, for a model of a closed world such as mgie-mini, which words it never saw."""
    foreign = sorted({c for c in text if c.isalpha() and not unicodedata.name(c, "").startswith("LATIN")})
    if foreign:
        return [f'"{text}" is not in English, the only language {model_name(model)} was trained on: it may not '
                "understand it; write the instruction in English."]
    if model.world is None:
        return []
    unknown = [w for w in dict.fromkeys(re.findall(r"[A-Za-z]+", text)) if not model.tokenizer.is_word(w.lower())]
    if not unknown:
        return []
    if model.has_lora:
        return [f'{", ".join(unknown)}: not words of {model_name(model)}\'s own world; they work only if its LoRA was '
                "trained on them."]
    return [f'{model_name(model)} knows only the words of its world of flat shapes, and not: {", ".join(unknown)}; '
            "it understands English instructions about shapes, colours and light."]


def model_name(model) -> str:
    return "mgie-mini" if model.world is not None else "MGIE"


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
