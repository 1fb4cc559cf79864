"""The processor's settings, checked once at init (`init_job_processor`'s options)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidDefinitionError
from .retention import MAX_KEEP, Keep, Retention, check_keep


@dataclass(frozen=True)
class Settings:
    concurrency: int = 1
    poll_interval: float = 2.0
    heartbeat_interval: float = 5.0
    worker_timeout: float = 30.0
    shutdown_grace: float = 10.0
    change_streams: bool = True
    change_stream_max_await: float = 10.0
    idle_poll_interval: float = 15.0
    retention: Retention = field(default_factory=Retention)
    """The processor's defaults for keep_finished / keep_failed."""
    unknown_name_grace: float = 3600.0
    """Seconds a job of a name no worker defines waits before it is errored."""
    loop_lag_warning: float = 1.0
    """Seconds late the heartbeat's timer may wake before `event_loop_blocked` is logged."""


def check_keep_events(value: Any) -> dt.timedelta | None:
    """Events are kept for a duration (their deliveries, being jobs, follow keep_finished /
    keep_failed): it must outlast a delivery's retries, so neither a count nor False."""
    if value is True:
        return None
    if isinstance(value, dt.timedelta) and dt.timedelta(0) < value <= MAX_KEEP:
        return value
    raise InvalidDefinitionError(
        f"keep_events must be a positive timedelta of at most {MAX_KEEP.days} days (longer "
        f"than your deliveries' retries) or True (keep forever), got {value!r}"
    )


def retention_of(
    keep_finished: Keep, keep_failed: Keep, floor: dt.timedelta = dt.timedelta(0)
) -> Retention:
    try:
        finished = check_keep(keep_finished, "keep_finished")
        failed = check_keep(keep_failed, "keep_failed")
    except ValueError as exc:
        raise InvalidDefinitionError(str(exc)) from None
    if finished is None or failed is None:
        raise InvalidDefinitionError(
            "keep_finished / keep_failed: give a timedelta, a count, True or False (not None)"
        )
    return Retention(finished=finished, failed=failed, floor=floor)


#: The longest interval or timeout a processor setting may hold: a year, in seconds.
MAX_SETTING_SECONDS = 365 * 24 * 3600


def check_retry_budget(value: Any) -> float:
    """producer_retry_seconds: a number of seconds >= 0 (0 turns the retries off), at most a
    year like every other interval (1e10 passed, then every producer call overflowed in the
    driver's timeout; 1e17 broke init_job_processor's retention floor, a timedelta)."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0 <= value <= MAX_SETTING_SECONDS  # NaN fails this too
    ):
        raise InvalidDefinitionError(
            "producer_retry_seconds must be a finite number of seconds >= 0 and at most "
            f"{MAX_SETTING_SECONDS} (a year; 0: no retry), got {value!r}"
        )
    return float(value)


#: The most jobs one process may run at once: each slot is a task (a thread for a synchronous
#: handler), and a batch claim reads up to that many jobs in one find and claims them with one
#: `$in` of their ids (2**63 was taken, then every start overflowed MongoDB's 8-byte int).
MAX_CONCURRENCY = 10_000


def check_concurrency(value: Any) -> int:
    """`concurrency`: the jobs this process runs at once, an integer from 1 to MAX_CONCURRENCY
    (past it: more processes, each with its share)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CONCURRENCY:
        raise InvalidDefinitionError(
            f"concurrency must be an integer >= 1 and at most {MAX_CONCURRENCY:,} (for more "
            f"jobs at once, run more processes), got {value!r:.60}"
        )
    return value


def check_prefix(prefix: Any) -> str:
    """`collection_prefix`: the start of every collection's name."""
    if not isinstance(prefix, str) or not prefix or any(c in prefix for c in ".$\x00"):
        raise InvalidDefinitionError(
            f"collection_prefix {prefix!r} must be a non-empty string, without '.', '$' or "
            "a NUL character"
        )
    return prefix


def check_flag(name: str, value: Any) -> bool:
    """An on/off option: True or False ("false" read from the environment is not False)."""
    if not isinstance(value, bool):
        raise InvalidDefinitionError(
            f"{name} must be True or False, got {value!r}"
            + (
                " (a string: convert it, e.g. value.lower() == 'true')"
                if isinstance(value, str)
                else ""
            )
        )
    return value


def tag_problem(tag: str) -> str | None:
    """Why a tag (a definition's, or one of worker_tags) could never be matched by a worker
    started with `job-processor run --tags` or JOB_PROCESSOR_WORKER_TAGS, which strip each tag
    and split them at commas; None when it can."""
    if tag != tag.strip():
        return (
            f"tag {tag!r} has spaces around it: `run --tags` and JOB_PROCESSOR_WORKER_TAGS "
            f"strip them, so no worker started that way would match it; write {tag.strip()!r}"
        )
    if "," in tag:
        return (
            f"tag {tag!r} holds a comma: `run --tags` and JOB_PROCESSOR_WORKER_TAGS split tags "
            "at commas, so no worker started that way would match it; a job has one tag (a "
            "worker may have several: worker_tags=['main', 'reports'])"
        )
    return None


def check_worker_tags(tags: Any) -> list[str] | None:
    """`worker_tags`: None (every job), or a non-empty list of non-empty strings."""
    if tags is None:
        return None
    if isinstance(tags, str) or not isinstance(tags, list | tuple):
        raise InvalidDefinitionError(f"worker_tags must be a list of strings or None, got {tags!r}")
    if not tags:
        raise InvalidDefinitionError(
            "worker_tags=[] would run no job: pass None to run every job, or a list such as "
            "['main']"
        )
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            raise InvalidDefinitionError(
                f"worker_tags entries must be non-empty strings (a job's tag is one), got "
                f"{tag!r} in {list(tags)!r}"
            )
        problem = tag_problem(tag)
        if problem is not None:
            raise InvalidDefinitionError(f"worker_tags entries: {problem}")
    return list(tags)


def check_instance_id(instance_id: Any) -> str | None:
    if instance_id is not None and not isinstance(instance_id, str):
        raise InvalidDefinitionError(
            f"instance_id must be a string or None (INSTANCE_ID is read then), got {instance_id!r}"
        )
    return instance_id


def check_positive(name: str, value: float) -> float:
    """A processor's interval or timeout: a number of seconds above 0, at most a year (NaN is
    refused: a poll of NaN seconds would spin; so is infinity, which cannot be stored, added to
    a date or given to a socket: a year is as good as never)."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0 < value <= MAX_SETTING_SECONDS  # NaN fails this too
    ):
        never = " (math.inf is refused: for never, a year will do)" if value == float("inf") else ""
        raise InvalidDefinitionError(
            f"{name} must be a number of seconds above 0 and at most {MAX_SETTING_SECONDS} "
            f"(a year), got {value!r}{never}"
        )
    return float(value)
