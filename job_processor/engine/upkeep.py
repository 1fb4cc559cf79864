"""The periodic upkeep of one process, beside the claim loop and the sweep.

- `Registry`, the worker side of the definitions registry: a worker records every JobDef and
  CronDef its process knows (not only the names it claims: a "main" job defined in every
  replica's code is then known even while no "main" worker is up) in `<prefix>definitions` when
  it registers and refreshes their `last_seen` every few minutes, writing its definition again
  over a row whose writer is no longer live (see `refresh`); at start it warns about names a
  live worker defines differently (`job_defined_differently`), and about its crons' zones whose
  rules a live worker reads differently (`cron_zone_rules_differed`, `engine.zone_rules`); the
  paused names it reads when it registers, then with each heartbeat (pause/resume keep them on
  every worker document), so that it stops claiming a paused name within about one
  `heartbeat_interval`; every few minutes it also reads `<prefix>paused` itself (a pause whose
  update of the worker documents failed), and at every heartbeat while a worker of an older
  version is live (`older`: its document has no `definitions`; its version's pause and resume
  write only `<prefix>paused`, which it read at every heartbeat). What the registry
  tells an operator is `core.coverage`.
- `Trimmer`, the bounded pass behind count retentions (`keep_finished=100`): see
  `core.retention` for the rules.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ..core.coverage import (
    DEFAULT_WORKER_TIMEOUT,
    defined_differently,
    misread,
    registrar,
    worker_alive,
    zone_rules_differ,
)
from ..core.definitions import CronDef, JobDef
from ..core.documents import Doc
from ..core.limits import check_limits
from ..core.log import EventLog
from ..core.retention import Retention, of
from ..storage import Storage
from ..storage.definitions import fingerprints
from .zone_rules import zone_rules


class Registry:
    def __init__(
        self,
        storage: Storage,
        definitions: Mapping[str, JobDef],
        log: EventLog,
        worker_timeout: float = DEFAULT_WORKER_TIMEOUT,
    ) -> None:
        self.storage = storage
        self.definitions = definitions
        self.log = log
        self.worker_timeout = worker_timeout
        self.paused: frozenset[str] = frozenset()
        self._refreshed: dt.datetime | None = None
        self._left: dict[str, str | None] = {}
        """name -> the gone writer of its row, left to another live worker at the last refresh."""
        self._live: frozenset[str] | None = None
        """The live workers' ids at the last sweep (one that left triggers a refresh)."""
        self.older: frozenset[str] = frozenset()
        """The live workers of an older version (no `definitions` on their document): their
        version's pause and resume reach no worker document, only `<prefix>paused`, so while
        one is live the heartbeat reads that too (`Heartbeat.check_paused`)."""

    async def register(self, worker_id: str, now: dt.datetime) -> None:
        """One update_one per definition (at start and when the worker re-registers), and one
        per static limit they declare (the capacity status pages show)."""
        await self.storage.definitions.register(self.definitions, worker_id, now)
        await self.storage.limits.describe(check_limits(self.definitions).values())

    def cron_names(self) -> list[str]:
        """The names this process defines as crons (on the worker document)."""
        return sorted(n for n, d in self.definitions.items() if isinstance(d, CronDef))

    def zone_rules(self) -> list[list[str]]:
        """[zone, digest of its rules, where they were read] per zone of this process's crons
        (on the worker document: `engine.zone_rules`)."""
        return zone_rules(d.timezone for d in self.definitions.values() if isinstance(d, CronDef))

    def fingerprints(self) -> dict[str, str]:
        """name -> the digest of its definition here (on the worker document)."""
        return fingerprints(self.definitions)

    def started(self, worker_id: str, live: list[Doc] | None) -> None:
        """At start, with the live workers' documents the first sweep read (their digests
        among them): one `job_defined_differently` warning per name that another live worker
        defines differently (each worker runs the jobs it claims with its own definition, so
        some of them fail here or there); one `cron_zone_rules_differed` per zone of this
        process's crons whose rules a live worker reads differently."""
        if live is None:
            return
        self._live = frozenset(str(w["_id"]) for w in live)
        self.older = older_workers(live)
        for w in live:
            if odd := misread(w):
                self.log.warning(
                    "worker_document_misread",
                    other_worker=str(w["_id"]),
                    fields=odd,
                    hint="another program wrote them with a wrong type: read as empty",
                )
        for name, others in defined_differently(self.fingerprints(), worker_id, live).items():
            self.log.warning(
                "job_defined_differently",
                job_name=name,
                worker_id=worker_id,
                other_workers=others,
                hint="rename one, or finish the deploy",
            )
        mine = self.zone_rules()
        crons: dict[str, list[str]] = {}
        for n, d in sorted(self.definitions.items()):
            if isinstance(d, CronDef):
                crons.setdefault(d.timezone, []).append(n)
        for zone, (others, names) in zone_rules_differ(mine, crons, worker_id, live).items():
            self.log.warning(
                "cron_zone_rules_differed",
                timezone=zone,
                cron_names=names,
                worker_id=worker_id,
                tz_source=next(row[2] for row in mine if row[0] == zone),
                other_workers=others,
                hint="these replicas place some of the zone's slots at different instants: one "
                "may run twice or be skipped; give every replica the same rules (the same base "
                "image, or PYTHONTZPATH= and one pinned tzdata package)",
            )

    async def refresh(
        self, now: dt.datetime, live: list[Doc] | None = None, worker_id: str = ""
    ) -> None:
        """One update_many: this process's definitions are still around. Given the live
        workers the sweep read, it refreshes only the rows a live worker wrote; when that
        matches fewer rows than this process has names, the rows written by a worker no longer
        live are written again by the live worker that defines the name and started last
        (`core.coverage.registrar`; the registry then shows what the last worker to start
        wrote, as it does after each start), this one if that is it (`_restore`)."""
        if live is None or not worker_id:
            await self.storage.definitions.seen(self.definitions, now)
            return
        ids = {str(w["_id"]) for w in live} | {worker_id}
        if await self.storage.definitions.seen(self.definitions, now, ids) < len(self.definitions):
            await self._restore(now, ids, worker_id)

    async def _restore(self, now: dt.datetime, live: set[str], worker_id: str) -> None:
        stale = await self.storage.definitions.stale(self.definitions, live)
        if not stale:  # names forgotten (no row): a worker writes them again when it starts
            return
        # read after the rows: a worker that wrote one since the sweep's read is listed here
        workers = [
            w
            for w in await self.storage.workers.liveness(definitions=True)
            if worker_alive(w, now, self.worker_timeout) or w["_id"] == worker_id
        ]
        mine = [w for w in workers if w["_id"] == worker_id]
        if not mine:  # this worker was declared dead: its heartbeat registers it afresh
            return
        mine[0]["names"] = list(self.definitions)  # it defines them all, claimed or not
        alive = {str(w["_id"]) for w in workers}
        left: list[str] = []
        before, self._left = self._left, {}
        for name, was in sorted(stale.items()):
            if was in alive:  # a worker that started since the sweep's read wrote it
                continue
            # the live worker that should write it does so; if it did not by this worker's next
            # refresh (it runs a version that does not), this one writes it
            if registrar(name, workers) != worker_id and (
                name not in before or before[name] != was
            ):
                self._left[name] = was
                left.append(name)
                continue
            if await self.storage.definitions.reassert(
                name, self.definitions[name], worker_id, was, now
            ):
                self.log.info(
                    "definition_restored", job_name=name, worker_id=worker_id, replaced=was
                )
        if left:  # still served here
            await self.storage.definitions.seen(left, now)

    async def maybe_refresh(
        self,
        now: dt.datetime,
        every: float = 300.0,
        live: list[Doc] | None = None,
        worker_id: str = "",
    ) -> bool:
        """`refresh`, at most every `every` seconds (warnings look at the last 24 hours), and
        also at a sweep that finds a worker gone since the last one (`live`: the sweep's live
        workers), so that a row it wrote is written again within one sweep of it leaving; and
        the capacity of this process's static limits. Whether the periodic refresh ran."""
        ids = frozenset(str(w["_id"]) for w in live) if live is not None else None
        departed = ids is not None and self._live is not None and bool(self._live - ids)
        if ids is not None:
            if self._live is None or ids - self._live:  # a worker started: which version?
                self.older = older_workers(await self.storage.workers.liveness(True)) & ids
            else:
                self.older &= ids
            self._live = ids
        periodic = self._refreshed is None or (now - self._refreshed).total_seconds() >= every
        if periodic or departed:
            await self.refresh(now, live, worker_id)
            # the static limits' capacity again: a gone replica of another release, taking a
            # slot after this one started, wrote its own back (status showed it till next use)
            await self.storage.limits.describe(check_limits(self.definitions).values())
        if periodic:
            self._refreshed = now
        return periodic

    async def paused_names(self) -> set[str]:
        """One query: every paused name (the collection pause/resume write first)."""
        return set(await self.storage.paused.names())

    def note_paused(self, paused: frozenset[str], worker_id: str) -> frozenset[str]:
        """The paused names this worker now leaves out of its claims; logs when they change."""
        if paused != self.paused:
            self.log.info(
                "paused_names_changed",
                worker_id=worker_id,
                paused=sorted(paused),
                claimed_paused=sorted(paused & set(self.definitions)),
            )
        self.paused = paused
        return paused


