"""A webhook answer that comes in while its worker stops (SIGTERM: `stop()`, the shutdown
grace) is kept (an outside review's findings, each failing before its fix): a 4xx is not sent
again after the restart nor counted twice, a Retry-After is honoured, and a 2xx whose body is
still being read is delivered, not sent again."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from job_processor import JobProcessor, WebhookOptions, init_job_processor
from tests.events.test_webhooks import QUICK, delivery, make, receiver, wait_delivery  # noqa: F401
from tests.helpers import FAST, wait_for
from tests.receiver import Receiver, Reply


async def _stop_while_in_flight(
    p: JobProcessor,
    receiver: Receiver,  # noqa: F811
    release: threading.Event,
) -> str:
    """Emit, and stop the worker while the receiver holds its answer; the answer comes in
    during the shutdown grace (FAST: 1 s)."""
    await p.start()
    event = await p.emit("e", {})
    await receiver.wait("/r", 1)  # the attempt is in flight, its answer held
    stopping = asyncio.create_task(p.stop())  # what SIGTERM does in serve()
    await wait_for(lambda: p.worker.stopping.is_set())
    release.set()
    await stopping
    return event.id


async def _restarted(db: Any, **options: Any) -> None:
    """The service started again, for as long as a delivery due now takes to be sent."""
    p = await make(db, **options)
    async with p:
        await asyncio.sleep(1.5)  # nothing to wait on: what is checked is that nothing comes


async def test_a_4xx_answered_during_the_shutdown_grace_is_not_sent_again(
    db: Any,
    receiver: Receiver,  # noqa: F811
) -> None:
    release = threading.Event()
    p = await make(db, max_attempts=5, disable_after=2)
    ep = await p.webhooks.add(
        url=receiver.script("/r", Reply(422, hold=release), Reply(422)), events=["e"]
    )
    event_id = await _stop_while_in_flight(p, receiver, release)
    assert (await delivery(p, event_id, ep)).status == "errored"
    await _restarted(db, max_attempts=5, disable_after=2)
    got = await p.webhooks.get(ep.id)
    assert (len(receiver.received("/r")), got.consecutive_failures, got.enabled) == (1, 1, True)


async def test_a_retry_after_answered_during_the_shutdown_grace_is_honoured(
    db: Any,
    receiver: Receiver,  # noqa: F811
) -> None:
    release = threading.Event()
    p = await make(db, max_attempts=5)
    busy = Reply(429, {"Retry-After": "600"}, hold=release)
    ep = await p.webhooks.add(url=receiver.script("/r", busy, Reply(200)), events=["e"])
    event_id = await _stop_while_in_flight(p, receiver, release)
    d = await delivery(p, event_id, ep)
    assert d.scheduled_for is not None
    wait = (d.scheduled_for - dt.datetime.now(dt.UTC)).total_seconds()
    assert wait > 500, f"next attempt in {wait:.0f}s"
    await _restarted(db, max_attempts=5)
    assert len(receiver.received("/r")) == 1


async def test_a_5xx_on_the_last_attempt_during_the_grace_counts_the_delivery_once(
    db: Any,
    receiver: Receiver,  # noqa: F811
) -> None:
    """The last attempt (max_attempts=1) gets a 500 while the worker stops: the sender counts
    the delivery as failed for good on the endpoint, but the run is only "interrupted" and is
    sent again after the restart, where it fails and is counted again. One delivery then
    counts twice towards disable_after (the same double count 91ebc96 fixed for a 4xx)."""
    release = threading.Event()
    p = await make(db, max_attempts=1, disable_after=2)
    ep = await p.webhooks.add(
        url=receiver.script("/r", Reply(500, hold=release), Reply(500)), events=["e"]
    )
    event_id = await _stop_while_in_flight(p, receiver, release)
    p2 = await make(db, max_attempts=1, disable_after=2)
    async with p2:
        await wait_delivery(p2, event_id, ep, "errored")
    got = await p2.webhooks.get(ep.id)
    # one delivery failed for good: one consecutive failure, the endpoint still enabled
    assert (got.consecutive_failures, got.enabled) == (1, True), (
        got.consecutive_failures,
        got.enabled,
        got.disabled_reason,
    )


@contextlib.contextmanager
def _answers_200_then_trickles() -> Iterator[tuple[int, list[float]]]:
    """A receiver (its port, and when it accepted each connection) that answers every request
    200 at once, then one byte of body every 0.2 s."""
    stop = threading.Event()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.1)
    accepted: list[float] = []

    def handle(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            while not stop.wait(0.2):
                conn.sendall(b"1\r\nx\r\n")
        conn.close()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(time.time())
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(5)
        server.close()


async def test_a_2xx_whose_body_is_read_at_the_stop_is_delivered_not_sent_again(db: Any) -> None:
    options = WebhookOptions(backoff=QUICK, max_attempts=3, timeout=5.0)
    with _answers_200_then_trickles() as (port, accepted):
        p = await init_job_processor(db, webhook_options=options, **FAST)  # grace 1 s
        ep = await p.webhooks.add(url=f"http://127.0.0.1:{port}/h", events=["e"])
        await p.start()
        event = await p.emit("e", {})
        await wait_for(lambda: bool(accepted))
        await asyncio.sleep(0.3)  # the 200 is in; its body trickles (the excerpt: 5 s)
        await p.stop()
        assert (await delivery(p, event.id, ep)).status == "finished"
        p2 = await init_job_processor(db, webhook_options=options, **FAST)
        async with p2:
            await asyncio.sleep(1.5)  # what is checked is that nothing is sent again
    assert len(accepted) == 1


async def test_an_unsendable_last_attempt_cut_by_the_stop_counts_the_delivery_once(
    db: Any,
    receiver: Receiver,  # noqa: F811
) -> None:
    """The last attempt cannot be built (its format raises) after the stop's signal fired: the
    sender counted it failed for good, the run ended interrupted, ran again after the restart
    and was counted again: one delivery disabled an endpoint with disable_after=2."""
    from job_processor import Event, WebhookEndpoint

    def broken(event: Event, endpoint: WebhookEndpoint) -> Any:
        raise ValueError("no template for this event")

    async def service() -> JobProcessor:
        return await init_job_processor(
            db,
            webhook_formats={"broken": broken},
            webhook_options=WebhookOptions(
                backoff=QUICK, max_attempts=1, disable_after=2, timeout=2.0
            ),
            **FAST,
        )

    p = await service()
    ep = await p.webhooks.add(url=receiver.url("/r"), events=["e"], format="broken")
    original = p.events.sender.deliver
    claimed = asyncio.Event()

    async def claimed_as_the_stop_begins(job: Any, signal: Any, event: Event) -> Any:
        claimed.set()
        await signal.wait()  # the stop begins right after the claim: the attempt runs in the grace
        return await original(job, signal, event)

    p.events.sender.deliver = claimed_as_the_stop_begins  # type: ignore[method-assign]
    await p.start()
    event = await p.emit("e", {})
    await asyncio.wait_for(claimed.wait(), 10)
    await p.stop()
    assert (await delivery(p, event.id, ep)).status == "pending"  # interrupted, not failed
    p2 = await service()
    async with p2:
        await wait_delivery(p2, event.id, ep, "errored")
    got = await p2.webhooks.get(ep.id)
    assert (got.consecutive_failures, got.enabled) == (1, True), got.disabled_reason
