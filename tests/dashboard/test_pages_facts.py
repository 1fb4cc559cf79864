"""What the dashboard's pages say about a job, a name and an event, over HTTP: a user's own job
is not taken for a delivery, the names page counts jobs waiting on others, a replay to an
endpoint added since shows that endpoint's host."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any

import pytest

from job_processor import (
    AbortSignal,
    Event,
    Job,
    JobDef,
    JobStatus,
    Subscriber,
    init_job_processor,
)
from job_processor.core.definitions import Limit
from job_processor.core.limits import created
from job_processor.dashboard import create_dashboard
from job_processor.events.webhooks import generate_secret
from tests.helpers import FAST, wait_status

from .test_events_http import rows, text
from .test_http import AUTH, client


async def noop(job: Job, signal: AbortSignal) -> None:
    return None


async def on_shipped(event: Event, signal: AbortSignal) -> None:
    return None


async def test_a_jobs_payload_with_event_id_and_target_fields_does_not_make_it_a_delivery(
    db: Any,
) -> None:
    p = await init_job_processor(
        db,
        jobs={"sync-order": JobDef(handler=noop)},
        subscribers={"shipped": [Subscriber("mail", handler=on_shipped)]},
    )
    own = await p.schedule_job("sync-order", {"event_id": "evt_123", "target": "crm"})
    event = await p.emit("shipped", {"order": 1})
    [delivery] = event.deliveries
    async with client(create_dashboard(p, auth=AUTH)) as c:
        page = (await c.get(f"/jobs/{own.id}")).text
        assert "/events/" not in page and "delivery to" not in page
        page = (await c.get(f"/jobs/{delivery.job_id}")).text
        assert f'href="/events/{event.id}"' in page and "delivery to mail" in page


async def test_the_names_page_counts_the_jobs_waiting_on_others(db: Any) -> None:
    release = asyncio.Event()

    async def hold(job: Job, signal: AbortSignal) -> None:
        await release.wait()

    p = await init_job_processor(
        db, jobs={"first": JobDef(handler=hold), "then": JobDef(handler=noop)}, poll_interval=0.2
    )
    async with p:  # a started worker registers the names
        try:
            first = await p.schedule_job("first", {})
            for i in range(3):
                await p.schedule_job("then", {"i": i}, after=[first.id])  # status "waiting"
            async with client(create_dashboard(p, auth=AUTH)) as c:
                names = (await c.get("/names")).text
            row = re.search(
                r'<tr>\s*<td><a class="name" href="/jobs\?name=then">.*?</tr>', names, re.S
            )
            assert row is not None and "· 3 waiting" in row.group(0)
        finally:
            release.set()


async def test_a_replay_to_an_endpoint_added_after_the_event_shows_its_host(db: Any) -> None:
    p = await init_job_processor(  # not started: deliveries stay pending
        db,
        jobs={"n": JobDef(handler=noop)},
        subscribers={"shipped": [Subscriber("mail", handler=on_shipped)]},
        webhook_secrets={"crm": generate_secret()},
    )
    event = await p.emit("shipped", {"order": 1})
    hook = await p.webhooks.add(
        url="https://crm.example.com/hooks/x?token=abc",
        events=["shipped"],
        secret_ref="crm",
        description="CRM",
    )
    await p.replay_event(event.id)
    async with client(create_dashboard(p, auth=AUTH)) as c:
        page = (await c.get(f"/events/{event.id}")).text
    row = re.search(rf'<tr [^>]*data-target="webhook:{hook.id}">.*?</tr>', page, re.S)
    assert row is not None
    assert "crm.example.com · CRM" in row.group(0) and "token=abc" not in page


async def test_an_event_page_lists_its_first_deliveries_and_counts_them_all(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event replayed 150 times to 10 subscribers made a 1.9 MB page, refreshed every 3 s:
    the page lists the first DELIVERIES_SHOWN and says how many there are."""
    from job_processor.dashboard import events as dashboard_events

    monkeypatch.setattr(dashboard_events, "DELIVERIES_SHOWN", 3)
    p = await init_job_processor(  # not started: deliveries stay pending
        db,
        jobs={"n": JobDef(handler=noop)},
        subscribers={"shipped": [Subscriber("mail", handler=on_shipped)]},
    )
    event = await p.emit("shipped", {"order": 1})
    for _ in range(4):
        await p.replay_event(event.id)
    async with client(create_dashboard(p, auth=AUTH)) as c:
        page = (await c.get(f"/events/{event.id}")).text
    assert len(re.findall(r"<tr [^>]*data-target=", page)) == 3
    assert "The first 3 of 5 deliveries" in page and "5 pending" in page


