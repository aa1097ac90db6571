"""``python -m supasync.cli``: the same as the ``supasync`` command."""

from .app import main

main()
