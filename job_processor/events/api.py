"""The events and webhooks methods of JobProcessor (a mixin, so processor.py stays thin).

Each validates its arguments and delegates: to the EventBus (emit, which needs this process's
identity and wakes its worker) or to the storage-level functions of `events` (which a CLI or a
dashboard may call directly with a Storage).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from bson import ObjectId
from pydantic import BaseModel

from .. import events as ev
from ..core.clock import Clock
from ..core.errors import keywords_checked
from ..core.settings import Settings
from ..storage import Storage
from .bus import EventBus
from .webhooks import Webhooks


class EventsAPI:
    events: EventBus
    storage: Storage
    clock: Clock
    settings: Settings

    @property
    def webhooks(self) -> Webhooks:
        """Webhook endpoints: add / update / disable / enable / remove / list / get, and
        register_format."""
        return self.events.webhooks

    @keywords_checked
    async def emit(
        self,
        name: str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        key: str | None = None,
        sync_timeout: float = 30.0,
    ) -> ev.Event:
        """Store an event and, before returning, make sure each of its subscribers and each
        enabled webhook endpoint listening to it gets one delivery (a job), even if this
        process dies right after. `key`: one event per (name, key) while that event is kept
        (`keep_events`); emitting again with the same key returns the first event. Sync
        subscribers: waits until their deliveries end (at most `sync_timeout` seconds, then
        EventTimeoutError) and raises EventDeliveryError if one failed for good.
        EventTimeoutError subclasses EventDeliveryError: catch it first to tell them apart."""
        return await self.events.emit(name, payload, key=key, sync_timeout=sync_timeout)

    async def get_event(self, event_id: str | ObjectId) -> ev.Event:
        """The event with its deliveries (and their states), replays included."""
        return await ev.get_event(self.storage, event_id)

    async def list_events(
        self,
        name: str | None = None,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 50,
    ) -> list[ev.Event]:
        """Newest first; since inclusive, until exclusive (aware datetimes)."""
        return await ev.list_events(self.storage, name, since=since, until=until, limit=limit)

    async def replay_event(
        self, event_id: str | ObjectId, subscribers: Sequence[str] | None = None
    ) -> list[ev.Delivery]:
        """Deliver the event again (new deliveries, recorded with a replay id). None: every
        subscriber now registered and every enabled endpoint listening; or a list of subscriber
        names and "webhook:<endpoint id>"."""
        created = await ev.replay_event(
            self.storage,
            event_id,
            subscribers,
            webhook_attempts=self.events.options.max_attempts,
            clock=self.clock,
        )
        return await self.events.replayed(created, event_id=str(event_id))

    async def replay_events(
        self,
        name: str,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        subscribers: Sequence[str] | None = None,
        limit: int = ev.REPLAY_LIMIT,
    ) -> list[ev.Delivery]:
        """replay_event for each event named `name` emitted in [since, until), oldest first
        (at most `limit`, 1000 per call)."""
        created = await ev.replay_events(
            self.storage,
            name,
            since=since,
            until=until,
            subscribers=subscribers,
            limit=limit,
            webhook_attempts=self.events.options.max_attempts,
            clock=self.clock,
        )
        return await self.events.replayed(created, event_name=name)

    async def list_subscribers(self) -> list[ev.SubscriberInfo]:
        """The subscriber registry, with the live workers serving each subscriber."""
        return await ev.list_subscribers(
            self.storage, worker_timeout=self.settings.worker_timeout, clock=self.clock
        )

    async def prune_subscribers(self) -> list[str]:
        """Remove the registered subscribers this process does not declare (explicit, like
        prune_crons: an old replica restarting must not remove new subscribers)."""
        return await self.events.prune_subscribers()
