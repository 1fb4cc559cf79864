"""Event, subscriber, delivery and webhook storage verbs on nx-27017 (PyMongo async and motor)
and mongomock-motor."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from bson import ObjectId

from job_processor import events as ev
from job_processor.core import event_documents as E
from job_processor.core.clock import FakeClock
from job_processor.core.errors import EventNotFoundError, InvalidArgumentError
from job_processor.events.pages import decode_cursor, event_page
from job_processor.storage import Storage

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def later(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


@pytest.fixture
async def storage(any_db: Any) -> Storage:
    s = await Storage.open(any_db, "t_")
    await s.ensure_indexes()
    await s.ensure_indexes()  # idempotent
    return s


def row(event: str, name: str, position: int, mode: str = "async") -> dict[str, Any]:
    return E.subscriber_row(
        event,
        name,
        mode=mode,
        position=position,
        tag=None,
        max_attempts=2,
        now=NOW,
        declared_by="w",
    )


async def register(storage: Storage) -> None:
    await storage.subscribers.register(
        [
            row("shipped", "email", 0),
            row("shipped", "crm", 1, "serial"),
            row("shipped", "audit", 2, "sync"),
            row("shipped", "ledger", 3, "serial"),
            row("other", "x", 0),
        ]
    )


async def emit(storage: Storage, name: str = "shipped", key: str | None = None, at: float = 0):
    targets = await ev.current_targets(storage, name, 10)
    doc = E.new_event(
        name, {"n": 1}, key=key, now=later(at), emitted_by="w", instance_id=None, targets=targets
    )
    return doc, await storage.events.insert(doc)


async def test_an_events_key_is_unique_while_the_event_is_kept(storage: Storage) -> None:
    first, stored = await emit(storage, key="k1")
    assert stored["_id"] == first["_id"]
    again, stored = await emit(storage, key="k1", at=5)
    assert stored["_id"] == first["_id"] != again["_id"]
    _, other = await emit(storage, "other", key="k1")  # keys are scoped by event name
    assert other["_id"] != first["_id"]
    _, a = await emit(storage)
    _, b = await emit(storage)  # no key: never deduplicated
    assert a["_id"] != b["_id"]


async def test_the_registry_gives_targets_in_declaration_order(storage: Storage) -> None:
    await register(storage)
    await register(storage)  # upserts: no duplicates
    targets = await ev.current_targets(storage, "shipped", 10)
    assert [t["target"] for t in targets] == ["email", "crm", "audit", "ledger"]
    assert next(t["job_name"] for t in targets) == "shipped:email"
    assert await ev.current_targets(storage, "nobody", 10) == []


async def test_fanout_creates_each_delivery_once_and_only_the_serial_head(storage: Storage) -> None:
    await register(storage)
    _, event = await emit(storage)
    assert event["fanout"] == "owed"
    assert [e["_id"] for e in await storage.events.owed(later(1))] == [event["_id"]]
    first = await ev.complete_fanout(storage, event, later(1))
    again = await ev.complete_fanout(storage, event, later(2))  # a second completer
    assert [d["name"] for d in first] == ["shipped:email", "shipped:audit", "shipped:crm"]
    assert [d["_id"] for d in again] == [d["_id"] for d in first]
    stored = await storage.deliveries.for_event(str(event["_id"]))
    assert sorted(d["name"] for d in stored) == ["shipped:audit", "shipped:crm", "shipped:email"]
    crm = next(d for d in stored if d["name"] == "shipped:crm")
    assert [t["target"] for t in crm["payload"]["chain"]] == ["ledger"]
    assert await storage.events.owed(later(60)) == []
    assert (await storage.events.get(event["_id"]))["fanout"] == "done"


async def test_get_event_shows_deliveries_and_waiting_serial_subscribers(storage: Storage) -> None:
    await register(storage)
    _, event = await emit(storage)
    await ev.complete_fanout(storage, event, later(1))
    got = await ev.get_event(storage, str(event["_id"]))
    states = {d.target: d.status for d in got.deliveries}
    assert states == {"email": "pending", "crm": "pending", "audit": "pending", "ledger": "waiting"}
    with pytest.raises(EventNotFoundError, match="not an event id"):
        await ev.get_event(storage, "nope")


async def test_chain_placeholders_hold_their_key_until_the_chain_resumes(storage: Storage) -> None:
    await register(storage)
    _, event = await emit(storage)
    targets = event["targets"]
    ledger = next(t for t in targets if t["target"] == "ledger")
    skipped = E.chain_stopped(event, ledger, now=later(1), replay_id=None, reason="crm failed")
    [held] = await storage.deliveries.create([skipped])
    assert held["status"] == "skipped"
    nxt = E.next_in_chain(event, [ledger], now=later(2), replay_id=None)
    [stored] = await storage.deliveries.create([nxt])
    assert stored["_id"] == skipped["_id"]  # the key is taken by the placeholder
    assert await storage.deliveries.delete_chain_stopped(nxt["delivery_key"])
    [stored] = await storage.deliveries.create([nxt])
    assert stored["_id"] == nxt["_id"]
    assert stored["status"] == "pending"
    assert not await storage.deliveries.delete_chain_stopped(nxt["delivery_key"])


async def test_replays_get_keys_of_their_own(storage: Storage) -> None:
    await register(storage)
    _, event = await emit(storage)
    await ev.complete_fanout(storage, event, later(1))
    clock = FakeClock(later(2))
    first = await ev.replay_event(storage, str(event["_id"]), ["email"], clock=clock)
    second = await ev.replay_event(storage, str(event["_id"]), ["email"], clock=clock)
    assert [d.target for d in first] == ["email"]
    assert first[0].replay_id and second[0].replay_id and first[0].replay_id != second[0].replay_id
    emails = list((await ev.get_event(storage, str(event["_id"]))).deliveries)
    assert [(d.target, d.replay_id is None) for d in emails if d.target == "email"] == [
        ("email", True),
        ("email", False),
        ("email", False),
    ]
    assert (await storage.events.get(event["_id"]))["replays"] == 2
    with pytest.raises(InvalidArgumentError, match="no subscriber or enabled webhook"):
        await ev.replay_event(storage, str(event["_id"]), ["nobody"], clock=clock)


async def test_list_events_newest_first_by_name_and_window(storage: Storage) -> None:
    for i in range(4):
        await emit(storage, at=i * 10)
    await emit(storage, "other", at=15)
    listed = await ev.list_events(storage, "shipped")
    assert [e.emitted_at for e in listed] == [later(30), later(20), later(10), later(0)]
    window = await ev.list_events(storage, "shipped", since=later(10), until=later(30))
    assert [e.emitted_at for e in window] == [later(20), later(10)]
    assert len(await ev.list_events(storage, limit=2)) == 2
    with pytest.raises(InvalidArgumentError, match="timezone-aware"):
        await ev.list_events(storage, since=dt.datetime(2030, 1, 1))
    with pytest.raises(InvalidArgumentError, match=r"since .* is not before until .*swap them"):
        await ev.list_events(storage, since=later(30), until=later(10))
    with pytest.raises(InvalidArgumentError, match="until is exclusive"):
        await ev.replay_events(storage, "shipped", since=later(10), until=later(10))


async def test_webhook_endpoints_match_by_name_or_star_while_enabled(storage: Storage) -> None:
    store = storage.webhooks

    def endpoint(events: list[str]) -> dict[str, Any]:
        from bson import ObjectId

        return {"_id": ObjectId(), "url": "http://x", "events": events, "state": "enabled"}

    a = await store.add(endpoint(["shipped", "other"]))
    star = await store.add(endpoint(["*"]))
    await store.add(endpoint(["nothing"]))
    assert {d["_id"] for d in await store.matching("shipped")} == {a["_id"], star["_id"]}
    assert await store.disable(star["_id"], "test", NOW) is not None
    assert await store.disable(star["_id"], "again", NOW) is None  # compare-and-set
    assert {d["_id"] for d in await store.matching("shipped")} == {a["_id"]}
    assert await store.failed_delivery(a["_id"], NOW) == 1
    assert await store.failed_delivery(a["_id"], NOW) == 2
    await store.delivered(a["_id"])
    assert (await store.get(a["_id"]))["consecutive_failures"] == 0
    enabled = await store.enable(star["_id"], later(1))
    assert enabled is not None
    assert enabled["state"] == "enabled"
    assert enabled["disabled_reason"] is None


async def test_live_workers_serving_a_delivery(storage: Storage) -> None:
    await storage.workers.register(
        {"_id": "w1", "names": ["shipped:email"], "last_seen": NOW, "hostname": "h", "pid": 1}
    )
    await storage.workers.register(
        {
            "_id": "w2",
            "names": ["shipped:email"],
            "last_seen": later(-60),
            "hostname": "h",
            "pid": 2,
        }
    )
    serving = storage.workers.serving
    assert [w["_id"] for w in await serving("shipped:email", NOW, 30.0)] == ["w1"]
    assert await serving("shipped:crm", NOW, 30.0) == []
    # each worker by the worker_timeout its document records (w2's: 90 s)
    await storage.workers.coll.update_one({"_id": "w2"}, {"$set": {"worker_timeout": 90.0}})
    assert sorted(w["_id"] for w in await serving("shipped:email", NOW, 30.0)) == ["w1", "w2"]


async def test_replay_events_takes_the_earliest_events_of_its_window(storage: Storage) -> None:
    """docs/events.md: "each event ... emitted in [since, until), oldest first, at most 1000
    per call". A window holding more than `limit` events replays its `limit` EARLIEST ones, so
    the next call, from just after the last one replayed, goes on where this one stopped (it
    replayed the newest ones, and a caller paging forward never replayed the rest)."""
    await register(storage)
    order = [str((await emit(storage, at=i * 10))[0]["_id"]) for i in range(4)]
    only = ["email"]
    first = await ev.replay_events(storage, "shipped", since=later(0), limit=2, subscribers=only)
    assert [str(d.event_id) for d in first] == order[:2]
    rest = await ev.replay_events(storage, "shipped", since=later(11), limit=2, subscribers=only)
    assert [str(d.event_id) for d in rest] == order[2:]


async def test_disable_by_delivery_only_matches_its_own_endpoint(any_db: Any) -> None:
    """The idempotent disable (a delivery's id) matches its own earlier write only, never an
    endpoint an operator disabled (nx-27017 applied `_id` to one `$or` branch only)."""
    s = await Storage.open(any_db, "t_")
    await s.ensure_indexes()
    a, b, c = ObjectId(), ObjectId(), ObjectId()
    base = {"url": "https://x", "events": ["e"], "consecutive_failures": 0}
    await s.webhooks.coll.insert_many(
        [
            base | {"_id": b, "state": "disabled", "disabled_by": "d2", "disabled_reason": "r"},
            base | {"_id": a, "state": "disabled", "disabled_by": None, "disabled_reason": "op"},
            base | {"_id": c, "state": "enabled", "disabled_by": None},
        ]
    )
    assert await s.webhooks.disable(a, "again", NOW, "d2") is None  # a: disabled by an operator
    got = await s.webhooks.disable(b, "again", NOW, "d2")  # b: its own earlier write
    assert got is not None and got["_id"] == b
    assert await s.webhooks.disable(b, "x", NOW, "d3") is None
    got = await s.webhooks.disable(c, "now", NOW, "d9")
    assert got is not None and got["_id"] == c
    docs = {d["_id"]: d for d in await s.webhooks.coll.find({}).to_list(None)}
    assert docs[a]["disabled_reason"] == "op"


async def test_failed_delivery_counts_each_delivery_once(any_db: Any) -> None:
    """Each delivery's failure is counted once per endpoint; the last 20 ids are kept."""
    s = await Storage.open(any_db, "t_")
    await s.ensure_indexes()
    a, b = ObjectId(), ObjectId()
    base = {"url": "https://x", "events": ["e"], "consecutive_failures": 0, "state": "enabled"}
    await s.webhooks.coll.insert_many([base | {"_id": a}, base | {"_id": b}])
    assert await s.webhooks.failed_delivery(a, NOW, "d1") == 1
    assert await s.webhooks.failed_delivery(a, NOW, "d1") == 1
    assert await s.webhooks.failed_delivery(b, NOW, "d1") == 1
    for i in range(25):
        await s.webhooks.failed_delivery(a, NOW, f"x{i}")
    assert await s.webhooks.failed_delivery(a, NOW, "x24") == 26
    doc = await s.webhooks.coll.find_one({"_id": a})
    assert len(doc["failed_deliveries"]) == 20


async def test_an_own_serial_delivery_made_after_replays_is_not_shown_as_deleted(
    storage: Storage,
) -> None:
    """The fan-out's own deliveries are written with `payload.replay_id: None`; the event page
    looked them up with `$exists: false`, which only nx-27017 matches for a null: on MongoDB
    (mongomock here) an own delivery made after the replays showed as "deleted" (an outside
    review's finding, failing before its fix)."""
    rows = [
        E.subscriber_row(
            "shipped",
            name,
            mode="serial",
            position=i,
            tag=None,
            max_attempts=2,
            now=NOW,
            declared_by="w",
        )
        for i, name in enumerate(["a", "b"])
    ]
    await storage.subscribers.register(rows)
    targets = await ev.current_targets(storage, "shipped", 10)
    doc = E.new_event(
        "shipped", {"n": 1}, key=None, now=NOW, emitted_by="w", instance_id=None, targets=targets
    )
    stored = await storage.events.insert(doc)
    [head] = await ev.complete_fanout(storage, stored, NOW)  # own "a", carrying ["b"]
    replays_at = FakeClock(NOW + dt.timedelta(minutes=1))
    for _ in range(3):  # replays of "a" (each a delivery of its own), after the emit
        await ev.replay_event(storage, str(doc["_id"]), ["a"], clock=replays_at)
    # own "a" finished and its hook made own "b" (created after the replays)
    await storage.jobs.coll.update_one(
        {"_id": head["_id"]},
        {"$set": {"status": "finished", "ended_at": NOW, "exit_hook": "done"}},
    )
    later = NOW + dt.timedelta(minutes=5)
    await storage.deliveries.create(
        [E.next_in_chain(stored, head["payload"]["chain"], now=later, replay_id=None)]
    )
    full = await ev.get_event(storage, str(doc["_id"]))
    assert {d.target: d.status for d in full.deliveries if d.replay_id is None} == {
        "a": "finished",
        "b": "pending",
    }
    # the dashboard reads the first 3 deliveries (own "a" and two replays), then the fan-out's
    # own ones (`own_for_event`), which must find own "b"
    summary, counts = await ev.event_summary(storage, str(doc["_id"]), 3)
    rows_b = [d for d in summary.deliveries if d.target == "b"]
    assert [d.status for d in rows_b] == [], rows_b  # own "b" exists: no row without a job
    assert "deleted" not in counts and "waiting" not in counts, counts


async def test_event_pages_reach_every_event_once_whatever_its_emitted_at(
    storage: Storage,
) -> None:
    """Events another program wrote with an `emitted_at` that is no date were lost by the pages
    past the first: a page from a cursor read `emitted_at < bound`, which no text matches
    (nx-27017: never shown at all; MongoDB sorts them after the dates, and the cursor of a page
    ending on one, its id's time, led back to dated events already shown). Each kind is paged
    apart, in one order on every backend: the dates newest first, the text, the numbers (each
    greatest first, ties by id desc), then none or null by id desc; each event once."""
    dated = [(await emit(storage, at=i))[1]["_id"] for i in range(3)]
    await emit(storage, "other", at=5)  # another name: not listed under "shipped"

    async def odd(*values: Any, missing: bool = False) -> list[ObjectId]:
        docs = [{"_id": ObjectId(), "name": "shipped", "payload": {}} for _ in values]
        for doc, value in zip(docs, values, strict=True):
            if not missing:
                doc["emitted_at"] = value
        await storage.events.coll.insert_many(docs)
        return [d["_id"] for d in docs]

    yesterday = await odd("yesterday", "yesterday")
    texts = [*yesterday[::-1], *await odd("2030-01-01T12:00:03+00:00", "")]
    big, five, five_again, negative = await odd(10**12, 5, 5.0, -2.5)
    numbers = [big, five_again, five, negative]
    others = [*await odd(None), *await odd(None, missing=True)]
    # an emitted_at of another type is not listed (no index bounds it: the `$nor` of the
    # other kinds walked the whole `_id` index on MongoDB at every short page)
    await odd(True, {"a": 1}, ["x", 3], [later(1)], [], ObjectId())
    expected = [*dated[::-1], *texts, *numbers, *others[::-1]]

    shown = [str(i) for i in expected]
    for size in (1, 2, 5, 100):
        assert await all_pages(storage, "shipped", size) == shown, size
    assert len(await all_pages(storage, None, 3)) == len(shown) + 1
    # a window is on the time of emit: the dated events only
    assert await all_pages(storage, "shipped", 2, since=NOW) == shown[:3]
    # a cursor made before the kinds were paged apart (ms.id) still reads as a dated one
    old = base64.urlsafe_b64encode(f"{int(later(1).timestamp() * 1000)}.{dated[1]}".encode())
    position = decode_cursor(old.decode().rstrip("="))
    page, _, _ = await event_page(storage, "shipped", None, None, 2, position)
    assert [e.id for e in page] == shown[2:4]


async def test_event_pages_reach_events_with_no_date_whatever_their_ids(
    storage: Storage,
) -> None:
    """The events with no date in `emitted_at` are listed by `_id` desc; past a page ending on
    one, the next read was `_id < that id`, which compares within one BSON type: a page ending
    on an ObjectId never reached those another program gave a text or numeric id (nor one
    ending on a text id the numeric ones). Their kinds of id are paged apart, as the audit
    log's: ObjectIds, text, then numbers, each greatest first; each event on one page."""
    oids = [ObjectId() for _ in range(2)]
    docs: list[dict[str, Any]] = [
        {"_id": oids[0], "name": "shipped", "payload": {}},
        {"_id": "evt-b", "name": "shipped", "payload": {}, "emitted_at": None},
        {"_id": 7, "name": "shipped", "payload": {}, "emitted_at": True},
        {"_id": oids[1], "name": "shipped", "payload": {}, "emitted_at": {"at": 1}},
        {"_id": "evt-a", "name": "shipped", "payload": {}},
        {"_id": 12.5, "name": "shipped", "payload": {}},
    ]
    await storage.events.coll.insert_many(docs)
    dated = (await emit(storage))[1]["_id"]
    # `emitted_at` True and {"at": 1} are not listed: none or null only
    expected = [str(dated), str(oids[0]), "evt-b", "evt-a", "12.5"]
    for size in (1, 2, 3, 100):
        assert await all_pages(storage, "shipped", size) == expected, size


async def test_event_pages_list_no_list_holding_null_in_emitted_at(storage: Storage) -> None:
    """The last kind is none or null only; `emitted_at: {"$in": [null]}` also matches a list
    that holds a null (MongoDB, mongomock and nx-27017 alike): `[null]` or `[1, null]` was
    listed there while every other list (`[]`, `["x", 3]`) is not. Each is left out."""
    docs: list[dict[str, Any]] = [
        {"_id": ObjectId(), "name": "shipped", "payload": {}, "emitted_at": [None]},
        {"_id": ObjectId(), "name": "shipped", "payload": {}, "emitted_at": [1, None]},
        {"_id": ObjectId(), "name": "shipped", "payload": {}, "emitted_at": None},
        {"_id": "evt-a", "name": "shipped", "payload": {}, "emitted_at": [None]},
        {"_id": "evt-b", "name": "shipped", "payload": {}},
    ]
    await storage.events.coll.insert_many(docs)
    expected = [str(docs[2]["_id"]), "evt-b"]
    for size in (1, 2, 100):
        assert await all_pages(storage, "shipped", size) == expected, size


async def all_pages(
    storage: Storage, name: str | None, size: int, since: Any = None, until: Any = None
) -> list[str]:
    """The ids of every events page of `size`, each from the cursor the previous one gave."""
    seen: list[str] = []
    before = None
    for _ in range(30):
        page, more, cut = await event_page(storage, name, since, until, size, before)
        assert not cut
        seen += [e.id for e in page]
        if more is None:
            return seen
        before = decode_cursor(more)
    raise AssertionError(f"pages never end: {seen}")
