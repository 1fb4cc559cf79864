"""What one job costs on the wire: a lean insert, a claim that returns only what the worker
does not know, a final write that returns nothing; and documents of the older, complete shape
still run."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from pymongo import AsyncMongoClient, monitoring

from job_processor import AbortSignal, Job, JobDef, init_job_processor
from tests.helpers import FAST, make, wait_status


class Recorder(monitoring.CommandListener):
    """Commands on the jobs collection, with their replies."""

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []
        self.replies: dict[int, dict[str, Any]] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = str(event.command.get(event.command_name, ""))
        if target.endswith("jobs"):
            self.commands.append(
                {"name": event.command_name, "id": event.request_id}
                | {"command": dict(event.command)}
            )

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self.replies[event.request_id] = dict(event.reply)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def named(self, name: str) -> list[dict[str, Any]]:
        return [c for c in self.commands if c["name"] == name]


async def echo(job: Job, signal: AbortSignal) -> Any:
    return job.payload.get("n")


async def test_one_job_is_an_insert_a_projected_claim_and_a_final_update(
    mongo_url: str, db: Any
) -> None:
    recorder = Recorder()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[recorder]
    )
    try:
        processor = await init_job_processor(
            client[db.name], jobs={"echo": JobDef(handler=echo)}, **FAST
        )
        async with processor:
            job = await processor.schedule_job("echo", {"n": 7})
            done = await wait_status(processor, job.id, "finished", timeout=10)
    finally:
        await client.close()
    assert done.result == 7 and done.attempt == 1 and done.history[-1]["status"] == "finished"

    (insert,) = recorder.named("insert")
    inserted = insert["command"]["documents"][0]
    assert None not in inserted.values(), "an insert writes no field that holds its default"
    assert "history" not in inserted and "output" not in inserted

    claims = [
        c for c in recorder.named("findAndModify") if recorder.replies.get(c["id"], {}).get("value")
    ]
    assert len(claims) == 1
    claim = claims[0]
    assert set(claim["command"]["fields"]) == {"status", "logs"}
    assert not claim["command"].get("new"), "the claim returns the job as it was: no `new`"
    returned = recorder.replies[claim["id"]]["value"]
    assert returned["payload"] == {"n": 7}
    assert not {"status", "worker_id", "run_id", "run_started_at"} & set(returned)
    assert returned["claim_name"] == "echo"  # a job named other than its claim name is errored
    assert len(claim["command"]["update"]["$set"]["run_id"]) < 24, "a short run id"
    assert "maxTimeMS" not in claim["command"], "no driver bound on PyMongo (Motor's only)"

    finals = [
        u
        for c in recorder.named("update")
        for u in c["command"]["updates"]
        if u["u"].get("$set", {}).get("status") == "finished"
    ]
    assert len(finals) == 1, "the final write is one update; no document comes back"
    final = finals[0]["u"]
    assert "history" not in final.get("$set", {}), "a run that ends the job adds no history entry"


async def test_a_document_of_the_older_complete_shape_still_runs(db: Any) -> None:
    """Documents written before jobs were lean (every field present, defaults as null) are read
    and run the same."""
    processor = await make(db, {"echo": JobDef(handler=echo)})
    now = dt.datetime.now(dt.UTC)
    old: dict[str, Any] = {
        "_id": ObjectId(),
        "name": "echo",
        "type": "simple",
        "status": "pending",
        "claim_name": "echo",
        "payload": {"n": 3},
        "priority": 0,
        "tag": None,
        "scheduled_for": now,
        "due_ms": int(now.timestamp() * 1000),
        "created_at": now,
        "updated_at": now,
        "started_at": None,
        "run_started_at": None,
        "ended_at": None,
        "worker_id": None,
        "run_id": None,
        "end_id": "",
        "attempt": 0,
        "state": None,
        "output": None,
        "kill_requested_at": None,
        "skip_reason": None,
        "conflicting_job_id": None,
        "key": None,
        "max_attempts": 1,
        "resumable": False,
        "limit_key": None,
        "failures": 0,
        "history": [],
        "exit_hook": None,
        "exit_hook_id": None,
        "exit_hook_owner": None,
        "exit_hook_at": None,
        "exit_hook_error": None,
    }
    await processor.storage.jobs.coll.insert_one(old)
    before = await processor.get_job(str(old["_id"]))
    assert before is not None and before.status == "pending" and before.history == []
    async with processor:
        done = await wait_status(processor, str(old["_id"]), "finished", timeout=10)
    assert done.result == 3 and done.error is None and done.attempt == 1
    assert done.started_at is not None and done.failures == 0
    assert [run["status"] for run in done.history] == ["finished"]
