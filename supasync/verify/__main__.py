"""``python -m supasync.verify``: the same as ``supasync verify``."""

import sys

from .runner import main

sys.exit(main())
