"""Job statuses and the table of allowed status transitions (the one place they are written)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from .errors import InvalidArgumentError


class JobStatus(StrEnum):
    PENDING = "pending"
    WAITING = "waiting"
    """Scheduled with `after=[...]`: waits for its dependencies to end."""
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    ERRORED = "errored"
    KILLED = "killed"
    SKIPPED = "skipped"


S = JobStatus

#: A job in one of these holds its exclusive slot and can still run.
ACTIVE: frozenset[JobStatus] = frozenset({S.WAITING, S.PENDING, S.RUNNING, S.PAUSED})
#: A job in one of these will never run again (until an explicit retry).
TERMINAL: frozenset[JobStatus] = frozenset({S.FINISHED, S.ERRORED, S.KILLED, S.SKIPPED})
#: A worker may claim these.
CLAIMABLE: tuple[JobStatus, ...] = (S.PENDING, S.PAUSED)
#: Terminal statuses that owe an `on_job_exited` call (a skipped job never ran: no hook).
HOOKED: frozenset[JobStatus] = frozenset({S.FINISHED, S.ERRORED, S.KILLED})

#: Every status change the store may make: (from, to). `None` = inserted with that status, or
#: a bare insert another program made (no status yet: adopted as pending, or killed).
#: The store checks each compare-and-set against this table; nothing else happens to a job.
TRANSITIONS: frozenset[tuple[JobStatus | None, JobStatus]] = frozenset(
    {
        (None, S.PENDING),  # schedule_job
        (None, S.RUNNING),  # run_job (claimed at insert by the caller)
        (None, S.SKIPPED),  # exclusive conflict, missed cron slot
        (S.PENDING, S.RUNNING),  # claim
        (S.PAUSED, S.RUNNING),  # resume
        (S.PENDING, S.KILLED),  # kill before it ran
        (None, S.KILLED),  # kill of a bare insert not adopted yet
        (S.PAUSED, S.KILLED),  # kill while paused
        (S.RUNNING, S.FINISHED),
        (S.RUNNING, S.ERRORED),  # exception, timeout, crash with no attempt left, invalid job
        (S.RUNNING, S.KILLED),
        (S.RUNNING, S.PAUSED),  # resumable: graceful stop, or crash recovery with attempts left
        (S.RUNNING, S.PENDING),  # failed attempt with attempts left, or interrupted by a stop
        (S.ERRORED, S.PENDING),  # retry_job
        (S.KILLED, S.PENDING),  # retry_job
        (S.PENDING, S.SKIPPED),  # cron task not started within its margin
        (S.PENDING, S.ERRORED),  # inserted by another program under a name no worker defines
        (S.RUNNING, S.SKIPPED),  # cron task claimed after its margin: not run
        (None, S.WAITING),  # schedule_job(after=[...])
        (S.WAITING, S.PENDING),  # its last dependency ended (or failed, with policy "run")
        (S.WAITING, S.SKIPPED),  # a dependency failed, policy "skip"
        (S.WAITING, S.ERRORED),  # a dependency failed, policy "error"
        (S.WAITING, S.KILLED),  # kill while waiting
        (S.KILLED, S.WAITING),  # retry of a job killed while some dependency had not ended
        (S.ERRORED, S.WAITING),  # (the same, for a job errored by an admin path)
    }
)


class InvalidTransitionError(AssertionError):
    pass


def check_transition(old: JobStatus | None, new: JobStatus) -> None:
    if (old, new) not in TRANSITIONS:
        raise InvalidTransitionError(f"job status {old} -> {new} is not an allowed transition")


def parse_status(value: Any) -> JobStatus:
    """A status given by a user (`list_jobs(status=...)`, the CLI), in any case ("Finished"): a
    clear error if unknown."""
    try:
        return JobStatus(value.strip().lower() if isinstance(value, str) else value)
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise InvalidArgumentError(f"unknown status {value!r}: use one of {known}") from None
