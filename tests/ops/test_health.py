"""health.check / health.ready: which worker is "this instance", and when it is fresh."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import time
from typing import Any

from pymongo import AsyncMongoClient, monitoring

from job_processor import FakeClock
from job_processor.core import documents as D
from job_processor.ops import health
from job_processor.storage import Storage
from job_processor.storage.local_server import local_server

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


async def test_fresh_stale_and_other_instances(db: Any) -> None:
    clock = FakeClock(NOW)
    storage = Storage(db)
    me = D.new_worker(NOW, None, "runner-1", 1, ["a"], worker_timeout=10.0)
    await storage.workers.register(me)
    ok = await health.check(db, instance_id="runner-1", clock=clock)
    assert ok.ok and ok.mongodb and ok.worker is not None and ok.worker["id"] == me["_id"]
    other = await health.check(db, instance_id="runner-2", clock=clock)
    assert not other.ok and "no worker registered for host" in other.reason
    elsewhere = await health.check(db, hostname="not-" + socket.gethostname(), clock=clock)
    assert not elsewhere.ok
    clock.advance(11)
    stale = await health.check(db, instance_id="runner-1", clock=clock)
    assert not stale.ok and "last heartbeat 11.0s ago, over 10s" in stale.reason
    assert (await health.check(db, instance_id="runner-1", clock=clock, max_age=60)).ok
    assert (await health.ready(db)).ok
    assert (await health.check(db, worker=False)).ok  # no worker needed (a dashboard)


async def test_a_processor_whose_claim_loop_crashed_is_unhealthy_while_it_beats(db: Any) -> None:
    """Embedded in an app that goes on: the heartbeat still runs, so the crash is written on
    the worker document; `health` fails and `status` warns, naming the error."""
    import asyncio

    from job_processor import init_job_processor

    p = await init_job_processor(db, jobs={}, instance_id="crashy", heartbeat_interval=0.2)

    async def crashing_claim_loop() -> None:
        raise RuntimeError("boom\nsecond line")

    p.worker.claim_loop = crashing_claim_loop  # type: ignore[method-assign]
    async with p:
        await asyncio.wait_for(p.failed.wait(), 5)
        for _ in range(100):  # the next beat writes it
            found = await health.check(db, instance_id="crashy")
            if not found.ok:
                break
            await asyncio.sleep(0.05)
        assert not found.ok
        assert "its claim loop crashed (RuntimeError: boom): it claims nothing" in found.reason
        assert found.worker is not None and found.worker["crashed"] == "RuntimeError: boom"
        from job_processor.ops.admin import Admin

        for warnings in ((await p.get_status()).warnings, (await Admin(db).overview()).warnings):
            crashed = [w for w in warnings if "its claim loop crashed (RuntimeError: boom)" in w]
            assert crashed and f"worker {p.worker_id} (" in crashed[0], warnings
    del p.worker.claim_loop  # the app fixes it and starts the processor again: healthy
    async with p:
        assert not p.failed.is_set()
        for _ in range(100):
            found = await health.check(db, instance_id="crashy")
            if found.ok:
                break
            await asyncio.sleep(0.05)
        assert found.ok, found.reason


async def test_a_worker_document_whose_stuck_threads_is_no_number_is_still_judged(
    db: Any,
) -> None:
    """`int('x')` failed the check: a healthy worker's container was called unhealthy."""
    clock = FakeClock(NOW)
    storage = Storage(db)
    me = D.new_worker(NOW, None, "runner-1", 1, ["a"], worker_timeout=10.0)
    await storage.workers.register(me)
    await db["job_processor_workers"].update_one(
        {"_id": me["_id"]}, {"$set": {"stuck_threads": "x"}}
    )
    result = await health.check(db, instance_id="runner-1", clock=clock)
    assert result.ok and result.worker is not None and result.worker["stuck_threads"] == 0


async def test_a_stuck_threads_count_stored_as_a_double_is_still_reported(db: Any) -> None:
    """A count written by another program's script as a double (2.0) was read as 0."""
    clock = FakeClock(NOW)
    storage = Storage(db)
    me = D.new_worker(NOW, None, "runner-1", 1, ["a"], worker_timeout=10.0)
    await storage.workers.register(me)
    await db["job_processor_workers"].update_one(
        {"_id": me["_id"]}, {"$set": {"stuck_threads": 2.0}}
    )
    result = await health.check(db, instance_id="runner-1", clock=clock)
    assert result.ok and result.worker is not None
    assert result.worker["stuck_threads"] == 2, result.worker
    assert "2 plain-def handler" in result.reason, result.reason


