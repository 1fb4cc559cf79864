"""Worker documents, heartbeats, and the dead-worker sweep (exactly-once recovery)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
from collections.abc import Mapping

from bson import ObjectId
from pymongo.errors import PyMongoError

from .clock import Clock, as_utc, sleep_or_wake
from .definitions import Backoff, JobDef
from .log import EventLog
from .models import JobStatus
from .retries import after_failure, history_entry, with_history
from .store import Doc, Store
from .worker import Worker, call_exit_hook


def new_worker_doc(
    now: dt.datetime,
    worker_tags: list[str] | None,
    instance_id: str | None,
    concurrency: int,
) -> Doc:
    host = socket.gethostname()
    return {
        "_id": f"{host}-{os.getpid()}-{ObjectId()}",  # unique per process start
        "hostname": host,
        "pid": os.getpid(),
        "instance_id": instance_id,
        "tags": worker_tags,
        "concurrency": concurrency,
        "started_at": now,
        "last_seen": now,
    }


def recovery_outcome(
    doc: Doc, definition: JobDef | None, now: dt.datetime
) -> tuple[JobStatus, str | None, Doc]:
    """What a crashed run becomes: killed if a kill was asked, paused if resumable, else a failed
    attempt (retried with backoff while attempts remain, else errored "worker crashed")."""
    if doc.get("kill_requested_at") is not None:
        return JobStatus.KILLED, "killed (its worker crashed)", {}
    if definition is not None and definition.resumable:
        return JobStatus.PAUSED, None, {}
    status, extra = after_failure(doc, definition.backoff if definition else Backoff(), now)
    return status, "worker crashed", extra


def is_dead(last_seen: dt.datetime, now: dt.datetime, worker_timeout: float) -> bool:
    return last_seen < now - dt.timedelta(seconds=worker_timeout)


class Heartbeat:
    """Keeps this process's worker document fresh and recovers the jobs of dead workers."""

    def __init__(
        self,
        store: Store,
        worker: Worker,
        definitions: Mapping[str, JobDef],
        clock: Clock,
        log: EventLog,
        worker_tags: list[str] | None,
        instance_id: str | None,
    ) -> None:
        self.store = store
        self.worker = worker
        self.definitions = definitions
        self.clock = clock
        self.log = log
        self.worker_tags = worker_tags
        self.instance_id = instance_id
        self.settings = worker.settings
        self.stop_event = asyncio.Event()
        self._last_ok: dt.datetime | None = None
        self._last_sweep: dt.datetime | None = None

    async def register(self) -> str:
        now = self.clock.now()
        doc = new_worker_doc(now, self.worker_tags, self.instance_id, self.settings.concurrency)
        await self.store.register_worker(doc)
        self.worker.worker_id = doc["_id"]
        self._last_ok = now
        self.log.info(
            "worker_registered",
            worker_id=doc["_id"],
            instance_id=self.instance_id,
            tags=self.worker_tags,
        )
        return str(doc["_id"])

    async def unregister(self) -> None:
        await self.store.unregister_worker(self.worker.worker_id)
        self.log.info("worker_stopped", worker_id=self.worker.worker_id)

    async def loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                await self.tick()
            except PyMongoError as exc:
                self.log.warning(
                    "heartbeat_failed", worker_id=self.worker.worker_id, error=str(exc)
                )
            await sleep_or_wake(self.clock, self.stop_event, self.settings.heartbeat_interval)

    async def tick(self) -> None:
        now = self.clock.now()
        stale = self._last_ok is not None and is_dead(
            self._last_ok, now, self.settings.worker_timeout
        )
        alive = await self.store.beat(self.worker.worker_id, now)
        if not alive or stale:
            # Others may already have recovered our jobs: stop touching them, start afresh.
            why = "worker_document_missing" if not alive else "heartbeat_stale"
            self.log.error("worker_declared_dead", worker_id=self.worker.worker_id, reason=why)
            self.worker.abandon_all(why)
            if alive:
                await self.store.unregister_worker(self.worker.worker_id)
            await self.register()
        else:
            self._last_ok = now
        sweep_every = self.settings.worker_timeout / 2
        if self._last_sweep is None or (now - self._last_sweep).total_seconds() >= sweep_every:
            self._last_sweep = now
            await self.sweep(now)

    async def sweep(self, now: dt.datetime) -> int:
        """Recover running jobs of dead workers. Safe when many workers sweep at once: each job
        is recovered by a compare-and-set on its run id, so exactly one sweeper wins it."""
        cutoff = now - dt.timedelta(seconds=self.settings.worker_timeout)
        live: list[str] = []
        for w in await self.store.list_workers():
            if as_utc(w["last_seen"]) >= cutoff or w["_id"] == self.worker.worker_id:
                live.append(w["_id"])
            elif await self.store.delete_stale_worker(w["_id"], cutoff):
                self.log.warning(
                    "worker_declared_dead",
                    worker_id=w["_id"],
                    hostname=w.get("hostname"),
                    instance_id=w.get("instance_id"),
                    last_seen=w["last_seen"].isoformat(),
                    by=self.worker.worker_id,
                )
        recovered = 0
        for doc in await self.store.orphaned_jobs(live, cutoff):
            definition = self.definitions.get(doc["name"])
            status, error, extra = recovery_outcome(doc, definition, now)
            extra["history"] = with_history(doc, history_entry(doc, status, error, now))
            updated = await self.store.recover(doc, status, error, now, extra)
            if updated is None:
                continue  # another sweeper (or the owner) got there first
            recovered += 1
            self.log.warning(
                "job_recovered",
                job_id=str(doc["_id"]),
                job_name=doc["name"],
                worker_id=doc.get("worker_id"),
                status=updated["status"],
                by=self.worker.worker_id,
            )
            if updated["status"] in ("paused", "pending"):
                self.worker.wake.set()
            else:
                await call_exit_hook(definition, updated, self.log)
        return recovered
