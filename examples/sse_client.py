"""A browser-style client of ``supasync serve`` (or any mounted LiveEndpoint), in Python: read
the rows, follow the changes, and resume after any interruption without a gap or a duplicate.

    supasync serve --table todos --db todos.sqlite      # in one terminal
    python examples/sse_client.py http://127.0.0.1:8000/todos

What an EventSource does for a page, written out: ``GET <base>/rows`` gives the rows and the
journal position (``seq``) they reflect; ``GET <base>/changes`` with ``Last-Event-ID: <seq>``
streams every change after it. When the connection drops (the server restarts, a proxy times
out), reconnect with the id of the last event received: the server sends exactly what was
missed. On ``must-refetch`` (the position is older than the server's journal keeps, or the
table was loaded again) read the rows again. Stop with Ctrl-C.

Only needs httpx (a dependency of supasync).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import httpx


def fetch_rows(http: httpx.Client, base: str) -> tuple[dict[str, Any], int]:
    while True:
        try:
            resp = http.get(f"{base}/rows")
            if resp.status_code == 200:
                got = resp.json()
                key = got["primary_key"]
                rows = {json.dumps([r[k] for k in key]): r for r in got["rows"]}
                return rows, int(got["seq"])
            print(f"rows: {resp.status_code} {resp.json().get('error')}", flush=True)
        except httpx.TransportError as exc:
            print(f"rows: {type(exc).__name__}; retrying", flush=True)
        time.sleep(1.0)  # the server is starting or restarting


def follow(base: str) -> None:
    with httpx.Client(timeout=httpx.Timeout(10.0, read=60.0)) as http:
        rows, last = fetch_rows(http, base)
        print(f"{len(rows)} rows at #{last}", flush=True)
        while True:
            try:
                with http.stream("GET", f"{base}/changes",
                                 headers={"Last-Event-ID": str(last)}) as resp:
                    if resp.status_code != 200:
                        print(f"changes: {resp.status_code}", flush=True)
                        time.sleep(1.0)
                        continue
                    event, data = "", ""
                    for line in resp.iter_lines():
                        if line.startswith("id: "):
                            last = int(line[4:])  # also the id-only position events
                        elif line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: "):
                            data = line[6:]
                        elif line == "" and data:
                            if event == "must-refetch":
                                rows, last = fetch_rows(http, base)
                                print(f"refetched: {len(rows)} rows at #{last}", flush=True)
                                break
                            change = json.loads(data)
                            key = json.dumps(change["key"])
                            if event == "delete":
                                rows.pop(key, None)
                            else:
                                rows[key] = change["record"]
                            print(f"#{change['seq']} {event} {change['key']} "
                                  f"{change['record']} ({len(rows)} rows)", flush=True)
                            event, data = "", ""
                    else:
                        print(f"stream ended; resuming after #{last}", flush=True)
            except httpx.TransportError as exc:
                print(f"disconnected ({type(exc).__name__}); resuming after #{last}",
                      flush=True)
                time.sleep(1.0)  # as an EventSource's retry


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/sse_client.py http://127.0.0.1:8000/todos")
    try:
        follow(sys.argv[1].rstrip("/"))
    except KeyboardInterrupt:
        pass
