"""Replicas that read different time-zone rules for a cron's zone are told apart: each worker
document records a digest of its crons' zones' rules, and a worker that starts beside a live one
whose digest differs warns (`cron_zone_rules_differed`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import logging
import os
import threading
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from job_processor.core.coverage import zone_rules_differ
from job_processor.engine.zone_rules import rules_digest, zone_digest, zone_rules, zone_source
from job_processor.ops.admin import Admin
from tests.helpers import make

PARIS = zoneinfo.ZoneInfo("Europe/Paris")


class NoSummerTime2027(dt.tzinfo):
    """Europe/Paris under rules that end daylight saving time in 2027 (what a newer tzdata
    release says of some zones while an older one still has the old rules)."""

    def utcoffset(self, d: dt.datetime | None) -> dt.timedelta | None:
        assert d is not None
        if d.year == 2027:
            return dt.timedelta(hours=1)
        return PARIS.utcoffset(d.replace(tzinfo=None))

    def dst(self, d: dt.datetime | None) -> dt.timedelta | None:
        return None

    def fromutc(self, d: dt.datetime) -> dt.datetime:
        if d.year == 2027:
            return d + dt.timedelta(hours=1)
        return PARIS.fromutc(d.replace(tzinfo=PARIS)).replace(tzinfo=self)


def test_the_digest_tells_rules_that_differ_in_one_future_year_apart() -> None:
    assert rules_digest(PARIS) == rules_digest(zoneinfo.ZoneInfo("Europe/Paris"))
    assert rules_digest(NoSummerTime2027()) != rules_digest(PARIS)
    # the same offsets over the span read from another zone name: the same rules
    assert zone_digest("Europe/Paris") == zone_digest("Europe/Monaco")
    assert zone_digest("Europe/Paris") != zone_digest("Europe/London")
    assert zone_digest("UTC") == rules_digest(dt.UTC)


def test_a_transition_moved_by_an_hour_changes_the_digest() -> None:
    """Offsets are read once a day; the second a change starts is searched, so rules that
    change the offset on the same day at another hour differ too."""
    at = dt.datetime(2030, 3, 31, 1)
    assert rules_digest(Switch(at)) == rules_digest(Switch(at))
    assert rules_digest(Switch(at)) != rules_digest(Switch(at + dt.timedelta(hours=1)))
    assert rules_digest(Switch(at)) != rules_digest(Switch(at + dt.timedelta(seconds=1)))


class Switch(dt.tzinfo):
    """UTC+1, then UTC+2 from `at` (a naive UTC time) on."""

    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def utcoffset(self, d: dt.datetime | None) -> dt.timedelta:
        assert d is not None  # a local time: the hour after the switch does not exist
        local = d.replace(tzinfo=None)
        return dt.timedelta(hours=2 if local >= self.at + dt.timedelta(hours=1) else 1)

    def dst(self, d: dt.datetime | None) -> None:
        return None

    def fromutc(self, d: dt.datetime) -> dt.datetime:
        utc = d.replace(tzinfo=None)
        return (utc + dt.timedelta(hours=2 if utc >= self.at else 1)).replace(tzinfo=self)


@pytest.fixture
def tz_folder(tmp_path: Path) -> Iterator[Path]:
    """zoneinfo searching only a folder of the test's (restored after)."""
    zoneinfo.reset_tzpath(to=[str(tmp_path)])
    try:
        yield tmp_path
    finally:
        zoneinfo.reset_tzpath()


def test_the_source_is_where_zoneinfo_reads_the_zone(tz_folder: Path) -> None:
    system = next(
        (p for p in ("/usr/share/zoneinfo", "/usr/lib/zoneinfo") if os.path.isfile(p + "/UTC")),
        None,
    )
    assert system is not None, "the host has no zoneinfo files to copy"
    (tz_folder / "Europe").mkdir()
    (tz_folder / "Europe" / "Paris").write_bytes(Path(system, "Europe", "Paris").read_bytes())
    (tz_folder / "tzdata.zi").write_text("# version 2099z\n# more\n")
    assert zone_source("Europe/Paris") == f"{tz_folder} 2099z"
    (tz_folder / "tzdata.zi").unlink()
    assert zone_source("Europe/Paris") == f"{tz_folder} of unknown release"
    # not in the folder: the tzdata package, as zoneinfo falls back to it
    tzdata = importlib.import_module("tzdata")  # croniter's python-dateutil requires it
    assert zone_source("Asia/Tokyo") == f"tzdata {tzdata.IANA_VERSION}"
    assert zone_rules(["Europe/Paris", "UTC", "Europe/Paris"]) == [
        ["Europe/Paris", zone_digest("Europe/Paris"), f"{tz_folder} of unknown release"],
        ["UTC", zone_digest("UTC"), f"tzdata {tzdata.IANA_VERSION}"],
    ]


