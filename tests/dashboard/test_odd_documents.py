"""The dashboard's pages over documents another program wrote with a field of the wrong type (a
worker's names, a definition's sensitive_fields, a cron's next slot, an event's name, a webhook
endpoint's events): each page shows the rest, that field as its default (docs/operations.md)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import httpx2 as httpx
import pytest
from bson import ObjectId

from job_processor import InvalidArgumentError
from job_processor.dashboard import create_dashboard
from job_processor.storage.audit import entry_id
from tests.helpers import every_kind


async def noop(*args: Any) -> None:
    return None


async def test_pages_show_documents_with_odd_fields_another_program_wrote(db: Any) -> None:
    processor, event, endpoint = await every_kind(db)
    await processor.webhooks.disable(endpoint.id, "receiver gone")  # the overview warns of it
    now = dt.datetime.now(dt.UTC)
    await db["job_processor_workers"].insert_one(
        {
            "_id": "other-1",
            "hostname": "other-host",
            "pid": 1,
            "tags": None,
            "concurrency": 1,
            "names": None,  # each of these fields as another program may write it
            "definitions": "x",
            "crons": 3,
            "started_at": now,
            "last_seen": now,
            "worker_timeout": 3600.0,
        }
    )
    odd = {"sensitive_fields": 1, "max_attempts": None, "backoff": "fast"}
    await db["job_processor_definitions"].update_one({"_id": "send"}, {"$set": odd})
    await db["job_processor_crons"].update_one(
        {"_id": "nightly"}, {"$set": {"next_slot": "soon", "tag": 7}}
    )
    await db["job_processor_events"].update_one(
        {"_id": ObjectId(event.id)}, {"$set": {"name": None, "emitted_at": None, "key": 5}}
    )
    await db["job_processor_webhooks"].update_one(
        {"_id": ObjectId(endpoint.id)}, {"$set": {"events": None, "format": None}}
    )
    app = create_dashboard(processor, auth=None)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        pages = {
            "/": ["send", "receiver gone"],  # the disabled endpoint's warning too
            "/workers": ["other-host"],
            "/crons": ["nightly", "0 3 * * *"],
            "/names": ["send", "nightly"],
            "/events": [event.id],
            f"/events/{event.id}": [event.id, "mail"],
            "/api/overview": ["send"],
        }
        for path, shown in pages.items():
            resp = await client.get(path)
            assert resp.status_code == 200, (path, resp.text[-500:])
            for text in shown:
                assert text in resp.text, (path, text)


async def test_the_audit_page_shows_entries_another_program_wrote_with_odd_fields(db: Any) -> None:
    processor, _event, _endpoint = await every_kind(db)
    app = create_dashboard(processor, auth=None)
    admin = await app.state.dashboard.admin()
    await admin.pause("send", actor="ops@example")  # a real entry, before the odd ones
    odd = {"at": "not a date", "actor": None, "action": 5, "ids": 7, "count": "x", "detail": "z"}
    # ids ordered after the real entry's (a plain ObjectId() of the same second sorts by its
    # random bytes: either side of it)
    later = [entry_id(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=s)) for s in (1, 2)]
    await db["job_processor_audit"].insert_one({"_id": later[0], **odd})
    await db["job_processor_audit"].insert_one({"_id": later[1], "action": "hand_fix"})
    entries = await admin.audit_log()
    assert [e.action for e in entries] == ["hand_fix", "5", "name_paused"]
    assert entries[1].actor == "?" and entries[1].ids == [] and entries[1].detail == {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        resp = await client.get("/audit")
    assert resp.status_code == 200, resp.text[-500:]
    for shown in ("ops@example", "name_paused", "hand_fix"):
        assert shown in resp.text


async def test_a_job_page_shows_a_job_whose_dependencies_another_program_wrote_wrong(
    db: Any,
) -> None:
    processor, _event, _endpoint = await every_kind(db)
    first = await processor.schedule_job("send", {"n": 1})
    odd = ObjectId()
    await db["job_processor_jobs"].insert_one(
        {
            "_id": odd,
            "name": "send",
            "status": "pending",
            "created_at": dt.datetime.now(dt.UTC),
            "after": [first.id, "job-42"],  # a hand edit: one of them is no job id
        }
    )
    app = create_dashboard(processor, auth=None)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        resp = await client.get(f"/jobs/{odd}")
        assert resp.status_code == 200, resp.text[-500:]
        assert f"/jobs/{first.id}" in resp.text  # the dependency that exists, linked
        assert "job-42" in resp.text and "not a job id" in resp.text
        assert (await client.get(f"/api/jobs/{odd}")).status_code == 200


async def test_the_audit_pages_show_every_entry_across_object_and_text_ids(db: Any) -> None:
    """A page ending on one kind of `_id` led on among that kind only (`$lt` compares within
    one BSON type): past a page of ObjectId entries, the text ids another program wrote were
    never shown (MongoDB sorts them below ObjectIds), and past a page of text ids, the
    ObjectId entries (nx-27017 sorts them below text). Every entry is shown once."""
    processor, _event, _endpoint = await every_kind(db)
    app = create_dashboard(processor, auth=None)
    at = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    await db["job_processor_audit"].insert_many(
        [{"_id": f"hand-{i:03}", "action": "hand_fix", "actor": f"hand {i:03}"} for i in range(60)]
        + [
            {"_id": ObjectId(), "at": at, "action": "own_fix", "actor": f"own {i:03}"}
            for i in range(60)
        ]
    )
    shown = await audit_pages(app, r"(?:hand|own) \d{3}")
    every = [f"{who} {i:03}" for who in ("hand", "own") for i in range(60)]
    assert sorted(shown) == every  # (a text id ending a page led to a 400 before a60b159)
    admin = await app.state.dashboard.admin()
    with pytest.raises(InvalidArgumentError, match="before 'nope' is not an audit entry id"):
        await admin.audit_log(before="nope")  # a text no entry has: still refused
    # said as it is: a text id ('hand-001') is one, so the refusal is not "24 hex characters"
    with pytest.raises(InvalidArgumentError, match="no entry has that id") as refused:
        await admin.audit_log(before="nope")
    assert "24 hex" not in str(refused.value), refused.value


async def test_the_audit_pages_show_entries_with_numeric_ids_in_a_stable_order(db: Any) -> None:
    """Entries another program (or an older version) wrote with a number as `_id` dropped out
    past the first page: a page ending on a number led to a 400 ("not an audit entry id") or
    back among the text ids. Paged through, a mix of ObjectId, text and numeric ids is shown
    once each, in one order: ObjectIds newest first, then text ids, then numbers."""
    processor, _event, _endpoint = await every_kind(db)
    app = create_dashboard(processor, auth=None)
    at = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    own = [
        {"_id": entry_id(at + dt.timedelta(seconds=i)), "at": at, "actor": f"own {i:03}"}
        for i in range(40)
    ]
    hand = [{"_id": f"hand-{i:03}", "actor": f"hand {i:03}"} for i in range(40)]
    # ints and floats: 0, 1.5, 3, 4.5, ...
    numbers = [{"_id": i * 1.5 if i % 2 else i * 3 // 2, "actor": f"num {i:03}"} for i in range(40)]
    await db["job_processor_audit"].insert_many(
        [d | {"action": "hand_fix"} for d in own + hand + numbers]
    )
    shown = await audit_pages(app, r"(?:hand|own|num) \d{3}")
    expected = [d["actor"] for part in (own, hand, numbers) for d in reversed(part)]
    assert shown == expected
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as client:
        for wrong in ("9" * 20, "-1", "1e999", "nope"):  # no entry's id: a 400 that says so
            refused = await client.get("/audit", params={"before": wrong})
            assert refused.status_code == 400, (wrong, refused.text[-500:])
            assert "is not an audit entry id" in refused.text


async def test_audit_pages_end_on_a_text_id_of_24_hex_digits(db: Any) -> None:
    """A page ending on an entry another program wrote with an ObjectId's text as its `_id`
    (an id kept as text) went on among the ObjectIds below that value (the text read as one),
    then every text id again: entries shown twice, the Older link never ending. Paged through,
    each entry comes once."""
    processor, _event, _endpoint = await every_kind(db)
    app = create_dashboard(processor, auth=None)
    admin = await app.state.dashboard.admin()
    at = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    own = [{"_id": entry_id(at + dt.timedelta(seconds=i)), "at": at} for i in range(3)]
    hand: list[Any] = [str(ObjectId()), "hand-1", "hand-2"]  # an ObjectId kept as text
    numbers: list[Any] = [2.5, 1, 7]
    await db["job_processor_audit"].insert_many(
        [d | {"action": "own_fix"} for d in own]
        + [{"_id": i, "action": "hand_fix"} for i in hand + numbers]
    )
    shown: list[str] = []
    before = None
    for _ in range(12):
        page = await admin.audit_log(limit=2, before=before)
        shown += [e.id for e in page]
        if len(page) < 2:
            break
        before = page[-1].id
    stored = [str(d["_id"]) async for d in db["job_processor_audit"].find({}, {"_id": 1})]
    assert len(shown) == len(set(shown))  # each once
    assert sorted(shown) == sorted(stored)
    assert shown[-6:] == [*sorted(hand, reverse=True), "7", "2.5", "1"]


async def test_a_progress_of_nothing_to_do_shows_its_total_of_0(db: Any) -> None:
    """report_progress(0, 0): the page read "100% · 0", the "/ 0" left out, as `jobs show`."""
    now = dt.datetime.now(dt.UTC)
    progress = {"done": 0, "total": 0, "fraction": 1.0, "message": None, "at": now}
    text = await job_page_with_progress(db, progress)
    assert "100% · 0 / 0" in text and 'title="0 of 0"' in text


async def test_a_progress_another_program_wrote_without_a_total_shows_none(db: Any) -> None:
    """A progress with no total field (another program's, `{"done": 3}`) read "3 / " and
    "3 of " once a total of 0 was shown: a missing total is no total."""
    text = await job_page_with_progress(db, {"done": 3})
    assert 'title="3"' in text and '<span class="small">3</span>' in text


async def audit_pages(app: Any, actors: str) -> list[str]:
    """The actors matching `actors` on the audit pages, following each page's Older link."""
    transport = httpx.ASGITransport(app=app)
    shown: list[str] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        path = "/audit"
        for _ in range(6):
            resp = await client.get(path)
            assert resp.status_code == 200, (path, resp.text[-500:])
            shown += re.findall(actors, resp.text)
            found = re.search(r'href="(/audit\?before=[^"]+)"', resp.text)
            if found is None:
                break
            path = found.group(1).replace("&amp;", "&")
    return shown


async def job_page_with_progress(db: Any, progress: dict[str, Any]) -> str:
    """A job's page once its stored progress is `progress` (as another program may write it)."""
    processor, _event, _endpoint = await every_kind(db)
    job = await processor.schedule_job("send", {"n": 1})
    await db["job_processor_jobs"].update_one(
        {"_id": ObjectId(job.id)}, {"$set": {"progress": progress}}
    )
    app = create_dashboard(processor, auth=None)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        page = await client.get(f"/jobs/{job.id}")
    assert page.status_code == 200
    return page.text
