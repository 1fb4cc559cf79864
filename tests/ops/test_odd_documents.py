"""A worker, definition, cron, event or webhook document another program wrote with a field of
the wrong type (a null, a number, a text): the status report, the admin listings and a worker's
own passes read that field as its default, never failing as a whole (docs/operations.md)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from bson import ObjectId

from job_processor import AbortSignal, CronDef, Job, JobDef, Subscriber, init_job_processor
from job_processor.ops.admin import Admin
from tests.helpers import FAST, every_kind, other_worker, wait_status


async def quick(job: Job, signal: AbortSignal) -> str:
    return job.name


async def heard(*args: Any) -> None:
    return None


async def test_status_and_the_admin_listings_read_odd_fields_as_their_defaults(db: Any) -> None:
    processor, event, endpoint = await every_kind(db)
    now = dt.datetime.now(dt.UTC)
    await db["job_processor_workers"].insert_one(
        other_worker(now, names=None, definitions="x", running_jobs=None, stuck_threads=None)
    )
    odd = {"sensitive_fields": 1, "max_attempts": None, "tag": 7, "last_seen": "yesterday"}
    await db["job_processor_definitions"].update_one({"_id": "send"}, {"$set": odd})
    await db["job_processor_crons"].update_one(
        {"_id": "nightly"}, {"$set": {"next_slot": "soon", "tag": 7}}
    )
    await db["job_processor_events"].update_one(
        {"_id": ObjectId(event.id)},
        {"$set": {"name": None, "emitted_at": None, "payload": [1, 2], "targets": 3}},
    )
    await db["job_processor_webhooks"].update_one(
        {"_id": ObjectId(endpoint.id)},
        {"$set": {"format": None, "events": None, "consecutive_failures": "many"}},
    )

    status = await processor.get_status()
    other = next(w for w in status.workers if w.id == "other-1")
    assert other.alive and other.running_jobs == [] and other.stuck_threads == 0
    admin = await Admin.open(db)
    assert [w.stuck_threads for w in (await admin.status()).workers if w.id == "other-1"] == [0]
    (worker,) = [w for w in await admin.list_workers() if w.id == "other-1"]
    assert worker.names == [] and worker.definitions == {}  # read as the defaults
    send = next(d for d in await admin.list_definitions() if d.name == "send")
    assert (send.sensitive_fields, send.max_attempts, send.tag, send.last_seen) == (
        [],
        1,
        None,
        None,
    )
    (cron,) = await admin.list_crons()
    assert (cron.name, cron.next_slot_utc, cron.tag) == ("nightly", None, None)
    overview = await admin.overview()
    assert "send" in overview.counts
    (listed,) = await processor.list_events()
    assert (listed.id, listed.name, listed.targets) == (event.id, "?", [])
    assert listed.emitted_at == ObjectId(event.id).generation_time  # when it was stored
    shown = await processor.get_event(event.id)
    assert shown.payload == {"(not a document)": [1, 2]}  # as stored
    (hook,) = await processor.webhooks.list()
    assert (hook.id, hook.events, hook.format, hook.consecutive_failures) == (
        endpoint.id,
        [],
        "standard",
        0,
    )


async def test_a_worker_runs_beside_another_programs_odd_worker_and_endpoint_documents(
    db: Any, caplog: Any
) -> None:
    """A live worker's document with `definitions` and `names` that are no mapping and no
    list, and an endpoint whose `events` is no list: a worker that starts beside them runs its
    jobs, and an event nobody listens to is stored with its warning; each is read as empty,
    with a warning saying so."""
    now = dt.datetime.now(dt.UTC)
    await db["job_processor_workers"].insert_one(other_worker(now, names=3, definitions="x"))
    processor = await init_job_processor(
        db, jobs={"send": JobDef(handler=quick)}, logger=logging.getLogger("odd"), **FAST
    )
    endpoint = await processor.webhooks.add(url="https://crm.example.com/h", events=["a"])
    await db["job_processor_webhooks"].update_one(
        {"_id": ObjectId(endpoint.id)}, {"$set": {"events": 3}}
    )
    with caplog.at_level(logging.WARNING, logger="odd"):
        async with processor:
            job = await processor.schedule_job("send", {})
            assert (await wait_status(processor, job.id, "finished")).result == "send"
            stored = await processor.emit("nobody_listens", {})
            assert (await processor.get_event(stored.id)).name == "nobody_listens"
    text = caplog.text
    assert "worker_document_misread" in text and "other-1" in text
    assert "webhook_endpoint_misread" in text and endpoint.id in text


async def test_an_endpoint_whose_events_is_one_text_is_listed_as_emit_targets_it(db: Any) -> None:
    """`events` stored as one text: the listings read it as listening to nothing, yet emit's
    `$in` query matches a scalar, so the event was delivered to it (and the delivery failed
    on the sender's strict read). A lone text is now that one name, for both."""
    processor = await init_job_processor(db, jobs={}, **FAST)
    endpoint = await processor.webhooks.add(url="https://crm.example.com/h", events=["a"])
    await db["job_processor_webhooks"].update_one(
        {"_id": ObjectId(endpoint.id)}, {"$set": {"events": "order.created"}}
    )
    (listed,) = await processor.webhooks.list()
    event = await processor.emit("order.created", {"o": 1})
    targeted = any(t.endpoint_id == endpoint.id for t in event.targets)
    assert targeted and listed.events == ["order.created"], (targeted, listed.events)


async def card_job(db: Any) -> tuple[Any, Admin]:
    """A job of "send" (sensitive field "card") with a card number, its name registered, and
    an Admin to read it with."""
    processor = await init_job_processor(
        db, jobs={"send": JobDef(handler=quick, sensitive_fields=("card",))}, **FAST
    )
    async with processor:  # registers its definitions
        pass
    job = await processor.schedule_job("send", {"card": "4111-1111-1111-1111", "n": 1})
    return job, await Admin.open(db)


async def test_a_definition_whose_sensitive_fields_is_odd_still_hides_them(db: Any) -> None:
    """`sensitive_fields` stored as one path, not a list, was read as none (the card number
    shown in clear); one of another type hides the whole payload (fail closed)."""
    job, admin = await card_job(db)
    assert (await admin.get_job(job.id)).payload["card"] == "[redacted]"
    defs = db["job_processor_definitions"]
    await defs.update_one({"_id": "send"}, {"$set": {"sensitive_fields": "card"}})
    assert (await admin.get_job(job.id)).payload == {"card": "[redacted]", "n": 1}
    await defs.update_one({"_id": "send"}, {"$set": {"sensitive_fields": 7}})
    shown = (await admin.get_job(job.id)).payload
    assert "4111" not in str(shown) and "n" not in shown, shown


async def test_list_subscribers_reads_a_subscriber_row_with_odd_fields(db: Any) -> None:
    processor = await init_job_processor(
        db,
        jobs={"send": JobDef(handler=quick)},
        subscribers={"order_placed": [Subscriber("mail", handler=heard)]},
        **FAST,
    )
    async with processor:  # registers its subscribers
        pass
    await db["job_processor_subscribers"].update_one({}, {"$set": {"position": None, "tag": 7}})
    (row,) = await processor.list_subscribers()
    assert (row.event, row.subscriber, row.tag) == ("order_placed", "mail", None)


async def declines(job: Job, signal: AbortSignal) -> None:
    await job.checkpoint({"card": "4111-1111-1111-1111"})
    raise RuntimeError("card 4111-1111-1111-1111 declined")


async def test_crons_list_hides_a_task_error_when_sensitive_fields_is_unreadable(
    db: Any,
) -> None:
    """The job's own page hides every text of a job whose definition's sensitive_fields is
    stored unreadable (fail closed); `crons list` (and the dashboard's crons page) showed the
    same task's error in clear."""
    from job_processor.core.status import JobStatus

    processor = await init_job_processor(
        db,
        crons={
            "nightly": CronDef(
                cron_string="0 3 * * *",
                handler=declines,
                sensitive_fields=("card",),
                max_attempts=1,
            )
        },
        **FAST,
    )
    async with processor:
        task = await processor.trigger_cron("nightly")
        await wait_status(processor, task.id, JobStatus.ERRORED)
    admin = await Admin.open(db)
    (view,) = await admin.list_crons()
    assert "4111" not in str(view.recent[0].error), view.recent[0].error  # masked: a list
    await db["job_processor_definitions"].update_one(
        {"_id": "nightly"}, {"$set": {"sensitive_fields": 7}}
    )
    page = await admin.get_job(task.id)
    assert "4111" not in str(page.output), page.output  # the job's page: hidden whole
    (view,) = await admin.list_crons()
    assert "4111" not in str(view.recent[0].error), view.recent[0].error


@pytest.mark.parametrize("stored", [[7], [["card"]], [{"path": "card"}], [None]])
async def test_sensitive_fields_listing_no_text_fails_closed_too(db: Any, stored: Any) -> None:
    """A list whose items are no texts is as unreadable as `7`, yet it was read as 'nothing
    sensitive': the card number shown in clear."""
    job, admin = await card_job(db)
    await db["job_processor_definitions"].update_one(
        {"_id": "send"}, {"$set": {"sensitive_fields": stored}}
    )
    shown = (await admin.get_job(job.id)).payload
    assert "4111" not in str(shown), shown


async def test_names_and_events_stored_as_one_text_are_not_warned_as_read_empty(
    db: Any, caplog: Any
) -> None:
    """A worker's `names` and an endpoint's `events` stored as one text are read as that one
    name, so the warnings saying they were 'read as empty' / 'read as none' were false."""
    now = dt.datetime.now(dt.UTC)
    await db["job_processor_workers"].insert_one(other_worker(now, names="send"))
    processor = await init_job_processor(
        db, jobs={"send": JobDef(handler=quick)}, logger=logging.getLogger("odd"), **FAST
    )
    endpoint = await processor.webhooks.add(url="https://crm.example.com/h", events=["a"])
    await db["job_processor_webhooks"].update_one(
        {"_id": ObjectId(endpoint.id)}, {"$set": {"events": "a"}}
    )
    with caplog.at_level(logging.WARNING, logger="odd"):
        async with processor:
            event = await processor.emit("a", {})
            await processor.emit("nobody_listens", {})
    assert any(t.endpoint_id == endpoint.id for t in event.targets)  # read as "a"
    misread = [r.getMessage() for r in caplog.records if "misread" in r.getMessage()]
    assert not misread, misread
