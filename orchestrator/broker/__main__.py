"""Start the broker: read the configuration line from stdin, serve, and exit when stdin closes.

The orchestrator holds the other end of stdin. When it closes it, or dies, the
broker exits and every agent behind it loses its only route out.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from .config import ConfigError, parse_config
from .proxy import Broker

EXIT_BAD_CONFIG = 2


def emit(event: dict[str, Any]) -> None:
    """Write one event as a JSON line on stdout, which the orchestrator follows through the container's logs."""
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def serve() -> int:
    line = await asyncio.to_thread(sys.stdin.buffer.readline)
    try:
        config = parse_config(line.decode("utf-8", errors="replace"))
    except ConfigError as exc:
        emit({"event": "error", "message": f"invalid configuration: {exc}"})
        return EXIT_BAD_CONFIG

    broker = Broker(config, emit)
    try:
        await broker.start()
    except OSError as exc:
        emit({"event": "error", "message": f"cannot listen: {exc}"})
        return 1

    # Reading to the end of stdin returns when the orchestrator's attach connection closes.
    await asyncio.to_thread(sys.stdin.buffer.read)
    broker.close()
    emit({"event": "stopped", "reason": "stdin closed"})
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(serve()))
