"""The definitions registry, paused names and audit log on the three backends."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from bson import Decimal128
from pydantic import BaseModel
from pymongo.errors import PyMongoError

from job_processor import CronDef, JobDef
from job_processor.storage import Storage

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


async def noop(job: object, signal: object) -> None:
    return None


class Mail(BaseModel):
    to: str


@pytest.fixture
async def storage(any_db: Any) -> Storage:
    s = await Storage.open(any_db, "t_")
    await s.ensure_indexes()
    return s


async def test_register_keeps_first_seen_and_refreshes_last_seen(storage: Storage) -> None:
    defs = {
        "mail": JobDef(handler=noop, tag="main", payload_model=Mail, resumable=True),
        "tick": CronDef(handler=noop, cron_string="* * * * *"),
    }
    await storage.definitions.register(defs, "w1", NOW)
    later = NOW + dt.timedelta(minutes=5)
    await storage.definitions.register(defs, "w2", later)
    docs = {d["_id"]: d for d in await storage.definitions.all()}
    mail = docs["mail"]
    assert (mail["kind"], mail["tag"], mail["registered_by"]) == ("job", "main", "w2")
    # registered twice: flags read back as booleans (nx-27017 stores a $set of them as 1 / 0)
    assert mail["resumable"] is True and mail["has_exit_hook"] is False
    assert mail["delivery"] is False
    assert mail["payload_model"] == "Mail"
    assert mail["first_seen"] == NOW
    assert mail["last_seen"] == later
    assert docs["tick"]["kind"] == "cron" and docs["tick"]["cron_string"] == "* * * * *"
    await storage.definitions.seen(["mail"], NOW + dt.timedelta(hours=1))
    assert (await storage.definitions.get("mail"))["last_seen"] == NOW + dt.timedelta(hours=1)  # type: ignore[index]
    assert (await storage.definitions.get("tick"))["last_seen"] == later  # type: ignore[index]


async def test_paused_names(storage: Storage) -> None:
    assert await storage.paused.names() == set()
    assert await storage.paused.pause("mail", "alice", NOW)
    assert not await storage.paused.pause("mail", "bob", NOW)
    assert await storage.paused.names() == {"mail"}
    [doc] = await storage.paused.all()
    assert doc["paused_by"] == "alice"
    assert await storage.paused.resume("mail")
    assert not await storage.paused.resume("mail")
    assert await storage.paused.names() == set()


async def test_audit_entries_newest_first(storage: Storage) -> None:
    first = await storage.audit.record({"at": NOW, "action": "a", "ids": ["1"] * 1500})
    second = await storage.audit.record({"at": NOW, "action": "b", "ids": []})
    assert first["ids_truncated"] and len(first["ids"]) == 1000
    assert [d["action"] for d in await storage.audit.recent()] == ["b", "a"]
    assert [d["action"] for d in await storage.audit.recent(before=second["_id"])] == ["a"]


async def test_audit_pages_go_on_from_object_ids_to_text_ids_and_back(storage: Storage) -> None:
    """`$lt` compares within one BSON type: a page from an ObjectId missed the text ids
    another program wrote (MongoDB and mongomock sort them below), one from a text id the
    ObjectIds (nx-27017 sorts them below). Paged through, each entry comes once."""
    for n in range(4):
        await storage.audit.record({"at": NOW, "action": f"own-{n}", "ids": []})
    await storage.audit.coll.insert_many(
        [{"_id": f"hand-{n}", "action": f"hand-{n}"} for n in range(4)]
    )
    seen: list[str] = []
    before = None
    for _ in range(8):
        page = await storage.audit.recent(3, before)
        seen += [d["action"] for d in page]
        if len(page) < 3:
            break
        before = page[-1]["_id"]
    assert sorted(seen) == [f"{who}-{n}" for who in ("hand", "own") for n in range(4)]


async def test_audit_pages_cover_numeric_ids_in_a_stable_order(storage: Storage) -> None:
    """Entries another program wrote with a number as `_id` were never reached past the first
    page (a page went from ObjectIds to text ids only). Every kind is paged through in one
    order on every backend: the ObjectIds newest first, then the text ids, then the numbers,
    each greatest first; each entry once."""
    own = [await storage.audit.record({"at": NOW, "action": f"own-{n}"}) for n in range(4)]
    texts = [f"hand-{n}" for n in range(4)]
    numbers: list[Any] = [-2, 3.5, 7, 40, 2**40]
    await storage.audit.coll.insert_many(
        [{"_id": t, "action": t} for t in texts] + [{"_id": n, "action": n} for n in numbers]
    )
    seen: list[Any] = []
    before = None
    for _ in range(10):
        page = await storage.audit.recent(3, before)
        seen += [d["_id"] for d in page]
        if len(page) < 3:
            break
        before = page[-1]["_id"]
    assert seen == [d["_id"] for d in reversed(own)] + texts[::-1] + numbers[::-1]
    # a page's last id as the dashboard and audit_log give it (text): the stored id it names
    assert await storage.audit.stored_id("40") == 40
    assert await storage.audit.stored_id("3.5") == 3.5
    assert await storage.audit.stored_id(str(2**40)) == 2**40
    assert await storage.audit.stored_id("hand-1") == "hand-1"
    assert await storage.audit.stored_id("41") is None
    assert await storage.audit.stored_id("nope") is None
    assert await storage.audit.stored_id("9" * 20) is None  # past BSON's int64: no number


async def test_audit_pages_go_on_past_a_decimal128_id(storage: Storage) -> None:
    """A page ending on an entry another program wrote with a Decimal128 `_id` (MongoDB stores
    one; neither test server does) was read as one of the ObjectIds: the next page listed the
    numbers below it, then every text id and number again (pages repeating, never ending). A
    Decimal128 is a number: the page goes on with the numbers below it only."""
    await storage.audit.record({"at": NOW, "action": "own"})
    await storage.audit.coll.insert_many(
        [{"_id": "hand", "action": "hand"}] + [{"_id": n, "action": "n"} for n in (7, 1)]
    )
    try:
        page = await storage.audit.recent(3, Decimal128("2.5"))
    except (PyMongoError, NotImplementedError):
        pytest.skip("this server cannot compare with a Decimal128")  # mongomock
    # MongoDB: [1]; nx-27017 compares no number with a Decimal128: none
    assert [d["_id"] for d in page] in ([1], [])
