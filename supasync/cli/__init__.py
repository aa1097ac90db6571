"""The ``supasync`` command line, on typer: a thin layer over the library.

Layer: the top. It may import every other part; ``supasync dev`` imports the local stack lazily,
so commands that do not need it never load its server dependencies.
"""
