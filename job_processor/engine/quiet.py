"""Quiet names: built-in names that every process claims but few use (the webhook delivery,
claimed by every process that delivers webhooks). Until a job of theirs has been seen here, a
busy worker leaves them out of its claims (one name less in each: on nx-27017 one index lookup
instead of two and a merge) and looks for a due one once per `poll_interval` instead.

The rule, as docs/events.md states it:
- a worker is busy once two claims in a row found a job; an idle worker's claims (and the first
  one after a job) carry every name, and a narrowed claim that finds nothing is made again at
  once with every name;
- while busy, once per `poll_interval`, one indexed read (limit 1) looks for a due job of the
  quiet names; a read that fails narrows nothing that round;
- a quiet name is seen, for the process's life, when a job of it is claimed, found by that
  read, or made or re-queued in this process (`expect`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Protocol

from pymongo.errors import PyMongoError

from ..core.clock import Clock
from ..core.event_documents import WEBHOOK_JOB

#: Built-in names that are quiet until seen.
QUIET = frozenset({WEBHOOK_JOB})

#: Claims in a row that found a job before the quiet names are left out.
BUSY_AFTER = 2


class DueReader(Protocol):
    async def any_due(self, names: list[str], now: dt.datetime) -> bool: ...


class QuietNames:
    def __init__(self, names: Iterable[str], jobs: DueReader, clock: Clock, interval: float):
        self.names: set[str] = set(QUIET) & set(names)
        """The quiet names not seen yet (empty: every claim carries every name)."""
        self.jobs, self.clock = jobs, clock
        self.interval_ms = round(interval * 1000)
        self._probed_at: int | None = None
        """When the last probe read (epoch ms: whole numbers, as the clock gives them)."""

    def expect(self, name: str) -> None:
        """A job of `name` exists: it is claimed in every claim from now on."""
        self.names.discard(name)

    def left_out(self, found_in_row: int) -> set[str]:
        """The names a claim leaves out, after `found_in_row` claims in a row found a job."""
        return self.names if found_in_row >= BUSY_AFTER else set()

    async def probe(self, paused: frozenset[str]) -> bool:
        """Once per interval (the clock going back starts a new one): is a job of a quiet name
        due? Found, it is expected. Returns whether this round's claims may leave the quiet
        names out: False when one was found, or when the read failed (claim every name)."""
        now = self.clock.now()
        at = round(now.timestamp() * 1000)
        if self._probed_at is not None and 0 <= at - self._probed_at < self.interval_ms:
            return True
        wanted = sorted(self.names - paused)
        if not wanted:
            return True
        try:
            found = await self.jobs.any_due(wanted, now)
        except PyMongoError:
            return False  # the claim of every name says what is wrong, if anything is
        self._probed_at = at
        if not found:
            return True
        for name in wanted:
            self.expect(name)
        return False
