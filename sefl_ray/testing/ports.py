"""A free port on 127.0.0.1 for a server started by a test or benchmark.

Serve's proxy binds with SO_REUSEPORT, so a second Serve on this machine (another session's tests, a `serve run`)
would silently share a fixed port and answer half the requests; a Ray head started by a test would collide with
the session's own Ray on its default ports. Each server therefore takes a port of its own.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