def older_workers(docs: list[Doc]) -> frozenset[str]:
    """The ids of the workers whose document (read with its definitions) was written by an
    older version: it has no `definitions` (nor keeps the paused names)."""
    return frozenset(str(w["_id"]) for w in docs if "definitions" not in w)


class Trimmer:
    """The bounded pass behind count retentions: for each name this process defines with a
    count, delete (at most `batch` per name and pass) the ended jobs past the n most recently
    created, never one whose on_job_exited is still owed. Run after the sweep every `every` seconds,
    and at the next sweep again while a pass found a whole batch of some name past its count
    (a name that ends more than `batch` jobs in `every` seconds would otherwise grow without
    bound: 1000
    per 5 minutes is 3.3 jobs a second); several workers running it at once delete the same
    jobs, harmlessly."""

    def __init__(
        self,
        storage: Storage,
        definitions: Mapping[str, JobDef],
        default: Retention,
        log: EventLog,
        every: float = 300.0,
        batch: int = 1000,
    ) -> None:
        self.storage = storage
        self.definitions = definitions
        self.default = default
        self.log = log
        self.every = every
        self.batch = batch
        self._last: dt.datetime | None = None
        self._resume: dict[Any, dt.datetime] = {}
        """Where a pass that read its cap of jobs kept (ended within the floor) stopped, by
        name and statuses: the next pass goes on from there."""
        self.behind = False
        """The last pass found a whole batch of some name past its count: more may be left."""

    async def maybe_run(self, now: dt.datetime) -> int:
        if (
            self._last is not None
            and not self.behind
            and (now - self._last).total_seconds() < self.every
        ):
            return 0
        self._last = now
        return await self.run(now)

    async def run(self, now: dt.datetime) -> int:
        deleted = 0
        self.behind = False
        before = now - self.default.floor  # none created within the floor
        for name, definition in self.definitions.items():
            keep = of(definition, self.default)
            for statuses, n in keep.counts() if keep else []:
                gone, full = await self.storage.jobs.trim(
                    name, list(statuses), n, self.batch, before, self._resume
                )
                if full:  # the read found a whole batch past the count: more may be left
                    self.behind = True
                if gone:
                    deleted += gone
                    self.log.info(
                        "jobs_trimmed", job_name=name, statuses=list(statuses), deleted=gone
                    )
        return deleted
