"""Library log lines that say nothing to an MGIE user, silenced before the libraries are imported.

- diffusers probes torchao's serialization classes at import and warns when a torchao release has renamed them;
  MGIE never loads torchao-serialized files through diffusers.
- torchao, imported by diffusers and transformers, warns when one of its optional CUDA kernel libraries (mxfp8,
  CUTLASS for sm90a) does not load, which is every run on a CPU; MGIE's int8 and 4-bit paths use neither.
- torchao also warns "Detected no triton" when triton is missing (every CPU install): diffusers imports torchao
  whenever it is installed, so ComfyUI printed it at start for every user of the pack, quantizing or not. MGIE's
  int8 and 4-bit paths do not use torchao's triton kernels.
- torch warns that torchao still registers its enums as pytree constants, a deprecation between the two libraries.
"""

import logging

logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").setLevel(logging.ERROR)


def _drop(logger: str, *starts: str) -> None:
    """Drop the named logger's records whose message starts with one of ``starts`` (the rest still show)."""
    logging.getLogger(logger).addFilter(lambda record: not str(record.msg).startswith(starts))


_drop("torchao", "Failed to load ")
_drop("torchao.kernel.intmm", "Warning: Detected no triton")
_drop("torch.utils._pytree", "%s is an Enum subclass")
