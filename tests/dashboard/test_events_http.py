"""The dashboard's Events pages and replays over HTTP (httpx in the event loop of a real started
JobProcessor with subscribers, a webhook endpoint on a real HTTP receiver, the test server), and
the cluster-wide limits and webhook warnings on the overview."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from job_processor import (
    AbortSignal,
    Event,
    Job,
    JobDef,
    JobProcessor,
    JobStatus,
    Subscriber,
    WebhookEndpoint,
    WebhookOptions,
    init_job_processor,
)
from job_processor.core.definitions import Backoff, Limit
from job_processor.dashboard import MASK, create_dashboard
from job_processor.events.webhooks import generate_secret
from tests.helpers import FAST, wait_status

from ..receiver import Receiver, Reply, receiving
from .harness import Switches, make_processor, wait_until
from .test_http import AUTH, SECRET, client, token

QUICK = Backoff(kind="fixed", base_seconds=0.2, jitter=False)


async def send_email(event: Event, signal: AbortSignal) -> dict[str, Any]:
    return {"sent_to": event.payload.get("to")}


async def update_crm(event: Event, signal: AbortSignal) -> None:
    raise ConnectionError(f"CRM refused the login (api_key {event.payload.get('api_key')!r})")


SUBSCRIBERS: dict[str, Any] = {
    "shipped": [
        Subscriber("send-email", handler=send_email),
        Subscriber("update-crm", handler=update_crm, max_attempts=1),
    ]
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


@pytest.fixture
async def processor(db: Any, receiver: Receiver) -> AsyncIterator[tuple[JobProcessor, Any]]:
    p = await make_processor(
        db,
        Switches(),
        subscribers=SUBSCRIBERS,
        webhook_secrets={"crm": generate_secret()},
        webhook_options=WebhookOptions(backoff=QUICK),
    )
    hook = await p.webhooks.add(
        url=receiver.script("/hooks/crm?token=abc", Reply(503, body=b"busy"), Reply(200)),
        events=["shipped"],
        secret_ref="crm",
        description="CRM",
    )
    async with p:
        yield p, hook


async def settled(p: JobProcessor, event_id: str) -> Event:
    async def ended() -> bool:
        event = await p.get_event(event_id)
        return all(d.status in ("finished", "errored") for d in event.deliveries)

    await wait_until(ended)
    return await p.get_event(event_id)


def rows(page: str, table: str) -> list[str]:
    """The body rows of a table (of nested tables too: their cells come as rows of their own)."""
    body = page.split(f'<table class="grid {table}">', 1)[1].split("</section>", 1)[0]
    return re.findall(r"<tr[ >].*?</tr>", body.split("<tbody>", 1)[1], re.S)


def text(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


async def test_events_list_filters_pages_and_the_event_page_with_its_deliveries(
    processor: tuple[JobProcessor, WebhookEndpoint],
) -> None:
    p, hook = processor
    first = await p.emit("shipped", {"to": "ada@example.com", "api_key": SECRET}, key="s1")
    others = [await p.emit("shipped", {"to": f"u{i}@example.com"}) for i in range(4)]
    await p.emit("invoiced", {"amount": 12})
    event = await settled(p, first.id)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        page = await c.get("/")
        assert '<a href="/events"' in page.text  # in the navigation

        listing = await c.get("/events", params={"name": "shipped", "limit": 2})
        assert listing.status_code == 200
        seen, sizes = [], []
        while True:
            ids = re.findall(r'href="/events/([0-9a-f]{24})" class="name"', listing.text)
            seen += ids
            sizes.append(len(ids))
            older = re.search(r'rel="next" href="([^"]+)"', listing.text)
            if older is None:
                break
            listing = await c.get(html.unescape(older.group(1)))
        # five events emitted within a second: each once, newest first, across three pages
        assert seen == [e.id for e in reversed([first, *others])] and sizes == [2, 2, 1]
        page_text = (await c.get("/events?name=shipped")).text
        first_row = text(rows(page_text, "events")[-1])
        assert "shipped s1" in first_row and "send-email, update-crm · 1 webhook" in first_row
        assert MASK in first_row and SECRET not in first_row  # the payload, masked

        window = await c.get(
            "/events", params={"since": "2000-01-01T00:00:00", "until": "2000-01-02T00:00:00"}
        )
        assert "No event matches." in window.text
        bad = await c.get("/events", params={"since": "yesterday"})
        assert bad.status_code == 400 and "since &#39;yesterday&#39; is not a date" in bad.text
        # 50 a page by default; the page offers 20 to 200, `?limit=` takes 1 to 1,000
        assert len(rows((await c.get("/events")).text, "events")) == 6
        assert (await c.get("/events", params={"limit": 1000})).status_code == 200
        for wrong in (0, 1001):
            refused = await c.get("/events", params={"limit": wrong})
            assert refused.status_code == 400
            assert f"limit must be between 1 and 1000, got {wrong}" in refused.text
        offered = re.findall(r"<option(?: selected)?>(\d+)</option>", page_text)
        assert offered == ["20", "50", "100", "200"]

        shown = await c.get(f"/events/{first.id}")
        assert shown.status_code == 200
        assert SECRET not in shown.text and MASK in shown.text
        deliveries = {
            re.search(r'data-target="([^"]+)"', r).group(1): r  # type: ignore[union-attr]
            for r in rows(shown.text, "deliveries")
            if "data-target" in r
        }
        assert set(deliveries) == {"send-email", "update-crm", f"webhook:{hook.id}"}
        email = text(deliveries["send-email"])
        assert email.startswith("send-email async finished 1/3")
        by_target = {d.target: d for d in event.deliveries}
        assert f'href="/jobs/{by_target["send-email"].job_id}"' in deliveries["send-email"]
        crm = deliveries["update-crm"]
        assert 'class="badge s-errored"' in crm
        assert "ConnectionError: CRM refused the login (api_key" in text(crm)
        assert "webhook http://127.0.0.1:" in text(deliveries[f"webhook:{hook.id}"])
        assert "· CRM finished 2/10" in text(deliveries[f"webhook:{hook.id}"])
        assert "token=abc" not in shown.text  # an endpoint shows its host, never its query
        attempts = shown.text.split('<tr class="attempts">', 1)[1].split("</table>", 1)[0]
        assert re.findall(r'class="http http-\dxx">(\d+)<', attempts) == ["503", "200"]
        assert "busy" in attempts
        assert (await c.get("/events/" + "0" * 24)).status_code == 404
        assert "not an event id" in (await c.get("/events/nope")).text

        job = await c.get(f"/jobs/{by_target['update-crm'].job_id}")
        assert f'<a href="/events/{first.id}">' in job.text  # and back to the event
        assert "delivery to update-crm" in job.text


async def test_replay_needs_csrf_and_confirmation_is_refused_read_only_and_is_audited(
    processor: tuple[JobProcessor, WebhookEndpoint], receiver: Receiver
) -> None:
    p, hook = processor
    event = await settled(p, (await p.emit("shipped", {"to": "ada@example.com"})).id)
    read_only = create_dashboard(p, auth=AUTH, read_only=True)
    async with client(read_only) as c:
        page = await c.get(f"/events/{event.id}")
        assert 'method="post"' not in page.text and "Replay…" not in page.text
        csrf = str(c.cookies.get("jp_dashboard_csrf"))
        refused = await c.post(
            f"/events/{event.id}/replay", data={"csrf_token": csrf, "confirm": "yes"}
        )
        assert refused.status_code == 403 and "read-only" in refused.text
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        refused = await c.post(f"/events/{event.id}/replay", data={"confirm": "yes"})
        assert refused.status_code == 403 and "security cookie is missing" in refused.text
        page = await c.get(f"/events/{event.id}")
        forged = await c.post(
            f"/events/{event.id}/replay", data={"csrf_token": "0" * 48, "confirm": "yes"}
        )
        assert forged.status_code == 403 and "does not match" in forged.text
        assert (await p.get_event(event.id)).replays == 0  # nothing happened

        csrf = token(page.text)
        confirm = await c.post(f"/events/{event.id}/replay", data={"csrf_token": csrf})
        assert confirm.status_code == 200
        assert f"Replay event {event.id} to 3 target(s)?" in confirm.text
        assert f"send-email, update-crm, webhook:{hook.id}" in confirm.text
        assert (await p.get_event(event.id)).replays == 0  # not before confirming
        done = await c.post(
            f"/events/{event.id}/replay", data={"csrf_token": csrf, "confirm": "yes"}
        )
        assert done.status_code == 303 and done.headers["location"] == f"/events/{event.id}"
        one = await c.post(
            f"/events/{event.id}/replay",
            data={"csrf_token": csrf, "confirm": "yes", "subscriber": "send-email"},
        )
        shown = await c.get(one.headers["location"])
        assert "Replay: 1 new delivery" in shown.text and "admin (dashboard" in shown.text
        replayed = re.findall(r'<tr class="row-\w+ replay" data-target="([^"]+)"', shown.text)
        assert sorted(replayed) == sorted(
            ["send-email", "send-email", "update-crm", f"webhook:{hook.id}"]
        )
        unknown = await c.post(
            f"/events/{event.id}/replay",
            data={"csrf_token": csrf, "confirm": "yes", "subscriber": "nope"},
        )
        failed = await c.get(unknown.headers["location"])
        assert "Replay failed" in failed.text and "known: send-email, update-crm" in failed.text

    after = await p.get_event(event.id)
    assert after.replays == 2
    created = [d for d in after.deliveries if d.replay_id]
    assert len(created) == 4 and len({d.replay_id for d in created}) == 2
    await wait_until(lambda: len(receiver.received("/hooks/crm?token=abc")) >= 3)
    audit = [a for a in await p.storage.audit.recent(10) if a["action"] == "event_replayed"]
    assert len(audit) == 2 and all(a["actor"].startswith("admin (dashboard") for a in audit)
    assert {a["detail"]["subscribers"] for a in audit} == {"all", "send-email"}


async def test_the_overview_shows_limits_and_disabled_webhook_endpoints(db: Any) -> None:
    release = asyncio.Event()

    async def held(job: Job, signal: AbortSignal) -> None:
        await release.wait()

    async def quick(job: Job, signal: AbortSignal) -> None:
        return None

    mail = Limit(key="mail", concurrency=2, rate=10, per_seconds=60)
    jobs: dict[str, Any] = {
        "send": JobDef(handler=held, limit=mail),
        "export": JobDef(handler=quick, limit=Limit(key="exports", concurrency=1)),
    }
    p = await init_job_processor(db, jobs=jobs, **FAST, concurrency=4)
    hook = await p.webhooks.add(url="http://127.0.0.1:9/hook?token=abc", events=["*"])
    await p.webhooks.disable(hook.id, reason="410 Gone from the receiver")
    async with p:
        sending = await p.schedule_job("send", {})
        await wait_status(p, (await p.schedule_job("export", {})).id, JobStatus.FINISHED)
        await wait_status(p, sending.id, JobStatus.RUNNING)
        async with client(create_dashboard(p, auth=AUTH)) as c:
            page = (await c.get("/")).text
        release.set()
    warnings = text(page.split('aria-label="Warnings"', 1)[1].split("</section>", 1)[0])
    assert f"webhook endpoint {hook.id} (http://127.0.0.1:9) is disabled: 410 Gone" in warnings
    assert "token=abc" not in page
    limits = {
        re.search(r'data-key="([^"]+)"', r).group(1): text(r)  # type: ignore[union-attr]
        for r in rows(page, "limits")
    }
    assert limits == {
        "mail": "mail 1 / 2 1 / 10 per minute",
        "exports": "exports 0 / 1 no rate limit",
    }


async def test_a_delivery_jobs_page_masks_the_secrets_of_its_event(
    processor: tuple[JobProcessor, WebhookEndpoint],
) -> None:
    """update-crm's error quotes the event's api_key: its job page, its JSON and the jobs list
    mask it as the event page does."""
    p, _ = processor
    event = await settled(p, (await p.emit("shipped", {"to": "ada", "api_key": SECRET})).id)
    [crm] = [d for d in event.deliveries if d.target == "update-crm"]
    job = await p.get_job(crm.job_id)
    assert SECRET in (job.error or "")  # stored as the handler raised it
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        for url in (
            f"/jobs/{crm.job_id}",
            f"/api/jobs/{crm.job_id}",
            "/jobs?status=errored",
            "/api/jobs?status=errored",
            f"/events/{event.id}",
        ):
            page = await c.get(url)
            assert page.status_code == 200, url
            assert SECRET not in page.text, url


async def test_a_delivery_that_outlives_its_event_hides_what_it_wrote(
    processor: tuple[JobProcessor, WebhookEndpoint],
) -> None:
    """With the default retentions an errored delivery (keep_failed, 30 days from its end)
    outlives its event (keep_events, 30 days from its emit). Its error quotes the event's
    api_key, masked while the event tells what to mask; once the event is gone, the delivery's
    texts are hidden on every page and in the API and the CLI's reads (the Admin's)."""
    from bson import ObjectId

    from job_processor.admin import Admin
    from job_processor.core.masking import EVENT_GONE

    p, _ = processor
    event = await settled(p, (await p.emit("shipped", {"to": "ada", "api_key": SECRET})).id)
    [crm] = [d for d in event.deliveries if d.target == "update-crm"]
    job = await p.get_job(crm.job_id)
    assert SECRET in (job.error or "")  # stored as the handler raised it
    stored = await p.storage.events.coll.find_one({"_id": ObjectId(event.id)})
    assert stored["expires_at"] < job.expires_at  # the TTL removes the event first
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        page = await c.get(f"/jobs/{crm.job_id}")
        assert SECRET not in page.text and "api_key" in page.text  # masked, the rest shown
        await p.storage.events.coll.delete_one({"_id": ObjectId(event.id)})  # that TTL, now
        for url in (f"/jobs/{crm.job_id}", f"/api/jobs/{crm.job_id}", "/jobs?status=errored"):
            page = await c.get(url)
            assert page.status_code == 200, url
            assert SECRET not in page.text, url
    shown = await Admin(p.storage.db).get_job(crm.job_id)
    assert shown.error == EVENT_GONE and SECRET not in str(shown.model_dump())
    from job_processor.core.event_documents import delivery_event_id

    assert delivery_event_id({"event_id": event.id, "to": "x"}) is None  # a user's own job


async def test_a_replay_confirmed_once_the_event_is_gone_lands_on_the_events_list(
    processor: tuple[JobProcessor, WebhookEndpoint],
) -> None:
    """83dd0bd's defect on the events pages: a replay confirmed on a confirmation page left
    open while its event expired (events are kept for their retention only) or was deleted went
    back to the event's page, a 404 "Not found" under "Replay failed"."""
    from bson import ObjectId

    p, _ = processor
    event = await settled(p, (await p.emit("shipped", {"to": "ada@example.com"})).id)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        csrf = token((await c.get(f"/events/{event.id}")).text)
        await p.storage.db["job_processor_events"].delete_one({"_id": ObjectId(event.id)})
        done = await c.post(
            f"/events/{event.id}/replay", data={"csrf_token": csrf, "confirm": "yes"}
        )
        assert done.status_code == 303 and done.headers["location"] == "/events"
        page = await c.get(done.headers["location"])
        assert page.status_code == 200 and "Replay failed" in page.text


async def test_an_events_name_that_nothing_has_is_named_with_a_did_you_mean(
    processor: tuple[JobProcessor, WebhookEndpoint],
) -> None:
    """As the jobs page names a typo in its name filter (and `events list --name` does), not
    "No event matches." as if there were none."""
    p, _ = processor
    await p.emit("invoiced", {"amount": 12})  # a stored event that nothing listens to
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        typo = await c.get("/events", params={"name": "shiped"})
        assert typo.status_code == 400
        said = html.unescape(typo.text)
        assert "Cannot list events" in said and "No event matches." in said
        assert "unknown event 'shiped' (did you mean 'shipped'?)" in said
        stored = html.unescape((await c.get("/events", params={"name": "invoicd"})).text)
        assert "unknown event 'invoicd' (did you mean 'invoiced'?)" in stored
        # a known name with nothing in the window is an empty listing, as before
        for name in ("shipped", "invoiced"):
            empty = await c.get(
                "/events",
                params={"name": name, "since": "2000-01-01T00:00:00", "until": "2000-01-02"},
            )
            assert empty.status_code == 200 and "No event matches." in empty.text
        listed = await c.get("/events", params={"name": "invoiced"})
        assert listed.status_code == 200 and "Cannot list events" not in listed.text
