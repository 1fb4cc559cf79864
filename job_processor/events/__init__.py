"""Events: emit, fan out to subscribers and webhook endpoints, deliver as jobs, replay.

- `bus`: the event bus on the job engine (emit, fan-out, sync waits, serial chains, fan-out
  recovery); every delivery is a job the engine claims, retries and recovers.
- `queries`: list / show / replay from a `Storage` alone (the CLI, the dashboard, the admin).
- `webhooks`: endpoints, secrets, signing, what an answer means; `sender`: one HTTP attempt.
- `api`: the processor's event methods (a mixin of `JobProcessor`).

The records (`Event`, `Delivery`, `Target`) are in `core.models` and `Subscriber` in
`core.definitions`; they are re-exported here, where users have always imported them.

May import: `core`, `storage`, `engine`. Nothing above (`ops`, `cli`, `dashboard`, the top).
"""

from ..core.definitions import (
    SUBSCRIBER_DEFAULT_ATTEMPTS,
    Mode,
    Subscriber,
    check_event_name,
    parse_subscribers,
)
from ..core.models import Delivery, Event, SubscriberInfo, Target
from .queries import (
    REPLAY_LIMIT,
    check_payload,
    complete_fanout,
    current_targets,
    event_id_of,
    event_summary,
    get_event,
    list_events,
    list_subscribers,
    replay_event,
    replay_events,
    without_jobs,
)

__all__ = [
    "REPLAY_LIMIT",
    "SUBSCRIBER_DEFAULT_ATTEMPTS",
    "Delivery",
    "Event",
    "Mode",
    "Subscriber",
    "SubscriberInfo",
    "Target",
    "check_event_name",
    "check_payload",
    "complete_fanout",
    "current_targets",
    "event_id_of",
    "event_summary",
    "get_event",
    "list_events",
    "list_subscribers",
    "parse_subscribers",
    "replay_event",
    "replay_events",
    "without_jobs",
]
