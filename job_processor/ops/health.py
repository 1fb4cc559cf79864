"""Health checks: is MongoDB answering, and is this instance's worker heartbeat fresh?

- `ready(db)`: MongoDB answers a ping within `timeout` (a dashboard's `/readyz`).
- `check(db)`: `ready`, and a worker document of THIS instance has a fresh heartbeat (the
  worker container's HEALTHCHECK: `job-processor health`). "This instance" means worker
  documents whose `hostname` is this host's (in a container, the container's own hostname,
  so a healthcheck run inside the container finds its worker) and, when INSTANCE_ID is set
  (or `instance_id` is given), whose `instance_id` is that value. Fresh: the last heartbeat
  is within the worker's own `worker_timeout` (recorded on its document), or `max_age`.
  With `worker=False` it is `ready` plus nothing (a dashboard's `/healthz`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import socket
import time
from typing import Any

from pydantic import BaseModel
from pymongo.errors import PyMongoError

from ..core.clock import Clock, SystemClock, as_utc, iso_utc
from ..core.coverage import DEFAULT_WORKER_TIMEOUT, recorded_timeout
from ..core.errors import DatabaseUnreachableError, InvalidDatabaseError
from ..storage import Storage
from ..storage.connect import check_reachable


class Health(BaseModel):
    ok: bool
    mongodb: bool
    """MongoDB answered within the timeout."""
    reason: str
    """One line: why it is (not) healthy."""
    checked_at: dt.datetime
    worker: dict[str, Any] | None = None
    """The freshest matching worker (id, hostname, instance_id, pid, last_seen, age_seconds,
    stuck_threads)."""


async def ready(
    db: Any, wait: float = 2.0, clock: Clock | None = None, *, refused_is_final: bool = False
) -> Health:
    """ok when MongoDB answers a ping within `wait` seconds (`refused_is_final`: a refused
    connection is said at once, as the CLI's commands say it). A database name MongoDB
    refuses (64 characters or more) is not ok either, said so: MongoDB answered."""
    now = (clock or SystemClock()).now()
    try:
        await check_reachable(db, wait, refused_is_final=refused_is_final)
    except DatabaseUnreachableError as exc:
        return Health(ok=False, mongodb=False, reason=str(exc).split(";")[0], checked_at=now)
    except InvalidDatabaseError as exc:
        return Health(ok=False, mongodb=True, reason=str(exc), checked_at=now)
    return Health(ok=True, mongodb=True, reason="MongoDB answers", checked_at=now)


async def check(
    db: Any,
    *,
    collection_prefix: str = "job_processor_",
    instance_id: str | None = None,
    hostname: str | None = None,
    max_age: float | None = None,
    wait: float = 2.0,
    worker: bool = True,
    clock: Clock | None = None,
    refused_is_final: bool = False,
) -> Health:
    """`ready`, and (with `worker=True`) a fresh heartbeat of this instance's worker (see the
    module docstring for what "this instance" and "fresh" mean), within `wait` seconds in all."""
    clock = clock or SystemClock()
    began = time.monotonic()  # the ping and the read within `wait` in all, not each
    base = await ready(db, wait, clock, refused_is_final=refused_is_final)
    if not base.ok or not worker:
        return base
    now = base.checked_at
    host = hostname or socket.gethostname()
    instance = instance_id if instance_id is not None else (os.environ.get("INSTANCE_ID") or None)
    who = f"host {host!r}" + (f", instance {instance!r}" if instance else "")
    try:
        async with asyncio.timeout(max(wait - (time.monotonic() - began), 0.05)):
            docs = await Storage(db, collection_prefix).workers.heartbeats(host)
    except (TimeoutError, PyMongoError) as exc:
        why = f"no answer within {wait:g}s" if isinstance(exc, TimeoutError) else str(exc)
        return Health(ok=False, mongodb=False, reason=f"cannot read workers: {why}", checked_at=now)
    mine = [
        d
        for d in docs
        if d.get("hostname") == host and (not instance or d.get("instance_id") == instance)
    ]
    if not mine:
        return Health(
            ok=False, mongodb=True, reason=f"no worker registered for {who}", checked_at=now
        )
    seen = [d for d in mine if isinstance(d.get("last_seen"), dt.datetime)]
    if not seen:  # documents with no readable heartbeat (damaged, another program's)
        return Health(
            ok=False, mongodb=True, reason=f"no worker heartbeat for {who}", checked_at=now
        )
    best = max(seen, key=lambda d: as_utc(d["last_seen"]))
    age = (now - as_utc(best["last_seen"])).total_seconds()
    limit = max_age if max_age is not None else recorded_timeout(best, DEFAULT_WORKER_TIMEOUT)
    info = {
        "id": str(best["_id"]),
        "hostname": best.get("hostname"),
        "instance_id": best.get("instance_id"),
        "pid": best.get("pid"),
        "last_seen": iso_utc(best["last_seen"]),
        "age_seconds": round(age, 3),
        "stuck_threads": _count(best.get("stuck_threads")),
        "crashed": best.get("crashed"),
    }
    stuck = info["stuck_threads"]
    note = (
        f"; {stuck} plain-def handler or hook call(s) given up but still running in its threads"
        if stuck
        else ""
    )
    if best.get("crashed"):
        return Health(
            ok=False,
            mongodb=True,
            reason=f"worker {best['_id']} ({who}): its claim loop crashed ({best['crashed']}): "
            "it claims nothing; restart it (processor_loop_crashed in its log)",
            checked_at=now,
            worker=info,
        )
    if age > limit:
        return Health(
            ok=False,
            mongodb=True,
            reason=f"worker {best['_id']} ({who}): last heartbeat {age:.1f}s ago, over {limit:g}s",
            checked_at=now,
            worker=info,
        )
    return Health(
        ok=True,
        mongodb=True,
        reason=f"worker {best['_id']} ({who}): heartbeat {age:.1f}s ago{note}",
        checked_at=now,
        worker=info,
    )


def _count(value: Any) -> int:
    """A stored count (a worker's `stuck_threads`); 0 for anything else another program wrote."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0
    return max(0, int(value))  # a double another program's script wrote: 2.0 is 2
