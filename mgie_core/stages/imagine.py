"""Stage 2, imagine: visual tokens -> visual imagination and null imagination (docs/algorithm.md §2.8)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..model.edit_head import EditHead
from .derive import Derivation
from .finite import check_finite


@dataclass(frozen=True)
class Imagination:
    """Conditioning for the sampler.

    imagination: (B, Q, D) the visual imagination, the UNet's positive cross-attention input.
    null_imagination: (B, Q, D) the edit head on all-zero visual tokens, the negative input.
    """

    imagination: torch.Tensor
    null_imagination: torch.Tensor

    def __len__(self) -> int:
        return self.imagination.shape[0]

    def expand(self, batch: int) -> Imagination:
        """The same conditioning for ``batch`` images (a batch of one is repeated)."""
        if len(self) == batch:
            return self
        if len(self) != 1:
            raise InputError(f"{len(self)} imaginations cannot condition {batch} images; give one, or one per image")
        return Imagination(self.imagination.expand(batch, -1, -1), self.null_imagination[:1].expand(batch, -1, -1))


@torch.no_grad()
def imagine(edit_head: EditHead, derivation: Derivation) -> Imagination:
    """Run the edit head on the derived visual tokens (on the head's device and dtype)."""
    weight = edit_head.llm2hid.weight
    visual = derivation.visual_tokens.to(weight.device, weight.dtype)  # (B, K, H)
    imagination = check_finite(edit_head(visual), "the edit head", weight.dtype)  # (B, Q, D)
    null = edit_head.null_imagination().expand_as(imagination)  # (B, Q, D)
    return Imagination(imagination=imagination, null_imagination=null.contiguous())
