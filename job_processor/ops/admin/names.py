"""The admin verbs on names and workers: the registry of definitions, pause and resume, the
worker documents."""

from __future__ import annotations

import datetime as dt
import json

from ...core import event_documents as E
from ...core.commands import command, option
from ...core.coverage import coverage, worker_alive
from ...core.errors import InvalidArgumentError, UnknownJobError
from ...core.lenient import mapping
from ...core.status import ACTIVE
from .base import AdminBase
from .results import ActionResult, DefinitionView, WorkerView

_ACTIVE = frozenset(s.value for s in ACTIVE)
#: A due time past every job's: the claimable jobs due at any time.
_EVER = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)


class NamesAdmin(AdminBase):
    async def list_workers(self) -> list[WorkerView]:
        """Every worker document: host, pid, INSTANCE_ID, tags, the names it claims, its running
        jobs, last heartbeat, alive. Dead ones are listed until a live worker's sweep removes
        them (and recovers their jobs)."""
        return await self._workers(self.clock.now())

    async def list_definitions(self) -> list[DefinitionView]:
        """Every job and cron name the workers registered, with the live workers serving it
        and whether it is paused."""
        now = self.clock.now()
        known = await self._known()
        live = [
            w for w in await self.storage.workers.all() if worker_alive(w, now, self.worker_timeout)
        ]
        paused = await self.storage.paused.names()
        cov = coverage(known, live, {}, paused, now)
        deliveries = await self._subscriber_jobs()
        out = []
        for name in sorted(known):
            doc = {k: v for k, v in known[name].items() if k != "_id"}
            schema = doc.get("payload_schema")
            if isinstance(schema, dict) and isinstance(schema.get("json"), str):
                try:
                    doc["payload_schema"] = json.loads(schema["json"])
                except ValueError:  # another program's text: read as no schema
                    doc["payload_schema"] = None
            view = self._readable(DefinitionView, doc | {"name": name, "_id": name}, "definitions")
            if view is None:
                continue
            view.served_by = cov.served_by.get(name, [])
            view.paused = name in paused
            view.delivery = view.kind == "job" and E.is_delivery(name, known[name], deliveries)
            out.append(view)
        return out

    async def pause(self, name: str, *, actor: str | None = None) -> ActionResult:
        """Workers stop claiming jobs of this name within about one heartbeat interval (jobs
        already running go on). Persisted until resume(). Action "name_paused"."""
        return await self._pause(name, actor, pause=True)

    async def resume(self, name: str, *, actor: str | None = None) -> ActionResult:
        """Undo pause(): workers claim the name again at their next heartbeat. Action
        "name_resumed"."""
        return await self._pause(name, actor, pause=False)

    async def forget(self, name: str, *, actor: str | None = None) -> ActionResult:
        """Remove a job name from the registry: one no worker defines any more (renamed or
        removed from the code, a worker variant run once), so that status and the overview
        stop warning about it and `names list` stops listing it. Refused while a live worker
        serves it (it registers it again), while jobs of it are active, and for a cron still
        scheduled (`JobProcessor.prune_crons` removes it first). Its ended jobs stay. Action
        "name_forgotten"."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("name must be a job name (see names list)")
        known = await self._known()
        if name not in known:
            raise UnknownJobError.unregistered(name, list(known))
        result = self._result("name_forgotten", actor)
        now = self.clock.now()
        live = [
            w for w in await self.storage.workers.all() if worker_alive(w, now, self.worker_timeout)
        ]
        serving = coverage(known, live, {}, [], now).served_by.get(name, [])
        # or defines it without claiming it (its worker_tags leave it out): it queues its jobs
        serving = serving or [str(w["_id"]) for w in live if name in mapping(w.get("definitions"))]
        counts = (await self._counts()).get(name, {})
        active = sum(n for s, n in counts.items() if s in _ACTIVE)
        # jobs another program inserted have no status before their first claim (scale.md),
        # queued all the same: the claim index holds them beside the pending and paused ones
        claimable = (await self.storage.job_admin.due_by_name([name], _EVER)).get(name, (0, 0))
        active += max(0, claimable[0] - counts.get("pending", 0) - counts.get("paused", 0))
        # and a bare insert, until a worker's sweep adopts it (never while none is up)
        active += await self.storage.jobs.count_bare(name)
        # its row is what tells every reader which fields of its jobs to hide
        hiding = sum(counts.values()) if known[name].get("sensitive_fields") else 0
        if known[name].get("kind") == "cron" and await self.storage.crons.docs([name]):
            result.skipped[name] = (
                f"a cron still scheduled: {command('crons remove', name)} (or "
                "processor.prune_crons() in a process that does not define it) removes it and "
                "its pending tasks; then forget it"
            )
        elif serving:
            result.skipped[name] = (
                f"served or defined by {len(serving)} live worker(s) ({', '.join(serving)}): "
                "stop them first, or they register it again"
            )
        elif active:
            result.skipped[name] = (
                f"{active} active job(s) of it: kill them or let them end first "
                f"(job-processor jobs list {option('--name', name)})"
            )
        elif hiding:
            result.skipped[name] = (
                f"{hiding} ended job(s) of it hold sensitive fields that only its registration "
                f"hides: forgotten, they would be shown in clear; purge them first "
                f"(job-processor jobs purge {option('--name', name)} --status S --older-than 1m, "
                "per status)"
            )
        elif await self.storage.definitions.forget(name, known[name].get("registered_by")):
            result.changed.append(name)
        elif row := await self.storage.definitions.get(name):
            result.skipped[name] = (
                f"registered again meanwhile by {row.get('registered_by')} (a worker that "
                "defines it started): stop it first, or it registers it again"
            )
        else:
            result.skipped[name] = "not registered (forgotten meanwhile)"
        await self._record(result, {"name": name})
        return result

    async def _spread(self, name: str) -> None:
        """Every worker document takes the name's state as `<prefix>paused` holds it, read
        after this action's write and read again after the workers' update (workers read it
        with their heartbeats): of a pause and a resume made at once, whichever updates the
        workers last sees the final state and leaves them with it."""
        for _ in range(5):
            paused = await self.storage.paused.is_paused(name)
            if paused:
                await self.storage.workers.pause_everywhere(name)
            else:
                await self.storage.workers.resume_everywhere(name)
            if await self.storage.paused.is_paused(name) == paused:
                return

    async def _pause(self, name: str, actor: str | None, *, pause: bool) -> ActionResult:
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("name must be a job or cron name")
        result = self._result("name_paused" if pause else "name_resumed", actor)
        if pause:
            # a registered name, or one jobs have (another program's too, with no status yet)
            await self._check_name(name)
        result.detail["name"] = name  # said in the record of an interrupted one too
        # an outage (or Ctrl-C) after the write, while the workers are told, leaves the
        # pause saved: what was done is recorded, with why, before the error goes on
        async with self._acting(result):
            if pause:
                changed = await self.storage.paused.pause(name, result.actor, result.at)
            else:
                changed = await self.storage.paused.resume(name)
            if changed:
                result.changed.append(name)
            else:
                result.skipped[name] = "already paused" if pause else "not paused"
            await self._spread(name)
        await self._record(result)
        return result
