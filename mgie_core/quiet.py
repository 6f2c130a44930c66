"""Library log lines that say nothing to an MGIE user, silenced before the libraries are imported.

diffusers probes torchao's serialization classes at import and warns when a torchao release has renamed them;
MGIE never loads torchao-serialized files through diffusers, so that warning is noise here.
"""

import logging

logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").setLevel(logging.ERROR)
