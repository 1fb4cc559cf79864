"""The admin verbs on events: replays, recorded in the audit log."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from ...core.clock import iso_utc
from ...core.errors import InvalidArgumentError
from ...events import queries as ev
from .base import AdminBase
from .inputs import parse_time
from .results import ActionResult


class EventsAdmin(AdminBase):
    async def replay_event(
        self,
        event_id: str,
        subscribers: Sequence[str] | None = None,
        *,
        webhook_attempts: int = 10,
        actor: str | None = None,
    ) -> ActionResult:
        """Deliver a stored event again (`events.replay_event`): new delivery jobs recorded
        with a replay id of their own; `subscribers=None` is every subscriber registered for
        it now and every enabled webhook endpoint listening to it. `changed` lists the new
        delivery job ids, `detail["deliveries"]` the deliveries (target, job id, status).
        Nothing to deliver to is reported in `skipped`. Action "event_replayed"."""

        result = self._result("event_replayed", actor)
        subscribers = ev.check_subscribers(subscribers)  # a generator is read once
        created = await ev.replay_event(
            self.storage,
            event_id,
            subscribers,
            webhook_attempts=webhook_attempts,
            clock=self.clock,
        )
        nothing = (
            "nothing to deliver to: no subscriber is registered for its name now and no "
            "enabled webhook endpoint listens to it"
        )
        detail = {"event_id": str(event_id)}
        return await self._replayed(result, created, detail, subscribers, str(event_id), nothing)

    async def replay_events(
        self,
        name: str,
        *,
        since: str | dt.datetime | None,
        until: str | dt.datetime | None = None,
        subscribers: Sequence[str] | None = None,
        limit: int = 1000,
        webhook_attempts: int = 10,
        actor: str | None = None,
    ) -> ActionResult:
        """`replay_event` for every event named `name` emitted in [since, until) (aware
        datetimes or ISO text, UTC when no offset), oldest first, at most `limit` (1000).
        Action "events_replayed"."""

        lo = parse_time(since, "since")
        if lo is None:
            raise InvalidArgumentError(
                "since is required to replay events by name: the start of the time window, "
                "e.g. 2030-01-31T09:00:00Z"
            )
        hi = parse_time(until, "until")
        result = self._result("events_replayed", actor)
        subscribers = ev.check_subscribers(subscribers)  # a generator is read once
        created = await ev.replay_events(
            self.storage,
            name,
            since=lo,
            until=hi,
            subscribers=subscribers,
            limit=limit,
            webhook_attempts=webhook_attempts,
            clock=self.clock,
        )
        window = {"name": name, "since": iso_utc(lo), "until": iso_utc(hi) if hi else ""}
        nothing = (
            f"nothing to deliver to: no event named {name!r} in the window, or no subscriber "
            "registered for it now and no enabled webhook endpoint listening to it"
        )
        return await self._replayed(result, created, window, subscribers, name, nothing)

    async def _replayed(
        self,
        result: ActionResult,
        created: Sequence[Any],
        detail: dict[str, Any],
        subscribers: Sequence[str] | None,
        what: str,
        nothing: str,
    ) -> ActionResult:
        result.changed = [str(d.job_id) for d in created if d.job_id]
        if not created:
            result.skipped[what] = nothing
        events = sorted({d.event_id for d in created})
        replays = sorted({str(d.replay_id) for d in created if d.replay_id})
        detail |= {
            "subscribers": ",".join(subscribers) if subscribers is not None else "all",
            "targets": sorted({d.target for d in created}),
            "events": len(events),
            "replay_ids": replays[:100],
        }
        await self._record(result, detail)
        result.detail["deliveries"] = [d.model_dump(mode="json") for d in created]
        return result
