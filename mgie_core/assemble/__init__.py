"""Build MGIE-7B from the pieces as users download them, into one bundle (``python -m mgie_core assemble``).

MGIE-7B is Apple's difference on top of LLaVA-7B-v1, itself LLaVA's difference on top of Meta's LLaMA-7B.
:func:`assemble` applies LLaVA's delta as LLaVA's own script does (:mod:`.delta`), lets Apple's ``mllm.pt``
rows override it, adds CLIP's vision tower, Apple's UNet and InstructPix2Pix's VAE, and writes the bundle
``convert`` writes for Apple's folders: the same tensors, metadata and fingerprint. Every piece is checked
first (:mod:`.pieces`, :mod:`.plan`); tensors are then streamed a block of rows at a time (:mod:`.sources`,
:mod:`.writer`), so memory stays far below one model's size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import InputError
from .pieces import open_clip, open_ip2p, open_llava, open_llava_from_delta
from .plan import plan_bundle
from .tarball import mgie_files
from .writer import write_streamed

logger = logging.getLogger(__name__)


def assemble(out: str | Path, *, mgie: str | Path, ip2p: str | Path, clip: str | Path, llama: str | Path | None = None,
             llava_delta: str | Path | None = None, llava: str | Path | None = None, dtype: torch.dtype | None = None,
             progress: bool = True) -> Path:
    """Write MGIE-7B as one ``.safetensors`` bundle at ``out`` from ``llama`` + ``llava_delta`` (or a merged
    ``llava``), Apple's ``mgie`` tarball or folder, and the ``ip2p`` and ``clip`` folders. ``dtype`` casts the
    floating tensors (None keeps each as the pieces store it: exactly the weights Apple's folders load)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise InputError(f"--out {out}: the bundle is one file; give a name ending in .safetensors")
    pieces = {"--mgie": Path(mgie), "--ip2p": Path(ip2p), "--clip": Path(clip)}
    for flag, path in pieces.items():  # the cheapest refusal first: nothing there at all
        if not path.exists():
            raise InputError(f"{flag} {path} not found; give the downloaded piece (README, 'Getting the weights')")
    if llava is not None:
        if llama is not None or llava_delta is not None:
            raise InputError("give either --llava (a merged LLaVA-7B-v1) or --llama with --llava-delta, not both")
        llava_piece = open_llava(Path(llava))
    elif llama is None or llava_delta is None:
        raise InputError("give --llama (LLaMA-7B) and --llava-delta (LLaVA-Lightning-7B-delta-v1-1), or --llava")
    else:
        llava_piece = open_llava_from_delta(Path(llama), Path(llava_delta))
    ip2p_piece, clip_piece = open_ip2p(pieces["--ip2p"]), open_clip(pieces["--clip"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with mgie_files(pieces["--mgie"], out.parent, progress) as files:
        _write(out, llava_piece, files, ip2p_piece, clip_piece, dtype, progress)
    logger.info("wrote MGIE-7B bundle %s; check it with: python -m mgie_core check --model %s", out, out)
    return out


def _write(out: Path, llava_piece, files: dict[str, Path], ip2p_piece, clip_piece, dtype, progress: bool) -> None:
    """Plan, then stream; a function of its own so that every memory map is closed before the scratch folder goes."""
    plan = plan_bundle(llava_piece, files, ip2p_piece, clip_piece, dtype)
    logger.info("pieces checked: %d tensors, %.2f GB to write", len(plan.tensors),
                sum(ref.nbytes for ref in plan.tensors.values()) / 1e9)
    write_streamed(plan.tensors, plan.metadata, out, progress)


__all__ = ["assemble"]
