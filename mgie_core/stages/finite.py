"""An edit never ends in a black picture: each stage's output is checked for NaN and infinite values, and a bad one
stops the edit in one line that says where it happened and what likely caused it, before anything is written."""

from __future__ import annotations

import torch

from ..errors import NonFiniteError

CAUSE = ("a LoRA applied with too high a strength or with damaged values (lower its strength, or use an earlier "
         "checkpoint's LoRA)")


def check_finite(tensor: torch.Tensor, where: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor`` as it is, or :class:`NonFiniteError` naming ``where`` (the LLM, the edit head, the denoising, the
    VAE) and the likely causes: a LoRA's strength or values, or, in ``dtype`` fp16, an overflow."""
    if bool(torch.isfinite(tensor).all()):
        return tensor
    causes = [CAUSE, "fp16 overflowing (choose bf16 or fp32)" if dtype == torch.float16 else "damaged weights"]
    raise NonFiniteError(f"{where} produced NaN or infinite values, so the picture would be black; nothing was "
                         f"written. Likely cause: {' or '.join(causes)}")
