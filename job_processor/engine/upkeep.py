"""The periodic upkeep of one process, beside the claim loop and the sweep.

- `Registry`, the worker side of the definitions registry: a worker records every JobDef and
  CronDef its process knows (not only the names it claims: a "main" job defined in every
  replica's code is then known even while no "main" worker is up) in `<prefix>definitions` when
  it registers and refreshes their `last_seen` every few minutes; the paused names it reads when
  it registers, then with each heartbeat (pause/resume keep them on every worker document), so
  that it stops claiming a paused name within about one `heartbeat_interval`; every few
  minutes it also reads `<prefix>paused` itself (a pause whose update of the worker documents
  failed). What the registry
  tells an operator is `core.coverage`.
- `Trimmer`, the bounded pass behind count retentions (`keep_finished=100`): see
  `core.retention` for the rules.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from ..core.definitions import JobDef
from ..core.log import EventLog
from ..core.retention import Retention, of
from ..storage import Storage
from ..storage.definitions import fingerprints


class Registry:
    def __init__(self, storage: Storage, definitions: Mapping[str, JobDef], log: EventLog) -> None:
        self.storage = storage
        self.definitions = definitions
        self.log = log
        self.paused: frozenset[str] = frozenset()
        self._refreshed: dt.datetime | None = None

    async def register(self, worker_id: str, now: dt.datetime) -> None:
        """One update_one per definition (at start and when the worker re-registers)."""
        await self.storage.definitions.register(self.definitions, worker_id, now)

    def fingerprints(self) -> dict[str, str]:
        """name -> the digest of its definition here (on the worker document)."""
        return fingerprints(self.definitions)

    async def refresh(self, now: dt.datetime) -> None:
        """One update_many: this process's definitions are still around."""
        await self.storage.definitions.seen(self.definitions, now)
        self._refreshed = now

    async def maybe_refresh(self, now: dt.datetime, every: float = 300.0) -> bool:
        """`refresh`, at most every `every` seconds (warnings look at the last 24 hours).
        Whether it ran."""
        if self._refreshed is None or (now - self._refreshed).total_seconds() >= every:
            await self.refresh(now)
            return True
        return False

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


class Trimmer:
    """The bounded pass behind count retentions: for each name this process defines with a
    count, delete (at most `batch` per name and pass) the ended jobs past the n most recent,
    never one whose on_job_exited is still owed. Run from the heartbeat every `every` seconds;
    several workers running it at once delete the same jobs, harmlessly."""

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

    async def maybe_run(self, now: dt.datetime) -> int:
        if self._last is not None and (now - self._last).total_seconds() < self.every:
            return 0
        self._last = now
        return await self.run(now)

    async def run(self, now: dt.datetime) -> int:
        deleted = 0
        before = now - self.default.floor  # none created within the floor
        for name, definition in self.definitions.items():
            keep = of(definition, self.default)
            for statuses, n in keep.counts() if keep else []:
                gone = await self.storage.jobs.trim(name, list(statuses), n, self.batch, before)
                if gone:
                    deleted += gone
                    self.log.info(
                        "jobs_trimmed", job_name=name, statuses=list(statuses), deleted=gone
                    )
        return deleted