def test_zone_rules_differ_names_the_other_workers_and_their_source() -> None:
    mine = [["Europe/Paris", "aaa", "/usr/share/zoneinfo 2025b"], ["UTC", "u", "x"]]
    crons = {"Europe/Paris": ["report", "digest"], "UTC": ["cleanup"]}
    both = {"definitions": {"report": "d1", "cleanup": "d2"}}
    live: list[dict[str, Any]] = [
        {"_id": "me", "zone_rules": [["Europe/Paris", "zzz", "?"]]} | both,  # itself
        {"_id": "w2", "zone_rules": [["Europe/Paris", "bbb", "tzdata 2026f"], ["UTC", "u", "y"]]}
        | both,
        {"_id": "w3", "zone_rules": [["Europe/Paris", "aaa", "/usr/share/zoneinfo 2025b"]]} | both,
        {"_id": "w4", "zone_rules": [["Asia/Tokyo", "t", "s"]]} | both,  # a zone this one has not
        {"_id": "w5"} | both,  # an older version: no digests
        {"_id": "w6", "zone_rules": {"Europe/Paris": "ccc"}} | both,  # another program's shape
        {"_id": "w7", "zone_rules": [["Europe/Paris", 1, "s"], "x", ["UTC"]]} | both,
        # another app: other rules for Paris, but none of this worker's crons (fires no slot)
        {"_id": "w8", "zone_rules": [["Europe/Paris", "ddd", "s"]], "definitions": {"x": "d"}},
        {"_id": "w9", "zone_rules": [["Europe/Paris", "eee", "s"]]},
    ]
    assert zone_rules_differ(mine, crons, "me", live) == {
        "Europe/Paris": (["w2 (tzdata 2026f)"], ["report"])
    }


async def tick(job: Any, signal: Any) -> None:
    return None


CRONS = {
    "paris-report": {"cron_string": "0 9 * * *", "handler": tick, "timezone": "Europe/Paris"},
    "paris-digest": {"cron_string": "0 18 * * *", "handler": tick, "timezone": "Europe/Paris"},
    "utc-cleanup": {"cron_string": "0 * * * *", "handler": tick},
}


