"""Which targets of an event show a row without a job, and in which state (`without_jobs`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from job_processor.core.models import Delivery, Event, Target
from job_processor.events.queries import without_jobs

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def target(name: str, mode: str | None = "async") -> Target:
    return Target(kind="subscriber", target=name, mode=mode, job_name=f"event:x:{name}")  # type: ignore[arg-type]


def event(*targets: Target, fanout: str = "done") -> Event:
    return Event(
        id="e1",
        name="x",
        payload={},
        emitted_at=T0,
        targets=list(targets),
        fanout=fanout,  # type: ignore[arg-type]
    )


def delivered(name: str, status: str, **fields: Any) -> Delivery:
    return Delivery(
        job_id=f"j-{name}", event_id="e1", target=name, kind="subscriber", status=status, **fields
    )


def rows(e: Event, deliveries: list[Delivery]) -> dict[str, str]:
    return {d.target: d.status for d in without_jobs(e, deliveries)}


def test_a_serial_subscriber_waits_while_the_one_before_runs_or_its_hook_is_owed() -> None:
    e = event(target("a", "serial"), target("b", "serial"), target("c", "serial"))
    assert rows(e, [delivered("a", "running")]) == {"b": "waiting", "c": "waiting"}
    finished = delivered("a", "finished", exit_hook="owed")  # the hook creates b
    assert rows(e, [finished]) == {"b": "waiting", "c": "waiting"}
    assert rows(e, [finished, delivered("b", "pending")]) == {"c": "waiting"}
    for ended in ("errored", "killed"):  # the hook records the rest as skipped
        stopped = delivered("a", ended, exit_hook="owed")
        assert rows(e, [stopped]) == {"b": "waiting", "c": "waiting"}


def test_a_delivery_removed_by_retention_shows_as_deleted_not_waiting() -> None:
    e = event(target("fast"), target("a", "serial"), target("b", "serial"))
    # a day later the finished deliveries are gone (keep_finished), the event is kept
    assert rows(e, []) == {"fast": "deleted", "a": "deleted", "b": "deleted"}
    assert rows(e, [delivered("a", "errored", exit_hook="done")]) == {
        "fast": "deleted",
        "b": "deleted",  # its skipped row was written, then removed
    }
    # a finished one whose hook ran created the next: missing now means removed
    assert rows(e, [delivered("a", "finished", exit_hook="done")]) == {
        "fast": "deleted",
        "b": "deleted",
    }


def test_every_target_waits_while_the_fanout_is_owed() -> None:
    e = event(target("fast"), target("a", "serial"), fanout="owed")
    assert rows(e, []) == {"fast": "waiting", "a": "waiting"}


def test_replays_do_not_stand_for_the_events_own_deliveries() -> None:
    e = event(target("fast"))
    assert rows(e, [delivered("fast", "finished", replay_id="r1")]) == {"fast": "deleted"}
    assert rows(e, [delivered("fast", "finished")]) == {}
