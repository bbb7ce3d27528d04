"""A free port for a server started by a test or benchmark.

Serve's proxy binds with SO_REUSEPORT, so a second Serve on this machine (another session's tests, a `serve run`)
would silently share a fixed port and answer half the requests; a Ray head started by a test would collide with
the session's own Ray on its default ports. Each server therefore takes a port of its own.

The port is drawn below the kernel's ephemeral range (32768+ on Linux) and above Ray's worker ports (10002-19999):
a port from the ephemeral range is free when we look, but any outgoing connection, or any Ray process binding port 0,
may take it before the server binds it, and then `ray start` exits (CI saw this once).
"""

from __future__ import annotations

import random
import socket

_FIRST, _LAST = 20000, 32000
_handed_out: set[int] = set()


def free_port() -> int:
    for _ in range(200):
        port = random.randint(_FIRST, _LAST)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("", port))  # every address: a server on 0.0.0.0 and one on 127.0.0.1 both collide
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port between {_FIRST} and {_LAST}")
