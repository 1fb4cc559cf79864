"""The admin verbs on crons: list them with their latest tasks, trigger one now."""

from __future__ import annotations

from ...core.coverage import worker_alive
from ...core.masking import Masker, task_error
from ...core.schedule import local_time, task_slot
from ...core.status import JobStatus
from .base import AdminBase
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
        paths = {
            str(d["_id"]): [str(x) for x in d.get("sensitive_fields") or []]
            for d in await self.storage.definitions.all()
        }
        out = []
        for doc in sorted(await self.storage.crons.docs(), key=lambda d: str(d["_id"])):
            name = str(doc["_id"])
            tz = str(doc.get("timezone") or "UTC")
            next_slot = doc.get("next_slot")
            tasks = await self.storage.jobs.recent_tasks(name, recent)
            runs = [
                CronRun(
                    id=str(t["_id"]),
                    slot=task_slot(t),
                    trigger=t.get("trigger"),
                    status=S(t["status"]),
                    skip_reason=t.get("skip_reason"),
                    error=task_error(t, [*self.sensitive_fields, *paths.get(name, [])], masker),
                    ended_at=t.get("ended_at"),
                )
                for t in tasks
            ]
            out.append(
                CronView(
                    name=name,
                    cron_string=str(doc.get("cron_string")),
                    timezone=tz,
                    tag=doc.get("tag"),
                    concurrency=str(doc.get("concurrency") or "concurrent"),
                    next_slot_utc=next_slot,
                    next_slot_local=local_time(str(doc.get("cron_string")), tz, next_slot),
                    recent=runs,
                    missed_recent=sum(1 for r in runs if r.skip_reason == "missed"),
                    running=[str(r["_id"]) for r in running if r["name"] == name],
                    paused=name in paused,
                    served_by=[str(w["_id"]) for w in live if name in (w.get("names") or [])],
                )
            )
        return out

    async def trigger_cron(self, name: str, *, actor: str | None = None) -> ActionResult:
        """Run a registered cron once now, outside its schedule (a task with trigger "manual",
        like JobProcessor.trigger_cron). Action "cron_triggered"."""
        result = await self._trigger(name, actor, "cron_triggered")
        await self._record(result, {"name": name})
        return result