async def test_an_event_page_reads_only_the_deliveries_it_shows(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each refresh read every delivery of the event (1,500 for one replayed 150 times to 10
    subscribers); it reads the first DELIVERIES_SHOWN, the fan-out's own ones (one per target),
    and counts the rest on the server. An own delivery created after the replays (a serial
    subscriber's turn comes later) is still known, not shown as a missing one."""
    from job_processor.dashboard import events as dashboard_events
    from job_processor.storage.events import DeliveryStore

    monkeypatch.setattr(dashboard_events, "DELIVERIES_SHOWN", 3)
    read: list[int] = []
    for name in ("for_event", "own_for_event"):
        real = getattr(DeliveryStore, name)

        async def spy(self: Any, *args: Any, _real: Any = real) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = await _real(self, *args)
            read.append(len(found))
            return found

        monkeypatch.setattr(DeliveryStore, name, spy)
    p = await init_job_processor(  # not started: deliveries stay pending
        db,
        jobs={"n": JobDef(handler=noop)},
        subscribers={"shipped": [Subscriber("mail", handler=on_shipped)]},
    )
    event = await p.emit("shipped", {"order": 1})
    for _ in range(5):
        await p.replay_event(event.id)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    own = {"event_id": event.id, "payload.replay_id": None}
    assert (
        await p.storage.jobs.coll.update_many(own, {"$set": {"created_at": later}})
    ).modified_count == 1
    async with client(create_dashboard(p, auth=AUTH)) as c:
        page = (await c.get(f"/events/{event.id}")).text
    assert "The first 3 of 6 deliveries" in page and "6 pending" in page
    assert "deleted" not in page and "waiting" not in page
    assert read == [3, 1]


async def test_the_folded_row_of_a_per_tenant_limit_states_the_per_key_limit(db: Any) -> None:
    """The folded row said "across <built-in method keys of dict ...> quieter keys, each at most
    10" for five keys of at most 2: the count, and each key's own capacity."""
    release = asyncio.Event()

    async def held(job: Job, signal: AbortSignal) -> None:
        await release.wait()

    per_tenant = Limit(key="tenant:{t}", concurrency=2, rate=3, per_seconds=60)
    p = await init_job_processor(
        db, jobs={"sync": JobDef(handler=held, limit=per_tenant)}, **FAST, concurrency=30
    )
    async with p:
        ids = [(await p.schedule_job("sync", {"t": f"t{i}"})).id for i in range(25)]
        for job_id in ids:
            await wait_status(p, job_id, JobStatus.RUNNING)
        async with client(create_dashboard(p, auth=AUTH)) as c:
            page = (await c.get("/")).text
        release.set()
    folded = [text(r) for r in rows(page, "limits") if "(other keys)" in r]
    assert len(folded) == 1
    # 20 busiest keys are shown one by one, the other 5 keys (1 running each) are folded.
    # Each of those keys allows at most 2 runs and 3 starts per minute: the page must say so.
    assert "across 5 quieter keys, each at most 2" in folded[0], folded[0]
    assert "each key at most 3 per minute" in folded[0], folded[0]


async def test_the_folded_row_of_keys_with_different_settings_says_their_sum(db: Any) -> None:
    """After a deploy that changed a per-tenant limit (2 per key, 3 per minute, then 4 per key,
    10 per second), the folded row said "each at most" the first key's settings times the
    count divided back: its capacity is the sum, and no one rate window holds."""
    old = Limit(key="tenant:{t}", concurrency=2, rate=3, per_seconds=60)
    new = Limit(key="tenant:{t}", concurrency=4, rate=10, per_seconds=1)
    p = await init_job_processor(db, jobs={"sync": JobDef(handler=noop, limit=new)}, **FAST)
    now = p.clock.now()
    docs = [
        created(new.key_for({"t": f"busy{i:02d}"}), new, ["r1", "r2"], "w", now, new.key)
        for i in range(20)
    ]
    docs += [created(old.key_for({"t": "a-old"}), old, ["r"], "w", now, old.key)]
    docs += [created(new.key_for({"t": "b-new"}), new, ["r"], "w", now, new.key)]
    await db["job_processor_limits"].insert_many(docs)
    async with client(create_dashboard(p, auth=AUTH)) as c:
        page = (await c.get("/")).text
    [folded] = [text(r) for r in rows(page, "limits") if "(other keys)" in r]
    assert "across 2 quieter keys, at most 6 in all (their limits differ)" in folded, folded
    assert "2 starts, each in its key's window" in folded, folded
    assert "each at most" not in folded and "no rate limit" not in folded, folded


async def with_a_subscriber(db: Any) -> Any:
    """A processor with one job name and one subscriber (whose deliveries are jobs too)."""

    async def handler(job: Job, signal: AbortSignal) -> None:
        return None

    async def on_ship(event: Event, signal: AbortSignal) -> None:
        return None

    return await init_job_processor(
        db,
        jobs={"send-email": JobDef(handler=handler)},
        subscribers={"shipment_created": [Subscriber("notify", handler=on_ship)]},
        **FAST,
    )


async def test_names_page_offers_new_job_only_for_names_the_new_job_form_accepts(db: Any) -> None:
    """The new-job form lists no event delivery (emit() and replays make those, and its POST
    refuses them), yet the Names page showed a "New job" button on the built-in
    webhook-delivery and on each subscriber's `<event>:<subscriber>` row: it opened a form
    with no name chosen."""

    p = await with_a_subscriber(db)
    app = create_dashboard(p, auth=AUTH)
    async with p, client(app) as c:  # started: its names are registered
        names = await c.get("/names")
        assert names.status_code == 200
        offered = set(re.findall(r'href="/jobs/new\?name=([^"]+)"', names.text))
        form = await c.get("/jobs/new")
        choices = set(re.findall(r'<option value="([^"]+)"', form.text))
    assert form.status_code == 200, form.text[-500:]
    assert "send-email" in offered and "send-email" in choices
    assert "shipment_created:notify" in names.text  # listed, without the button
    assert offered <= {x.replace(":", "%3A") for x in choices}, offered


async def test_jobs_page_new_job_link_preselects_only_a_name_the_form_accepts(db: Any) -> None:
    """The Jobs page filtered by an event's delivery name linked "+ New job" to
    /jobs/new?name=<delivery name>: a form with no name chosen (it refuses deliveries)."""

    p = await with_a_subscriber(db)
    app = create_dashboard(p, auth=AUTH)
    async with p, client(app) as c:
        form = await c.get("/jobs/new")
        choices = set(re.findall(r'<option value="([^"]+)"', form.text))
        linked = {}
        for name in ("send-email", "shipment_created:notify", "webhook-delivery"):
            page = await c.get("/jobs", params={"name": name})
            assert page.status_code == 200, (name, page.text[-300:])
            linked[name] = re.findall(r'href="/jobs/new(?:\?name=([^"]*))?"', page.text)
    assert linked == {
        "send-email": ["send-email"],
        "shipment_created:notify": [""],
        "webhook-delivery": [""],
    }, linked
    assert "send-email" in choices


async def test_an_event_page_past_its_shown_deliveries_counts_and_shows_every_row(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past DELIVERIES_SHOWN, the rows of targets without a job (deleted by retention,
    waiting) were cut off while the status line counted them, and the heading counted the
    rows read, not the deliveries."""
    from bson import ObjectId

    from job_processor.dashboard import events as dashboard_events

    monkeypatch.setattr(dashboard_events, "DELIVERIES_SHOWN", 3)
    p = await init_job_processor(  # not started: deliveries stay pending
        db,
        jobs={"n": JobDef(handler=noop)},
        subscribers={"shipped": [Subscriber("mail", handler=on_shipped)]},
    )
    event = await p.emit("shipped", {"order": 1})
    [own] = event.deliveries
    for _ in range(4):
        await p.replay_event(event.id)
    removed = await p.storage.jobs.coll.delete_one({"_id": ObjectId(own.job_id)})  # retention
    assert removed.deleted_count == 1
    async with client(create_dashboard(p, auth=AUTH)) as c:
        page = (await c.get(f"/events/{event.id}")).text
    assert "1 deleted" in page and "The first 3 of 5 deliveries" in page
    heading = re.search(r'<h2>Deliveries <span class="count">(\d+)</span>', page)
    assert heading is not None and heading.group(1) == "5", heading
    assert "removed (retention or purge)" in page, "the counted deleted row is not shown"


async def test_an_ipv6_webhook_endpoint_shows_its_host_in_brackets(db: Any) -> None:
    """https://[2001:db8::1]:8443 was shown https://2001:db8::1:8443 (no URL; the port lost)."""
    p = await init_job_processor(  # not started: deliveries stay pending
        db,
        jobs={"n": JobDef(handler=noop)},
        subscribers={"shipped": [Subscriber("mail", handler=on_shipped)]},
        webhook_secrets={"crm": generate_secret()},
    )
    hook = await p.webhooks.add(
        url="https://[2001:db8::1]:8443/hooks/x", events=["shipped"], secret_ref="crm"
    )
    event = await p.emit("shipped", {"order": 1})
    async with client(create_dashboard(p, auth=AUTH)) as c:
        page = (await c.get(f"/events/{event.id}")).text
    row = re.search(rf'<tr [^>]*data-target="webhook:{hook.id}">.*?</tr>', page, re.S)
    assert row is not None
    assert "https://[2001:db8::1]:8443" in row.group(0)


async def test_a_runs_error_keeps_its_details_key_when_the_history_rotates(db: Any) -> None:
    """The key an opened error is kept open by was the run's place in the history: once 20
    runs are kept, each new run shifted every place, and the opened error folded."""
    from bson import ObjectId

    p = await init_job_processor(db, jobs={"n": JobDef(handler=noop)})  # not started
    job = await p.schedule_job("n", {})
    now = dt.datetime.now(dt.UTC)

    def run(i: int) -> dict[str, Any]:
        at = now + dt.timedelta(seconds=i)
        return {
            "attempt": i,
            "worker_id": "w",
            "started_at": at,
            "ended_at": at,
            "status": "errored",
            "error": f"RuntimeError: boom {i}",
        }

    def key_of(page: str, error: str) -> str:
        found = re.search(
            r'<details data-key="([^"]+)"><summary>[^<]*' + re.escape(error) + "<", page
        )
        assert found is not None, error
        return found.group(1)

    oid = ObjectId(job.id)
    await p.storage.jobs.coll.update_one(
        {"_id": oid}, {"$set": {"history": [run(i) for i in range(1, 21)]}}
    )
    async with client(create_dashboard(p, auth=AUTH)) as c:
        opened = key_of((await c.get(f"/jobs/{job.id}")).text, "boom 20")
        await p.storage.jobs.coll.update_one(  # one more run: the oldest falls off
            {"_id": oid}, {"$set": {"history": [run(i) for i in range(2, 22)]}}
        )
        after = key_of((await c.get(f"/jobs/{job.id}")).text, "boom 20")
    assert after == opened, f"the opened error's key changed: {opened} -> {after}"


async def test_a_jobs_page_size_over_the_cap_shows_the_size_it_applied(db: Any) -> None:
    """`/jobs?limit=5000` lists at most 1,000 jobs (Admin.list_jobs' cap): the per-page box
    and the page's links say 1000, not the 5000 asked for (they said 5000 over 1,000 rows)."""
    p = await init_job_processor(db, jobs={"n": JobDef(handler=noop)})  # not started
    for i in range(2):
        await p.schedule_job("n", {"i": i})
    async with client(create_dashboard(p, auth=AUTH)) as c:
        first = (await c.get("/jobs", params={"limit": 1})).text
        cursor = re.search(r'href="/jobs\?cursor=([^&"]+)', first)
        assert cursor is not None, "no next page link"
        resp = await c.get("/jobs", params={"limit": 5000, "cursor": cursor.group(1)})
    assert resp.status_code == 200
    box = re.search(r'<select name="limit">(.*?)</select>', resp.text, re.S)
    assert box is not None
    assert re.findall(r"<option selected>(\d+)</option>", box.group(1)) == ["1000"]
    assert "5000" not in box.group(1)
    assert 'href="/jobs?limit=1000"' in resp.text  # « Newest keeps the size applied
