"""The LLaMA tokenizer exactly as transformers 4.28's *slow* ``LlamaTokenizer`` behaved.

MGIE was trained and released with that tokenizer; today's Llama tokenizers in transformers
encode differently around added tokens, so we apply its rule ourselves (docs/algorithm.md §2.1):

1. the text is split on added tokens (``<im_patch>``, ``<im_start>``, ``<im_end>``, ``[IMGk]``)
   and special tokens (``<s>``, ``</s>``, ``<unk>``), longest match first;
2. the text right before an added token loses its trailing whitespace, the text right after it
   its leading whitespace;
3. every remaining non-empty chunk is SentencePiece-encoded on its own (own dummy prefix);
4. ``<s>`` is prepended (``add_bos_token``), no ``</s>`` is appended.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from ..errors import CheckpointError
from ..files import read_json


class LegacyLlamaTokenizer:
    """SentencePiece LLaMA tokenizer with added tokens and the legacy split-and-strip rule."""

    def __init__(
        self,
        sp_model_proto: bytes,
        added_tokens: dict[str, int] | None = None,
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        unk_token: str = "<unk>",
        add_bos_token: bool = True,
    ):
        self.sp_model_proto = bytes(sp_model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.sp_model_proto)
        self.bos_token, self.eos_token, self.unk_token = bos_token, eos_token, unk_token
        self.add_bos_token = add_bos_token
        self.added_tokens: dict[str, int] = {}
        for token, index in sorted((added_tokens or {}).items(), key=lambda item: item[1]):
            if index != self.vocab_size:
                raise CheckpointError(
                    f"added token {token!r} has id {index}, expected {self.vocab_size} (ids must follow the "
                    "SentencePiece vocabulary without gaps)"
                )
            self.added_tokens[token] = index
        self._rebuild_splitter()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: str | Path) -> LegacyLlamaTokenizer:
        """Read ``tokenizer.model``, ``added_tokens.json`` and ``tokenizer_config.json`` from a LLaVA folder."""
        folder = Path(folder)
        model_file = folder / "tokenizer.model"
        if not model_file.is_file():
            raise CheckpointError(f"SentencePiece model not found: {model_file} (copy tokenizer.model into {folder})")
        added = read_json(folder / "added_tokens.json", default={})
        config = read_json(folder / "tokenizer_config.json", default={})
        try:
            tokenizer = cls(
                model_file.read_bytes(),
                added_tokens={str(k): int(v) for k, v in added.items()},
                bos_token=_token_text(config.get("bos_token"), "<s>"),
                eos_token=_token_text(config.get("eos_token"), "</s>"),
                unk_token=_token_text(config.get("unk_token"), "<unk>"),
                add_bos_token=bool(config.get("add_bos_token", True)),
            )
        except RuntimeError as err:  # sentencepiece's parse error
            raise CheckpointError(f"{model_file} is not a valid SentencePiece model ({err}); copy it again") from None
        return tokenizer

    def add_tokens(self, tokens: Iterable[str]) -> list[int]:
        """Append new added tokens (ids continue the vocabulary); existing ones keep their ids."""
        ids = []
        for token in tokens:
            if token not in self.added_tokens:
                self.added_tokens[token] = self.vocab_size
            ids.append(self.added_tokens[token])
        self._rebuild_splitter()
        return ids

    def _rebuild_splitter(self) -> None:
        self.no_split_tokens = set(self.added_tokens) | {self.bos_token, self.eos_token, self.unk_token}
        pattern = "|".join(re.escape(t) for t in sorted(self.no_split_tokens, key=len, reverse=True))
        self._splitter = re.compile(f"({pattern})")

    # -- vocabulary ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() + len(self.added_tokens)

    @property
    def bos_token_id(self) -> int:
        return self.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int:
        return self.token_to_id(self.eos_token)

    def token_to_id(self, token: str) -> int:
        if token in self.added_tokens:
            return self.added_tokens[token]
        index = self.sp.piece_to_id(token)
        if index == self.sp.unk_id() and token != self.unk_token:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return index

    def is_word(self, word: str) -> bool:
        """Whether ``word``, after a space, is one piece of the vocabulary (a word the model has seen whole)."""
        return self.sp.piece_to_id("\u2581" + word) != self.sp.unk_id()

    def id_to_token(self, index: int) -> str:
        for token, token_id in self.added_tokens.items():
            if token_id == index:
                return token
        return self.sp.id_to_piece(int(index))

    # -- the legacy rule ----------------------------------------------------------------------
    def split(self, text: str) -> list[str]:
        """Steps 1-2 of the rule: chunks and no-split tokens, neighbours of tokens stripped, empties dropped."""
        parts = self._splitter.split(text)
        for i, part in enumerate(parts):
            if part in self.no_split_tokens:
                if i > 0:
                    parts[i - 1] = parts[i - 1].rstrip()
                if i + 1 < len(parts):
                    parts[i + 1] = parts[i + 1].lstrip()
        return [part for part in parts if part]

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text`` under the legacy rule; ``<s>`` first unless ``add_bos`` is False."""
        ids = [self.bos_token_id] if (self.add_bos_token if add_bos is None else add_bos) else []
        for part in self.split(text):
            if part in self.no_split_tokens:
                ids.append(self.token_to_id(part))
            else:
                ids.extend(self.sp.encode(part))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; added and special tokens are written as themselves, separated by spaces."""
        added_by_id = {v: k for k, v in self.added_tokens.items()}
        special_ids = {self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()} - {-1}
        pieces: list[str] = []
        run: list[int] = []
        for index in map(int, ids):
            if index in added_by_id or index in special_ids:
                if run:
                    pieces.append(self.sp.decode(run))
                    run = []
                pieces.append(added_by_id.get(index) or self.sp.id_to_piece(index))
            else:
                run.append(index)
        if run:
            pieces.append(self.sp.decode(run))
        return " ".join(pieces)

    def find_special_text(self, text: str) -> str | None:
        """The first added/special token string found in ``text``, if any (user text must not hold one)."""
        match = self._splitter.search(text)
        return match.group(0) if match else None


def _token_text(value: object, default: str) -> str:
    """Token strings in tokenizer_config.json are plain strings or serialised ``AddedToken`` dicts."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and value.get("content"):
        return str(value["content"])
    return default
