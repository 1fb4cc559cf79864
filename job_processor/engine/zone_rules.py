"""The time-zone rules this process reads for its crons' zones, told apart from a replica's.

A cron's slots are computed on its zone's wall clock with the rules this process's `zoneinfo`
reads: the host's files first (`zoneinfo.TZPATH`, e.g. /usr/share/zoneinfo), else PyPI's
`tzdata` package. Two releases of the rules may disagree on a zone's future offsets (a country
that ends daylight saving time), and a slot's once-only key is its UTC instant: while two replicas
read different rules for a zone, some of its slots have two instants, and may run twice or be
skipped. Each worker document records, per zone of its crons, a digest of the zone's offsets
(`rules_digest`) and where the rules came from (`zone_source`); a worker that starts beside a
live one that defines one of those crons too and whose digest differs logs
`cron_zone_rules_differed` (see `Registry.started`).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib
import os
import zoneinfo
from collections.abc import Iterable

#: The span whose offsets are digested: fixed, so that replicas started on different days agree.
SPAN = (dt.datetime(2020, 1, 1, tzinfo=dt.UTC), dt.datetime(2045, 1, 1, tzinfo=dt.UTC))
#: Offsets are read once a day; a change between two readings is searched to the second.
STEP = 86_400


def rules_digest(tz: dt.tzinfo, span: tuple[dt.datetime, dt.datetime] = SPAN) -> str:
    """A short digest of every UTC offset `tz` gives over `span` and of the second each one
    starts (two offset changes less than a day apart may be missed: none is known)."""

    def offset(t: int) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(t, tz).utcoffset()

    t, end = int(span[0].timestamp()), int(span[1].timestamp())
    previous = offset(t)
    changes: list[tuple[int, dt.timedelta | None]] = [(t, previous)]
    while t < end:
        later = offset(t + STEP)
        if later != previous:
            lo, hi = t, t + STEP
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if offset(mid) == previous:
                    lo = mid
                else:
                    hi = mid
            changes.append((hi, later))
            previous = later
        t += STEP
    text = ";".join(f"{at}:{o.total_seconds() if o is not None else '-'}" for at, o in changes)
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:12]


@functools.cache  # unbounded: at most the ~600 IANA zones, a few bytes each
def zone_digest(key: str) -> str:
    """`rules_digest` of the zone `zoneinfo` loads for `key` (about 30 ms, once per zone and
    process: a bounded cache smaller than the crons' zones computed them all again at each
    registration)."""
    return rules_digest(zoneinfo.ZoneInfo(key))


def zone_source(key: str) -> str:
    """Where `zoneinfo` reads `key` from, as it searches: the first folder of `zoneinfo.TZPATH`
    holding it ("/usr/share/zoneinfo 2025b", the release its tzdata.zi names), else the
    `tzdata` package ("tzdata 2026f")."""
    for folder in zoneinfo.TZPATH:
        if os.path.isfile(os.path.join(folder, key)):
            return f"{folder} {_folder_release(folder)}"
    try:
        package = importlib.import_module("tzdata")
    except ImportError:
        return "not found"
    return f"tzdata {getattr(package, 'IANA_VERSION', 'of unknown release')}"


def _folder_release(folder: str) -> str:
    try:
        with open(os.path.join(folder, "tzdata.zi"), encoding="utf-8") as f:
            first = f.readline().split()
    except OSError:
        return "of unknown release"
    return first[2] if first[:2] == ["#", "version"] and len(first) > 2 else "of unknown release"


def zone_rules(zones: Iterable[str]) -> list[list[str]]:
    """[zone, digest, source] for each zone (sorted, once each): the worker document's
    `zone_rules`, a list (a zone name as a field name would be a path for MongoDB)."""
    return [[z, zone_digest(z), zone_source(z)] for z in sorted(set(zones))]
