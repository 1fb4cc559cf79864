"""How long ended jobs are kept: pure rules, applied by the final write and a trimming pass.

A retention is one of:
- a `timedelta`: kept that long after it ended (an `expires_at` field, under a TTL index);
- an `int` n: the n most recently created of that name are kept (those created within the
  floor among them), and those created or ended within the floor (a bounded trimming pass
  deletes older);
- `False`: deleted at once: after the floor (below; MongoDB's TTL monitor runs every 60 s);
- `True`: kept forever.

The floor: no ended job expires sooner than `floor` after it ended, nor is trimmed sooner than
`floor` after it was created (2 x
worker_timeout, or producer_retry_seconds + 30 s when longer: 60 s by default). What makes a
retried write safe is the job it finds: a producer's insert retried after a lost reply, or an
event's fan-out completed late by a sweep, recognises the job it made by its `_id` or unique
key, and would make it again once it is deleted.

`keep_finished` applies to finished and skipped jobs, `keep_failed` to errored and killed ones.
A job whose on_job_exited is still owed is never expired: its `expires_at` is written with the
record of the hook, so a TTL never removes a job whose hook recovery still needs. `retry_job`
clears it (the job is active again). Cron tasks follow their CronDef; event deliveries the
processor's defaults; events `keep_events`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from .status import JobStatus

S = JobStatus
Keep = bool | int | dt.timedelta

#: Defaults a production user wants: a day of finished jobs (an every-second cron keeps about
#: 86,400 tasks, not 31 million a year), a month of failed ones to investigate and retry.
DEFAULT_KEEP_FINISHED: Keep = dt.timedelta(days=1)
DEFAULT_KEEP_FAILED: Keep = dt.timedelta(days=30)

FAILED = (S.ERRORED, S.KILLED)
KEPT_AS_FINISHED = (S.FINISHED, S.SKIPPED)


@dataclass(frozen=True)
class Retention:
    finished: Keep = DEFAULT_KEEP_FINISHED
    failed: Keep = DEFAULT_KEEP_FAILED
    floor: dt.timedelta = dt.timedelta(0)
    """The shortest time an ended job is kept (see the module's docstring)."""

    def for_status(self, status: JobStatus) -> Keep | None:
        if status in FAILED:
            return self.failed
        if status in KEPT_AS_FINISHED:
            return self.finished
        return None  # still active: nothing to expire

    def expires_at(self, status: JobStatus, ended: dt.datetime) -> dt.datetime | None:
        keep = self.for_status(status)
        if keep is None or keep is True:
            return None
        if keep is False:
            return ended + self.floor
        if isinstance(keep, dt.timedelta):
            return ended + max(keep, self.floor)
        return None  # a count: the trimming pass

    def counts(self) -> list[tuple[tuple[JobStatus, ...], int]]:
        """(statuses, n) for the count retentions: what the trimming pass keeps."""
        out: list[tuple[tuple[JobStatus, ...], int]] = []
        for statuses, keep in ((KEPT_AS_FINISHED, self.finished), (FAILED, self.failed)):
            if isinstance(keep, int) and not isinstance(keep, bool):
                out.append((statuses, keep))
        return out


def of(definition: Any, default: Retention) -> Retention | None:
    """A definition's retention, its unset parts taken from the processor's defaults. None for
    a definition unknown here: such jobs are kept until a process that knows them decides."""
    if definition is None:
        return None
    finished = definition.keep_finished
    failed = definition.keep_failed
    return Retention(
        finished=default.finished if finished is None else finished,
        failed=default.failed if failed is None else failed,
        floor=default.floor,
    )


def floor_of(worker_timeout: float, producer_retry_seconds: float) -> dt.timedelta:
    """The retention floor: longer than a producer's retries after a lost reply (with a
    margin), and than a sweep takes to complete a fan-out left owed (worker_timeout after
    the event, on a sweep every worker_timeout / 2)."""
    return dt.timedelta(seconds=max(2 * worker_timeout, producer_retry_seconds + 30))


#: The longest retention duration (an expiry date past it could not be written) and the
#: largest count (MongoDB's skip is a 64-bit int): `True` keeps for ever.
MAX_KEEP = dt.timedelta(days=36500)
MAX_KEEP_COUNT = 2**31 - 1


def check_keep(value: Any, field: str) -> Keep | None:
    """A clear error for a retention that is none of the four kinds, or out of range."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value < 1:
            raise ValueError(
                f"{field}={value}: a count keeps at least 1 job (False deletes at once)"
            )
        if value > MAX_KEEP_COUNT:
            raise ValueError(
                f"{field}={value}: a count keeps at most {MAX_KEEP_COUNT} jobs (True keeps "
                "every job for ever)"
            )
        return value
    if isinstance(value, dt.timedelta):
        if value <= dt.timedelta(0):
            raise ValueError(f"{field}: a duration must be positive (False deletes at once)")
        if value > MAX_KEEP:
            raise ValueError(
                f"{field}={value}: a duration is at most {MAX_KEEP.days} days (True keeps for ever)"
            )
        return value
    raise ValueError(
        f"{field} must be a timedelta (keep that long), an int (keep the n most recent per "
        f"name), False (delete at once) or True (keep forever); got {value!r}"
    )