async def test_a_worker_beside_a_replica_reading_other_rules_warns(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test.zone_rules")
    older = await make(db, {}, crons=CRONS, instance_id="older", logger=logger)
    newer = await make(db, {}, crons=CRONS, instance_id="newer", logger=logger)
    same = await make(db, {}, crons=CRONS, instance_id="same", logger=logger)
    with caplog.at_level(logging.INFO, logger="test.zone_rules"):
        async with older:
            doc = await db["job_processor_workers"].find_one({"_id": older.worker_id})
            assert doc["zone_rules"] == [
                ["Europe/Paris", zone_digest("Europe/Paris"), zone_source("Europe/Paris")],
                ["UTC", zone_digest("UTC"), zone_source("UTC")],
            ]
            async with same:  # the same rules: nothing to say
                pass
            # the older replica's image read other rules for Paris (another tzdata release)
            await db["job_processor_workers"].update_one(
                {"_id": older.worker_id},
                {
                    "$set": {
                        "zone_rules": [
                            ["Europe/Paris", "0123456789ab", "tzdata 2025a"],
                            ["UTC", zone_digest("UTC"), "tzdata 2025a"],
                        ]
                    }
                },
            )
            assert not [w for w in (await older.get_status()).warnings if "time zone" in w]
            async with newer:
                # status pages say it while both are live, on every process
                expected = (
                    "time zone 'Europe/Paris' (crons 'paris-digest', 'paris-report'): live "
                    "workers read different rules for it (2 versions, one per group: "
                    f"newer ({zone_source('Europe/Paris')}); older (tzdata 2025a)): some slots "
                    "fall at different instants on each, and may run twice or be skipped; give "
                    "every replica the same rules (the same base image, or PYTHONTZPATH= and one "
                    "pinned tzdata)"
                )
                admin = Admin(db)
                for status in (
                    await older.get_status(),
                    await admin.overview(),
                    await admin.status(),
                ):
                    assert [w for w in status.warnings if "time zone" in w] == [expected]

    said = [
        r.__dict__["fields"]
        for r in caplog.records
        if r.__dict__.get("event") == "cron_zone_rules_differed"
    ]
    assert said == [
        {
            "timezone": "Europe/Paris",
            "cron_names": ["paris-digest", "paris-report"],
            "worker_id": newer.worker_id,
            "tz_source": zone_source("Europe/Paris"),
            "other_workers": [f"{older.worker_id} (tzdata 2025a)"],
            "hint": "these replicas place some of the zone's slots at different instants: one "
            "may run twice or be skipped; give every replica the same rules (the same base "
            "image, or PYTHONTZPATH= and one pinned tzdata package)",
        }
    ]


async def test_apps_that_share_no_cron_of_a_zone_are_not_warned_about(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Two apps on one database, each with its own cron in Europe/Paris, built from images
    reading other rules: each slot is fired by one app only, so none runs twice; nothing to
    say (the warning is about replicas firing the same cron)."""
    logger = logging.getLogger("test.zone_rules.apps")
    billing = await make(
        db, {}, crons={"invoices": CRONS["paris-report"]}, instance_id="billing", logger=logger
    )
    mail = await make(
        db, {}, crons={"newsletter": CRONS["paris-digest"]}, instance_id="mail", logger=logger
    )
    with caplog.at_level(logging.INFO, logger="test.zone_rules.apps"):
        async with billing:
            await db["job_processor_workers"].update_one(
                {"_id": billing.worker_id},
                {"$set": {"zone_rules": [["Europe/Paris", "0123456789ab", "tzdata 2025a"]]}},
            )
            async with mail:
                for status in (
                    await mail.get_status(),
                    await Admin(db).overview(),
                ):
                    assert not [w for w in status.warnings if "time zone" in w]
    assert not [r for r in caplog.records if r.__dict__.get("event") == "cron_zone_rules_differed"]


def test_each_zone_is_digested_once_however_many_zones(monkeypatch: pytest.MonkeyPatch) -> None:
    """A digest costs tens of ms on the event loop, and zone_rules() runs at registration and
    again at start: with more zones than a small cache holds, every call computed them all
    again (seconds at each start and re-registration of a worker with crons in 100 zones)."""
    digested: list[str] = []

    def counted(tz: dt.tzinfo, span: Any = None) -> str:
        digested.append(str(tz))
        return str(tz)

    monkeypatch.setattr("job_processor.engine.zone_rules.rules_digest", counted)
    zone_digest.cache_clear()
    try:
        zones = sorted(zoneinfo.available_timezones())[:100]
        assert [row[1] for row in zone_rules(zones)] == zones
        assert [row[1] for row in zone_rules(zones)] == zones
        assert sorted(digested) == zones  # once each
    finally:
        zone_digest.cache_clear()


async def test_the_digests_are_computed_off_the_event_loop(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """~30 ms a zone: a processor with crons in a hundred zones held the event loop of the
    app it runs in (its web requests, other processors) for seconds at each start."""
    loop = asyncio.get_running_loop()
    seen: list[bool] = []

    def loop_stays_free(tz: dt.tzinfo, span: Any = None) -> str:
        answered = threading.Event()
        loop.call_soon_threadsafe(answered.set)
        seen.append(answered.wait(timeout=2))
        return "d"

    processor = await make(db, {}, crons=CRONS)
    monkeypatch.setattr("job_processor.engine.zone_rules.rules_digest", loop_stays_free)
    zone_digest.cache_clear()
    try:
        await processor.heartbeat.register()
    finally:
        zone_digest.cache_clear()
    assert seen == [True, True]  # Europe/Paris, UTC
    doc = await db["job_processor_workers"].find_one({"_id": processor.worker_id})
    assert [row[:2] for row in doc["zone_rules"]] == [["Europe/Paris", "d"], ["UTC", "d"]]
