"""Operations on a job-processor database, from the database alone.

No handlers, no app factory, and nothing here ever changes job or cron definitions: the CLI and
the dashboard use this module, and so can your own tools.

    from job_processor.admin import Admin

    admin = await Admin.open(db)                    # db: an async pymongo / motor database
    page = await admin.list_jobs(status="errored", limit=20)
    for job in page.jobs: ...                       # job_processor.Job
    more = await admin.list_jobs(status="errored", cursor=page.next_cursor)
    result = await admin.retry([job.id for job in page.jobs], actor="alice")
    result.done, result.changed, result.skipped     # what happened, per job id

Every result is a pydantic model whose `model_dump(mode="json")` is plain JSON (payloads with
any BSON value included). Every action is compare-and-set on the job (it never overwrites a
change made meanwhile by a worker), returns an `ActionResult` saying which ids changed and why
the others did not, and is recorded in the `<prefix>audit` collection (who, when, what, which
ids) and logged. Bad input raises `InvalidArgumentError` (or `UnknownJobError`,
`JobNotFoundError`, `InvalidPayloadError`) whose message names the field and the fix.

Every listing is served by an index (see `storage/admin.py`); pages continue with an opaque
cursor token, never with `skip`.
"""

from __future__ import annotations

from .events import EventsAdmin
from .inputs import (
    DEFAULT_LIMIT,
    MAX_BULK,
    MAX_LIMIT,
    THROUGHPUT_CAP,
    check_payload,
    decode_cursor,
    default_actor,
    encode_cursor,
    parse_duration,
    parse_time,
)
from .jobs import JobsAdmin
from .names import NamesAdmin
from .results import (
    ActionResult,
    AuditEntry,
    CronRun,
    CronView,
    DefinitionView,
    JobPage,
    Overview,
    QueueRow,
    ThroughputRow,
    WorkerView,
)
from .status import StatusAdmin

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_BULK",
    "MAX_LIMIT",
    "THROUGHPUT_CAP",
    "ActionResult",
    "Admin",
    "AuditEntry",
    "CronRun",
    "CronView",
    "DefinitionView",
    "JobPage",
    "Overview",
    "QueueRow",
    "ThroughputRow",
    "WorkerView",
    "check_payload",
    "decode_cursor",
    "default_actor",
    "encode_cursor",
    "parse_duration",
    "parse_time",
]


class Admin(JobsAdmin, NamesAdmin, EventsAdmin, StatusAdmin):
    """Operator verbs on one job-processor database, one module per area: jobs
    (`admin/jobs.py`), crons (`crons.py`), names and workers (`names.py`), events (`events.py`),
    the overview and status (`status.py`); see the package docstring."""
