"""``python -m mgie_core``: see :mod:`mgie_core.frontends.cli`."""

import sys

from .frontends.cli import main

sys.exit(main())
