from __future__ import annotations

import datetime as dt

from job_processor.wakeup import wakes_worker

WHEN = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def test_insert_of_a_pending_job_wakes_at_its_time() -> None:
    change = {
        "operationType": "insert",
        "fullDocument": {"status": "pending", "scheduled_for": WHEN},
    }
    assert wakes_worker(change) == (True, WHEN)
    skipped = {
        "operationType": "insert",
        "fullDocument": {"status": "skipped", "scheduled_for": WHEN},
    }
    assert wakes_worker(skipped)[0] is False


def test_undecodable_events_wake_conservatively() -> None:
    assert wakes_worker({"operationType": "insert", "fullDocument": "raw"}) == (True, None)
    assert wakes_worker({"operationType": "update", "updateDescription": None}) == (True, None)


def test_updates_wake_only_when_a_job_becomes_claimable() -> None:
    def upd(fields: dict[str, object]) -> dict[str, object]:
        return {"operationType": "update", "updateDescription": {"updatedFields": fields}}

    assert wakes_worker(upd({"status": "pending"}))[0] is True  # retry_job
    assert wakes_worker(upd({"status": "pending", "scheduled_for": WHEN})) == (True, WHEN)
    assert wakes_worker(upd({"status": "paused"}))[0] is True  # a recovered resumable job
    assert wakes_worker(upd({"status": "finished"}))[0] is False
    assert wakes_worker(upd({"state": {"i": 1}}))[0] is False  # a checkpoint
    assert wakes_worker({"operationType": "delete"})[0] is False


def test_an_operators_run_now_wakes_at_the_new_time() -> None:
    change = {
        "operationType": "update",
        "updateDescription": {"updatedFields": {"due_ms": 1, "scheduled_for": WHEN}},
    }
    assert wakes_worker(change) == (True, WHEN)
