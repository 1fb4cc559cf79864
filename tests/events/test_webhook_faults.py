"""Webhook deliveries on their fault paths (an outside review's findings, each one failing
before its fix): the answer's status decides, whatever happens to its body or to the
endpoint's bookkeeping afterwards; an attempt that cannot even be sent is recorded; a success
ends a run of failures counted meanwhile by a concurrent delivery."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import itertools
import logging
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from bson import ObjectId
from pymongo.errors import AutoReconnect

from job_processor import WebhookOptions, init_job_processor
from tests.events.test_webhooks import QUICK, make, receiver, wait_delivery  # noqa: F401
from tests.helpers import FAST, wait_for
from tests.receiver import Receiver, Reply


async def test_a_2xx_whose_body_cannot_be_decoded_is_delivered_once(
    db: Any,
    receiver: Receiver,  # noqa: F811
) -> None:
    p = await make(db, max_attempts=3)
    gz = Reply(200, {"Content-Encoding": "gzip"}, body=b"accepted, not gzip")
    ep = await p.webhooks.add(url=receiver.script("/gz", gz), events=["e"])
    async with p:
        event = await p.emit("e", {})
        d = await wait_delivery(p, event.id, ep, "errored", "finished")
    assert d.status == "finished" and len(receiver.received("/gz")) == 1
    assert (await p.webhooks.get(ep.id)).consecutive_failures == 0


@pytest.mark.parametrize(
    ("encoding", "layers", "inflated"),
    [("gzip", 1, 200_000_000), ("gzip, gzip", 2, 300_000_000)],
    ids=["gzip: 200 KB on the wire", "gzip twice: 700 bytes on the wire"],
)
async def test_a_compressed_answer_is_not_inflated_past_the_excerpt(
    db: Any,
    receiver: Receiver,  # noqa: F811
    encoding: str,
    layers: int,
    inflated: int,
) -> None:
    """events.md: "at most the first 800 bytes of the body are read". A receiver answering
    with a few compressed bytes made the worker inflate a network chunk whole, through every
    Content-Encoding layer (616 MB for 700 bytes), to keep 200 characters."""
    body = b"\0" * inflated
    for _ in range(layers):
        body = gzip.compress(body, compresslevel=9)
    p = await make(db, max_attempts=1)
    reply = Reply(200, {"Content-Encoding": encoding}, body=body)
    ep = await p.webhooks.add(url=receiver.script("/z", reply), events=["e"])
    del body
    async with p:
        tracemalloc.start()
        try:
            event = await p.emit("e", {})
            d = await wait_delivery(p, event.id, ep, "errored", "finished")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert d.status == "finished"
    assert peak < 10_000_000, f"{peak / 1e6:.0f} MB allocated to keep a 200-character excerpt"


async def test_a_gzip_answer_is_excerpted_as_text(
    db: Any,
    receiver: Receiver,  # noqa: F811
) -> None:
    """One gzip layer is still inflated (within the excerpt's bound): the excerpt is the text."""
    p = await make(db, max_attempts=1)
    text = "ok " + "x" * 5000
    reply = Reply(200, {"Content-Encoding": "gzip"}, body=gzip.compress(text.encode()))
    ep = await p.webhooks.add(url=receiver.script("/t", reply), events=["e"])
    async with p:
        event = await p.emit("e", {})
        d = await wait_delivery(p, event.id, ep, "errored", "finished")
    assert d.status == "finished"
    assert d.attempts[-1]["response_excerpt"].startswith("ok xxxx"), d.attempts


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
async def test_a_deflate_answer_is_excerpted_as_text(
    db: Any,
    receiver: Receiver,  # noqa: F811
    wbits: int,
) -> None:
    """A `deflate` body is inflated (up to the excerpt) for the record; many servers send it
    raw, without the zlib header (httpx, which read the body before, inflated both)."""
    p = await make(db, max_attempts=1)
    c = zlib.compressobj(wbits=wbits)
    body = c.compress(b"quota exceeded " + b"x" * 3000) + c.flush()
    reply = Reply(500, {"Content-Encoding": "deflate"}, body=body)
    ep = await p.webhooks.add(url=receiver.script("/d", reply), events=["e"])
    async with p:
        event = await p.emit("e", {})
        d = await wait_delivery(p, event.id, ep, "errored", "finished")
    assert d.status == "errored"
    assert (d.attempts[-1]["response_excerpt"] or "").startswith("quota exceeded"), d.attempts


def refuse_final_writes(p: Any, monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[float]:
    """The jobs' final writes refused for `seconds` from the first (an election longer than
    worker_timeout): the list holds when that ends, once one was tried."""
    coll = p.storage.jobs.coll
    real = coll.update_one
    loop = asyncio.get_running_loop()
    ends: list[float] = []

    async def election(query: Any, update: Any, **kw: Any) -> Any:
        if "end_id" in update.get("$set", {}):
            if not ends:
                ends.append(loop.time() + seconds)
            if loop.time() < ends[0]:
                raise AutoReconnect("no primary")
        return await real(query, update, **kw)

    monkeypatch.setattr(coll, "update_one", election)
    return ends


async def reconciled_uncounted(p: Any, event_id: str, ep: Any) -> None:
    """The delivery ends errored by its own worker's reconciliation ("lost track"), and its
    endpoint, enabled again meanwhile, stays enabled with no failure counted."""
    done = await wait_delivery(p, event_id, ep, "errored", "finished", timeout=20)
    assert "lost track" in (done.error or "")
    got = await p.webhooks.get(ep.id)
    assert got.enabled and got.consecutive_failures == 0, (got.disabled_reason, got)


def fails_once(real: Any, blips: list[int]) -> Any:
    """`real`, except that its first call meets an outage (noted in `blips`) and writes
    nothing."""

    async def flaky(*args: Any) -> Any:
        if not blips:
            blips.append(1)
            raise AutoReconnect("connection reset (test)")
        return await real(*args)

    return flaky


@pytest.mark.parametrize(
    ("code", "write", "ends", "failures"),
    [(200, "delivered", "finished", 0), (422, "failed_delivery", "errored", 1)],
    ids=["a 2xx fails nothing", "a 4xx is not sent again"],
)
async def test_an_outage_on_the_bookkeeping_never_changes_what_the_answer_meant(
    db: Any,
    receiver: Receiver,  # noqa: F811
    code: int,
    write: str,
    ends: str,
    failures: int,
) -> None:
    """The endpoint's count, written after the answer, meets an outage once: a 2xx delivery
    still finishes (and resets a run of 3 failures), a 4xx is not sent again (counted once)."""
    p = await make(db, max_attempts=1 if code == 200 else 5)
    ep = await p.webhooks.add(url=receiver.script("/r", Reply(code)), events=["e"])
    await p.storage.webhooks.coll.update_one(
        {"_id": ObjectId(ep.id)}, {"$set": {"consecutive_failures": 3 if code == 200 else 0}}
    )
    blips: list[int] = []
    store = p.storage.webhooks
    setattr(store, write, fails_once(getattr(store, write), blips))
    async with p:
        event = await p.emit("e", {})
        d = await wait_delivery(p, event.id, ep, ends)
    assert d.status == ends and len(receiver.received("/r")) == 1
    assert blips == [1] and (await p.webhooks.get(ep.id)).consecutive_failures == failures


async def test_an_attempt_that_cannot_be_sent_is_recorded_and_counted(db: Any) -> None:
    """A host name httpx cannot encode (an invalid IDNA A-label; a header value that is not
    ASCII is refused by add now): each attempt is recorded with its error, and the delivery
    that fails for good counts toward `disable_after`."""
    p = await make(db, max_attempts=2, disable_after=1)
    ep = await p.webhooks.add(url="http://xn--zz.example/h", events=["e"])
    async with p:
        event = await p.emit("e", {})
        d = await wait_delivery(p, event.id, ep, "errored", "finished")
        got = await p.webhooks.get(ep.id)
    assert d.status == "errored" and len(d.attempts) == 2
    assert all(a["status_code"] is None and a["error"] for a in d.attempts)
    assert not got.enabled and got.disabled_reason == "1 consecutive failed deliveries"


@contextlib.contextmanager
def _dripping(first: bytes, drips: Iterable[bytes]) -> Iterator[int]:
    """A receiver on a free port (yielded) that reads one request, sends `first` at once, then
    each of `drips` 0.2 s apart, until they run out or the test ends."""
    stop = threading.Event()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        try:
            conn.sendall(first)
            for drip in drips:
                if stop.is_set():
                    break
                time.sleep(0.2)
                conn.sendall(drip)
        except OSError:
            pass
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()
        thread.join(5)


@pytest.fixture
def trickling() -> Iterator[int]:
    """A receiver that answers 200 at once, then sends one byte of its body every 0.2 s."""
    with _dripping(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", itertools.repeat(b"1\r\nx\r\n")
    ) as port:
        yield port


@pytest.fixture
def slow_headers() -> Iterator[int]:
    """A receiver that sends its status line and headers one byte every 0.2 s."""
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 10_000
    with _dripping(b"", (bytes([byte]) for byte in head)) as port:
        yield port


async def test_a_2xx_whose_body_trickles_is_delivered_within_the_timeout(
    db: Any, trickling: int
) -> None:
    """`timeout` bounds the read of the answer's excerpt as a whole, not each read: the
    delivery ends `finished` about one timeout after the status (it stayed running for as
    long as the receiver went on: 800 bytes at one byte each 0.2 s)."""
    options = WebhookOptions(backoff=QUICK, max_attempts=1, timeout=1.0)
    p = await init_job_processor(db, webhook_options=options, **FAST)
    ep = await p.webhooks.add(url=f"http://127.0.0.1:{trickling}/h", events=["e"])
    async with p:
        event = await p.emit("e", {})
        d = await wait_delivery(p, event.id, ep, "errored", "finished", timeout=8)
    assert d.status == "finished" and d.result["status_code"] == 200


async def test_a_success_ends_a_run_of_failures_a_concurrent_delivery_counted(
    db: Any,
    receiver: Receiver,  # noqa: F811
) -> None:
    """Success S starts (no failure counted yet), F1 fails for good (1), S gets its 2xx, F2
    fails for good: 1 in a row, not 2 (with disable_after=2 the endpoint was disabled)."""
    hold = threading.Event()
    options = WebhookOptions(backoff=QUICK, max_attempts=1, timeout=10, disable_after=2)
    p = await init_job_processor(db, concurrency=4, webhook_options=options, **FAST)
    ep = await p.webhooks.add(
        url=receiver.script("/x", Reply(200, hold=hold), Reply(422)), events=["e"]
    )
    async with p:
        first = await p.emit("e", {"n": 1})
        await wait_for(lambda: len(receiver.received("/x")) == 1)  # S in flight
        second = await p.emit("e", {"n": 2})
        await wait_delivery(p, second.id, ep, "errored")  # F1
        hold.set()
        await wait_delivery(p, first.id, ep, "finished")  # S
        third = await p.emit("e", {"n": 3})
        await wait_delivery(p, third.id, ep, "errored")  # F2
        got = await p.webhooks.get(ep.id)
    assert got.enabled and got.consecutive_failures == 1


def reply_lost_once(real: Any, what: str, lost: list[str]) -> Any:
    """`real`, except that the reply of its first call is lost (noted as `what` in `lost`)
    after the write was applied."""

    async def then_lost(*args: Any) -> Any:
        got = await real(*args)
        if what not in lost:
            lost.append(what)
            raise AutoReconnect("connection reset after the write (test)")
        return got

    return then_lost


async def test_bookkeeping_sent_again_after_a_lost_reply_counts_once_and_disables_once(
    db: Any,
    receiver: Receiver,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The count of failed deliveries and the disabling are written again after an outage (a
    reply lost after the write was applied): the delivery is counted once, not twice, and the
    endpoint's disabling is said (it used to be counted twice, and the disabling, finding the
    endpoint already disabled by its own first write, said nothing)."""
    logger = logging.getLogger("test.webhooks.bookkeeping")
    p = await make(db, logger=logger, max_attempts=1, disable_after=1)
    ep = await p.webhooks.add(url=receiver.script("/bad", Reply(422)), events=["e"])
    store = p.storage.webhooks
    lost: list[str] = []
    for write, what in (("failed_delivery", "count"), ("disable", "disable")):
        setattr(store, write, reply_lost_once(getattr(store, write), what, lost))
    with caplog.at_level(logging.WARNING, logger="test.webhooks.bookkeeping"):
        async with p:
            event = await p.emit("e", {})
            await wait_delivery(p, event.id, ep, "errored")
    got = await p.webhooks.get(ep.id)
    assert lost == ["count", "disable"]
    assert got.consecutive_failures == 1 and not got.enabled
    said = [r for r in caplog.records if r.__dict__.get("event") == "webhook_endpoint_disabled"]
    assert len(said) == 1


async def test_a_status_line_that_trickles_is_bounded_by_the_timeout(
    db: Any, slow_headers: int
) -> None:
    """A receiver sending its status line and headers one byte at a time (each byte well
    within `timeout`) held the delivery, and its worker slot, for as long as it trickled."""
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


def _claim_past() -> dt.datetime:
    """A minute ago, in milliseconds (as stored)."""
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60)
    return past.replace(microsecond=past.microsecond // 1000 * 1000)


async def _running_on(p: Any, job_id: str, worker_id: str, claimed: dt.datetime) -> None:
    """The delivery as its worker left it mid-attempt (attempt 1, its claim at `claimed`)."""
    running = {
        "status": "running",
        "worker_id": worker_id,
        "run_id": str(ObjectId()),
        "run_started_at": claimed,
        "attempt": 1,
    }
    await p.storage.jobs.coll.update_one(
        {"_id": ObjectId(job_id)}, {"$set": running, "$unset": {"claim_name": ""}}
    )


async def _died_during(p: Any, job_id: str) -> None:
    """The delivery's worker died (SIGKILL, OOM) during its attempt 1: its document went stale
    a minute ago."""
    past = _claim_past()
    worker = {"_id": "dead-worker", "hostname": "gone", "pid": 1}
    await p.storage.workers.register(worker | {"started_at": past, "last_seen": past})
    await _running_on(p, job_id, "dead-worker", past)


async def test_a_delivery_whose_worker_died_on_its_last_attempt_counts_as_failed_for_good(
    db: Any,
    receiver: Receiver,  # noqa: F811
) -> None:
    """events.md: an endpoint whose deliveries fail for good `disable_after` times in a row is
    disabled. A delivery the recovery sweep ended errored (its worker died on the last
    attempt) was never counted: such an endpoint stayed enabled for ever."""
    p = await make(db, max_attempts=1, disable_after=1)
    ep = await p.webhooks.add(url=receiver.url("/h"), events=["e"])
    event = await p.emit("e", {})
    [d] = event.deliveries
    await _died_during(p, d.job_id)
    async with p:
        done = await wait_delivery(p, event.id, ep, "errored", "finished")
    assert done.status == "errored" and done.failures == 1
    got = await p.webhooks.get(ep.id)
    assert got.consecutive_failures == 1 and not got.enabled
    assert got.disabled_reason == "1 consecutive failed deliveries"
    assert receiver.received("/h") == []


async def test_a_delivery_whose_worker_lost_track_of_its_last_attempt_counts(
    db: Any,
    receiver: Receiver,  # noqa: F811
) -> None:
    """The sweep of the live worker that ran it ends it errored ("its worker lost track of the
    run"): counted as failed for good too."""
    p = await make(db, max_attempts=1, disable_after=2)
    ep = await p.webhooks.add(url=receiver.url("/h"), events=["e"])
    event = await p.emit("e", {})
    [d] = event.deliveries
    # held by a worker claiming it just now (not recovered by the start's sweep, not claimed)
    await _running_on(p, d.job_id, "registering", dt.datetime.now(dt.UTC))
    async with p:  # then this live worker's, by the database, its claim a minute old
        await _running_on(p, d.job_id, p.worker.worker_id, _claim_past())
        done = await wait_delivery(p, event.id, ep, "errored", "finished")
        got = await p.webhooks.get(ep.id)
    assert done.status == "errored" and "lost track" in (done.error or "")
    assert got.consecutive_failures == 1 and got.enabled


async def test_a_delivery_whose_worker_died_with_attempts_left_is_retried_not_counted(
    db: Any,
    receiver: Receiver,  # noqa: F811
) -> None:
    """Attempt 1 of 2 crashed: the delivery is retried, and only its end counts (a 4xx: one
    failure, the endpoint still enabled at disable_after=2)."""
    p = await make(db, max_attempts=2, disable_after=2)
    ep = await p.webhooks.add(url=receiver.script("/h", Reply(422)), events=["e"])
    event = await p.emit("e", {})
    [d] = event.deliveries
    await _died_during(p, d.job_id)
    async with p:
        done = await wait_delivery(p, event.id, ep, "errored", "finished")
    assert done.status == "errored" and done.failures == 2
    assert len(receiver.received("/h")) == 1
    got = await p.webhooks.get(ep.id)
    assert got.consecutive_failures == 1 and got.enabled


async def test_a_crashed_delivery_of_a_removed_endpoint_ends_without_error(
    db: Any,
    receiver: Receiver,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The endpoint was removed meanwhile: the delivery ends errored, nothing is counted,
    created or said wrong."""
    logger = logging.getLogger("test.webhooks.removed")
    p = await make(db, logger=logger, max_attempts=1, disable_after=1)
    ep = await p.webhooks.add(url=receiver.url("/h"), events=["e"])
    event = await p.emit("e", {})
    [d] = event.deliveries
    await p.webhooks.remove(ep.id)
    await _died_during(p, d.job_id)
    with caplog.at_level(logging.WARNING, logger="test.webhooks.removed"):
        async with p:
            done = await wait_delivery(p, event.id, ep, "errored", "finished")
    assert done.status == "errored"
    assert await p.storage.webhooks.all() == []
    said = {r.__dict__.get("event") for r in caplog.records}
    assert "job_recovered" in said
    assert not said & {"job_recovery_failed", "webhook_bookkeeping_failed"}


async def test_a_success_after_a_crashed_delivery_resets_the_count(
    db: Any,
    receiver: Receiver,  # noqa: F811
) -> None:
    """events.md: a successful delivery resets the count, one crash-ended included."""
    p = await make(db, max_attempts=1, disable_after=2)
    ep = await p.webhooks.add(url=receiver.url("/h"), events=["e"])
    first = await p.emit("e", {"n": 1})
    await _died_during(p, first.deliveries[0].job_id)
    async with p:
        await wait_delivery(p, first.id, ep, "errored")
        assert (await p.webhooks.get(ep.id)).consecutive_failures == 1
        second = await p.emit("e", {"n": 2})
        await wait_delivery(p, second.id, ep, "finished")
        got = await p.webhooks.get(ep.id)
    assert got.consecutive_failures == 0 and got.enabled


@pytest.mark.parametrize("status", [422, 410], ids=["4xx counted to the limit", "410 Gone"])
async def test_a_disabling_its_run_made_is_not_made_again_when_the_run_is_reconciled(
    db: Any,
    receiver: Receiver,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
) -> None:
    """The last attempt is answered 422 (disable_after=1 reached) or 410 Gone: the endpoint is
    disabled, said once. Its final write is then refused for 2.5 s (an election longer than
    worker_timeout): the worker reconciles the run ("lost track"), and the recovery's count of
    that run made the disabling again: said twice, disabled_at moved, a 410's reason replaced."""
    logger = logging.getLogger(f"test.webhooks.disabled_once.{status}")
    p = await make(db, logger=logger, max_attempts=1, disable_after=1)
    ep = await p.webhooks.add(url=receiver.script("/h", Reply(status)), events=["e"])
    loop = asyncio.get_running_loop()
    refuse_final_writes(p, monkeypatch, 2.5)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        async with p:
            event = await p.emit("e", {})
            deadline = loop.time() + 10
            while (first := await p.webhooks.get(ep.id)).enabled:
                assert loop.time() < deadline, "the endpoint was never disabled"
                await asyncio.sleep(0.02)
            done = await wait_delivery(p, event.id, ep, "errored", "finished", timeout=20)
    assert "lost track" in (done.error or "")  # reconciled by its own worker
    got = await p.webhooks.get(ep.id)
    said = [r.__dict__.get("event") for r in caplog.records]
    assert said.count("webhook_endpoint_disabled") == 1, said
    assert (got.disabled_reason, got.disabled_at) == (first.disabled_reason, first.disabled_at)


async def test_a_410_run_reconciled_after_the_endpoint_was_enabled_again_is_not_counted(
    db: Any,
    receiver: Receiver,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 410 disables the endpoint under the run's key; the operator enables it again (which
    clears `disabled_by`) before the run is reconciled: the reconciliation counted the 410 run
    against the endpoint just enabled, and with disable_after=1 disabled it again."""
    p = await make(db, max_attempts=1, disable_after=1)
    ep = await p.webhooks.add(url=receiver.script("/h", Reply(410)), events=["e"])
    loop = asyncio.get_running_loop()
    refuse_final_writes(p, monkeypatch, 2.5)
    async with p:
        event = await p.emit("e", {})
        deadline = loop.time() + 10
        while (await p.webhooks.get(ep.id)).enabled:
            assert loop.time() < deadline, "the endpoint was never disabled"
            await asyncio.sleep(0.02)
        await p.webhooks.enable(ep.id)  # the receiver fixed: enabled again
        await reconciled_uncounted(p, event.id, ep)


async def test_a_410_on_an_endpoint_disabled_meanwhile_is_not_counted_once_enabled_again(
    db: Any,
    receiver: Receiver,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delivery is in flight when the operator disables its endpoint by hand; the receiver
    answers 410 (the delivery's own disabling matches nothing: already disabled, so the run
    is not noted). Its final write is refused for 2.5 s, the operator enables the endpoint
    again, and the run's reconciliation counts the 410 (which a delivery never counts) and,
    with disable_after=1, disables the endpoint it was just enabled again."""
    p = await make(db, max_attempts=1, disable_after=1)
    answer = threading.Event()
    ep = await p.webhooks.add(url=receiver.script("/h", Reply(410, hold=answer)), events=["e"])
    election_ends = refuse_final_writes(p, monkeypatch, 2.5)
    async with p:
        event = await p.emit("e", {})
        await wait_for(lambda: receiver.received("/h"), timeout=10)  # in flight
        await p.webhooks.disable(ep.id, "receiver maintenance")
        answer.set()  # 410 Gone
        await wait_for(lambda: election_ends, timeout=10)  # its final write was tried
        await p.webhooks.enable(ep.id)  # maintenance over
        await reconciled_uncounted(p, event.id, ep)


async def test_a_delivery_refused_as_disabled_is_not_counted_once_enabled_again(
    db: Any,
    receiver: Receiver,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delivery queued while enabled is refused ("is disabled"), sending nothing; its final
    write is lost and the operator enables the endpoint: the reconciliation counted it and
    disabled the endpoint again."""
    p = await make(db, max_attempts=1, disable_after=1)
    ep = await p.webhooks.add(url=receiver.url("/h"), events=["e"])
    event = await p.emit("e", {})  # queued while enabled
    await p.webhooks.disable(ep.id, "receiver maintenance")
    election_ends = refuse_final_writes(p, monkeypatch, 2.5)
    async with p:
        await wait_for(lambda: election_ends, timeout=10)  # its final write was tried
        await p.webhooks.enable(ep.id)
        await reconciled_uncounted(p, event.id, ep)
    assert not receiver.received("/h")
