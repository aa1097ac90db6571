from .runner import run

raise SystemExit(run())
