"""python train/finetune.py --model ROOT_OR_BUNDLE --data PATH --output DIR [options]

End-to-end LoRA fine-tuning of MGIE on (input, instruction, target) triplets; see train/data.py
for the data formats and ``--help`` for every option. Writes DIR/lora.safetensors, use it with
``python -m mgie_core edit --lora DIR/lora.safetensors[:STRENGTH]`` or the Load MGIE node.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the repository root

from mgie_core.errors import MGIEError  # noqa: E402
from mgie_core.runtime.devices import leave_process_group  # noqa: E402
from train.config import config_from_args  # noqa: E402
from train.loop import train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[mgie] %(message)s")
    try:
        path = train(config_from_args(argv))
        leave_process_group()
    except MGIEError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    except OSError as err:  # the disk filled up or went away while writing: checkpoints are written whole or not at all
        sys.stderr.write(f"error: cannot write {err.filename or 'the run'}: {err.strerror or err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; every checkpoint written is whole: add --resume latest to the same command to "
                         "go on from the newest\n")
        return 130
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
