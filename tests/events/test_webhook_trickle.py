"""A receiver that sends its status line and headers one byte at a time (each byte well within
`timeout`) held a webhook delivery, and its worker slot, for as long as it trickled: `timeout`
bounds the answer's status and headers in all (docs/events.md)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from job_processor import init_job_processor
from job_processor.core.definitions import Backoff
from job_processor.events.webhooks import WebhookOptions
from tests.helpers import FAST

QUICK = Backoff(kind="fixed", base_seconds=0.1, jitter=False)


@pytest.fixture
def slow_headers() -> Iterator[int]:
    stop = threading.Event()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 10_000
        for byte in head:
            if stop.is_set():
                break
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()


async def test_a_status_line_that_trickles_is_bounded_by_the_timeout(
    db: Any, slow_headers: int
) -> None:
    options = WebhookOptions(backoff=QUICK, max_attempts=1, timeout=1.0)
    p = await init_job_processor(db, webhook_options=options, **FAST)
    await p.webhooks.add(url=f"http://127.0.0.1:{slow_headers}/h", events=["e"])
    async with p:
        event = await p.emit("e", {})
        status = None
        for _ in range(80):  # 8 s: eight times the timeout
            shown = await p.get_event(event.id)
            status = shown.deliveries[0].status
            if status in ("finished", "errored"):
                break
            await asyncio.sleep(0.1)
    assert status == "errored", f"the delivery is still {status} 8 s after a 1 s timeout"
