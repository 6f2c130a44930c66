"""The edit head: visual tokens -> visual imagination (docs/algorithm.md §2.8).

A linear map of the visual-token hidden states (plus the ``[IMG]`` input embeddings) into a
small transformer whose decoder reads a learned query of ``num_queries`` rows, then a linear
map to the UNet's cross-attention width. Sizes are read from the weights; only ``nhead``
cannot be, and is 4 in Apple's release.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import CheckpointError


@dataclass(frozen=True)
class EditHeadConfig:
    llm_hidden_size: int = 4096
    num_visual_tokens: int = 8
    hidden_size: int = 512
    num_queries: int = 77
    output_size: int = 768
    num_heads: int = 4  # not recoverable from shapes; Apple's EditMapper uses 4
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    feedforward_size: int = 2048

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], num_heads: int = 4) -> EditHeadConfig:
        """Read every size from edit-head weights keyed ``llm2hid.*``, ``query``, ``mapper.*``, ``hid2feat.*``, ``emb``."""
        try:
            llm2hid, query, hid2feat = state["llm2hid.weight"], state["query"], state["hid2feat.weight"]
            feedforward = state["mapper.encoder.layers.0.linear1.weight"].shape[0]
            emb = state["emb"]
        except KeyError as err:
            raise CheckpointError(f"edit head weights lack {err.args[0]!r}; this is not an MGIE edit head") from None
        return cls(
            llm_hidden_size=llm2hid.shape[1],
            num_visual_tokens=emb.shape[1],
            hidden_size=llm2hid.shape[0],
            num_queries=query.shape[1],
            output_size=hid2feat.shape[0],
            num_heads=num_heads,
            num_encoder_layers=_count_layers(state, "mapper.encoder.layers."),
            num_decoder_layers=_count_layers(state, "mapper.decoder.layers."),
            feedforward_size=feedforward,
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _count_layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


class EditHead(nn.Module):
    """Apple's ``EditMapper`` with the ``[IMG]`` input embeddings (``emb``) kept beside it."""

    def __init__(self, config: EditHeadConfig):
        super().__init__()
        self.config = config
        self.llm2hid = nn.Linear(config.llm_hidden_size, config.hidden_size)
        self.query = nn.Parameter(torch.randn(1, config.num_queries, config.hidden_size))
        with warnings.catch_warnings():  # "enable_nested_tensor ... norm_first": expected, nothing to act on
            warnings.simplefilter("ignore", UserWarning)
            self.mapper = nn.Transformer(
                d_model=config.hidden_size,
                nhead=config.num_heads,
                num_encoder_layers=config.num_encoder_layers,
                num_decoder_layers=config.num_decoder_layers,
                dim_feedforward=config.feedforward_size,
                dropout=0.0,
                batch_first=True,
                norm_first=True,
            )
        self.hid2feat = nn.Linear(config.hidden_size, config.output_size)
        self.emb = nn.Parameter(torch.zeros(1, config.num_visual_tokens, config.llm_hidden_size))

    def forward(self, visual_tokens: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """``visual_tokens`` (B, K, H) -> visual imagination (B, Q, D).

        ``emb`` (1 or B, K, H) defaults to the stored ``[IMG]`` embeddings; training passes the live
        ``[IMG]`` rows of the LLM's embedding table instead, as the reference does.
        """
        emb = self.emb if emb is None else emb
        hid = self.llm2hid(visual_tokens + emb)  # (B, K, hidden)
        query = self.query.expand(visual_tokens.shape[0], -1, -1)  # (B, Q, hidden)
        hid = self.mapper(hid, query)  # (B, Q, hidden)
        return self.hid2feat(hid)  # (B, Q, D)

    def null_imagination(self, emb: torch.Tensor | None = None) -> torch.Tensor:
        """The negative conditioning: the head applied to all-zero visual tokens, (1, Q, D)."""
        zeros = torch.zeros(
            1, self.config.num_visual_tokens, self.config.llm_hidden_size,
            device=self.llm2hid.weight.device, dtype=self.llm2hid.weight.dtype,
        )
        return self.forward(zeros, emb)