async def test_health_reads_only_its_own_hosts_heartbeats(db: Any, mongo_url: str) -> None:
    """`job-processor health` (every container, every 15 s) read every worker document of the
    cluster whole (the names each claims, each definition's digest) to keep its own host's:
    ~175 KB a worker of 2,000 names."""
    from pymongo import AsyncMongoClient

    from tests.helpers import ReplyBytes

    storage = Storage(db)
    names = [f"billing.invoice-reminder-{i:05d}" for i in range(2000)]
    digests = dict.fromkeys(names, "0123456789abcdef0123456789abcdef")
    now = dt.datetime.now(dt.UTC)
    for i in range(5):  # the other containers' workers
        other = D.new_worker(now, None, None, 4, names, 30.0, definitions=digests)
        other["hostname"] = f"worker-{i}"
        await storage.workers.register(other)
    await storage.workers.register(
        D.new_worker(now, None, None, 4, names, 30.0, definitions=digests)
    )
    listener = ReplyBytes("job_processor_workers")
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[listener]
    )
    try:
        found = await health.check(client[db.name])
    finally:
        await client.close()
    assert found.ok, found.reason
    assert listener.bytes < 20_000, f"a health check read {listener.bytes} B of worker documents"


class FreezeAtWorkersRead(monitoring.CommandListener):
    """Freezes the server (SIGSTOP: a failover, a stalled disk) at the read of the worker
    documents, after answering the ping `ping_late` seconds late."""

    def __init__(self, pid: int, ping_late: float = 0.0) -> None:
        self.pid, self.ping_late, self.frozen = pid, ping_late, False

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "ping" and self.ping_late:
            time.sleep(self.ping_late)
        if event.command_name == "find" and event.command["find"] == "job_processor_workers":
            os.kill(self.pid, signal.SIGSTOP)
            self.frozen = True

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def checked_frozen(wait: float, ping_late: float = 0.0) -> tuple[health.Health, float]:
    """health.check on a server of its own frozen at the workers' read: what it said, and how
    long it took."""
    with local_server() as server:
        listener = FreezeAtWorkersRead(server.process.pid, ping_late)
        client: AsyncMongoClient[Any] = AsyncMongoClient(
            server.url, tz_aware=True, event_listeners=[listener]
        )
        began = time.monotonic()
        try:
            found = await health.check(client["x"], wait=wait)
        finally:
            took = time.monotonic() - began
            if listener.frozen:
                os.kill(server.process.pid, signal.SIGCONT)
            await client.close()
    assert listener.frozen
    return found, took


async def test_a_worker_read_past_the_wait_says_why() -> None:
    """MongoDB answered the ping, then not the read of the worker documents: the reason was
    "cannot read workers: " and nothing after it (str(TimeoutError()) is "")."""
    found, _ = await checked_frozen(0.5)
    assert not found.ok
    assert found.reason == "cannot read workers: no answer within 0.5s", found.reason


async def test_the_ping_and_the_workers_read_share_one_wait() -> None:
    """A slow ping (0.6 s of a 1 s wait) then a stalled read of the worker documents: each
    had the whole wait, 1.6 s in all for `--timeout 1` (a compose healthcheck's timeout)."""
    found, took = await checked_frozen(1.0, ping_late=0.6)
    assert not found.ok
    assert found.reason == "cannot read workers: no answer within 1s", found.reason
    assert took < 1.45, took  # 1.6 s before


async def test_a_database_name_mongodb_refuses_is_unhealthy_not_an_error(mongo_url: str) -> None:
    """A database name of 64 characters or more: MongoDB answers the ping with a refusal.
    `ready` and `check` (a dashboard's /readyz and /healthz) raised InvalidDatabaseError (an
    error 500) instead of returning a Health that says why."""
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        db = client["x" * 70]
        for found in (
            await health.ready(db),
            await health.check(db, worker=False),
            await health.check(db),
        ):
            assert not found.ok and found.mongodb, found
            assert "refuses the database name" in found.reason, found.reason
    finally:
        await client.close()
