"""health.check / health.ready: which worker is "this instance", and when it is fresh."""

from __future__ import annotations

import datetime as dt
import socket
from typing import Any

from job_processor import FakeClock
from job_processor.core import documents as D
from job_processor.ops import health
from job_processor.storage import Storage

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
