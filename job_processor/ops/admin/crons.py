"""The admin verbs on crons: list them with their latest tasks, trigger one now, remove them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ...core.coverage import worker_alive
from ...core.errors import InvalidArgumentError
from ...core.lenient import texts
from ...core.masking import Masker
from ...core.schedule import local_time
from ...core.status import JobStatus
from ..status import task_row
from .base import SENSITIVE_UNREADABLE, AdminBase
from .inputs import limit_of
from .results import ActionResult, CronRun, CronView

S = JobStatus


class CronsAdmin(AdminBase):
    async def list_crons(self, recent: int = 10, masker: Masker | None = None) -> list[CronView]:
        """Every cron registered in the database: schedule, timezone, next slot (UTC and local),
        the latest `recent` tasks with their status, how many of them were missed slots, the
        running task ids, paused, the live workers serving it."""
        recent = limit_of(recent, "recent", 100)
        now = self.clock.now()
        live = [
            w for w in await self.storage.workers.all() if worker_alive(w, now, self.worker_timeout)
        ]
        paused = await self.storage.paused.names()
        running = await self.storage.jobs.running()
        paths, unreadable = await self._sensitive_paths()
        out = []
        for doc in sorted(await self.storage.crons.docs(), key=lambda d: str(d["_id"])):
            name = str(doc["_id"])
            tz = str(doc.get("timezone") or "UTC")
            next_slot = doc.get("next_slot")
            tasks = await self.storage.jobs.recent_tasks(name, recent)
            sensitive = [*self.sensitive_fields, *paths.get(name, [])]
            runs = [CronRun(**task_row(t, sensitive, masker)) for t in tasks]
            for run in runs if name in unreadable else ():  # what to hide is unknown: all
                run.error = SENSITIVE_UNREADABLE if run.error is not None else None
            view = self._readable(
                CronView,
                {
                    "_id": name,
                    "name": name,
                    "cron_string": str(doc.get("cron_string")),
                    "timezone": tz,
                    "tag": doc.get("tag"),
                    "concurrency": str(doc.get("concurrency") or "concurrent"),
                    "next_slot_utc": next_slot,
                    "next_slot_local": local_time(str(doc.get("cron_string")), tz, next_slot),
                    "recent": runs,
                    "missed_recent": sum(1 for r in runs if r.skip_reason == "missed"),
                    "running": [str(r["_id"]) for r in running if r["name"] == name],
                    "paused": name in paused,
                    "served_by": [str(w["_id"]) for w in live if runs_cron(w, name)],
                },
                "crons",
            )
            if view is not None:
                out.append(view)
        return out

    async def trigger_cron(self, name: str, *, actor: str | None = None) -> ActionResult:
        """Run a registered cron once now, outside its schedule (a task with trigger "manual",
        like JobProcessor.trigger_cron). Action "cron_triggered"."""
        result = await self._trigger(name, actor, "cron_triggered")
        await self._record(result, {"name": name})
        return result

    async def remove_crons(
        self, names: str | Sequence[str], *, actor: str | None = None
    ) -> ActionResult:
        """Remove crons from `<prefix>crons`, with their pending tasks: crons no live worker
        defines any more (renamed or removed from the code, tried in a scratch database), as
        `JobProcessor.prune_crons` does from Python; `names forget` then drops the name from
        the registry. Skipped: a name that is no stored cron, and one a live worker serves
        (it registers it again when it starts). Their ended tasks stay. Action
        "crons_removed"."""
        given: Any = names
        if isinstance(given, str):
            given = [given]
        elif isinstance(given, bytes | Mapping) or not isinstance(given, Iterable):
            raise InvalidArgumentError(
                f"names must be a cron name or a list of them (see crons list), got a "
                f"{type(given).__name__}"
            )
        items = list(given)
        if not items or not all(isinstance(n, str) and n for n in items):
            raise InvalidArgumentError("names must be cron names (see crons list)")
        wanted = list(dict.fromkeys(items))
        result = self._result("crons_removed", actor)
        stored = {str(d["_id"]) for d in await self.storage.crons.docs(wanted)}
        now = self.clock.now()
        live = [
            w for w in await self.storage.workers.all() if worker_alive(w, now, self.worker_timeout)
        ]
        async with self._acting(result):  # one removed before an outage is still recorded
            for name in wanted:
                serving = [str(w["_id"]) for w in live if serves_cron(w, name)]
                if name not in stored:
                    result.skipped[name] = "not a stored cron (see crons list)"
                elif serving:
                    result.skipped[name] = (
                        f"served by {len(serving)} live worker(s) ({', '.join(serving)}): stop "
                        "them first, or they register it again"
                    )
                else:
                    # its pending tasks first: an outage before the cron's own removal leaves
                    # it stored, so running this again finishes (the other way round, it was
                    # "not a stored cron" then, and its pending tasks stayed for ever)
                    await self.storage.jobs.delete_pending_tasks_of([name], self.clock.now())
                    if await self.storage.crons.remove([name]):
                        result.changed.append(name)
                    else:
                        result.skipped[name] = "removed meanwhile"
        await self._record(result, {"names": wanted})
        return result


def serves_cron(worker: dict[str, Any], name: str) -> bool:
    """Whether a worker document defines `name` as a cron (registers and fires it): its
    `crons`, or, for an older version's document without them, its names (a name a deploy
    turned from a cron into a job is not served as a cron)."""
    crons = worker.get("crons")
    return name in texts(crons if isinstance(crons, list) else worker.get("names"))


def runs_cron(worker: dict[str, Any], name: str) -> bool:
    """Whether a live worker runs the cron: it defines it as a cron, claims its tasks (its
    worker_tags include the cron's tag) and has not crashed (as `names list` and `status`)."""
    return (
        serves_cron(worker, name)
        and name in texts(worker.get("names"))
        and not worker.get("crashed")
    )
