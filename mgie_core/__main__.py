"""``python -m mgie_core``: see :mod:`mgie_core.cli`."""

import sys

from .cli import main

sys.exit(main())
