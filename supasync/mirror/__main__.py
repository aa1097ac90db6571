"""``python -m supasync.mirror``: the same as ``supasync mirror``."""

import sys

from .worker import main

sys.exit(main())
