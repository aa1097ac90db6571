"""Show a ``supasync verify`` :class:`~supasync.verify.model.Report`: a rich table for people,
JSON lines for scripts.

``--json`` prints one JSON object per check per line (``subscription``, ``check``, ``status``,
``message``, ``fix``, ``details``) and nothing else on stdout, so ``jq`` and CI steps can read it.
"""

from __future__ import annotations

import json
from typing import IO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .model import Report

__all__ = ["render_json", "render_table", "summary"]

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}
_MARK = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def render_json(report: Report, out: IO[str]) -> None:
    """Write one JSON object per check per line to *out*."""
    for check in report.checks:
        out.write(json.dumps(check.to_json(), default=str, sort_keys=False) + "\n")
    out.flush()


def summary(report: Report) -> str:
    """One line: counts per status and the verdict."""
    counts = {s: sum(1 for c in report.checks if c.status == s) for s in _MARK}
    verdict = "FAILED" if report.failed else "passed"
    return (f"{verdict}: {counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} failed, "
            f"{counts['skip']} skipped")


def render_table(report: Report, console: Console | None = None) -> None:
    """Print a table per subscription (the setup checks first), fixes under failures."""
    console = console or Console()
    for sub in report.subscriptions():
        table = Table(title=f"subscription {sub}" if sub else "setup", title_justify="left",
                      show_lines=False, expand=False)
        table.add_column("check", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("finding")
        for check in (c for c in report.checks if c.subscription == sub):
            finding = Text(check.message)
            if check.fix and check.status in ("fail", "warn"):
                finding.append("\nfix: ", style="bold")
                finding.append(check.fix)
            table.add_row(check.name, Text(_MARK[check.status], style=_STYLE[check.status]),
                          finding)
        console.print(table)
    console.print(Text(summary(report), style="bold red" if report.failed else "bold green"))
