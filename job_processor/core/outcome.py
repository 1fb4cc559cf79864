"""The one outcome function: what a run's end makes of a job (status, failures, retry time,
whether on_job_exited is owed). Pure: every path that ends a run (the worker, the crash
recovery, a worker reconciling its own jobs) asks `decide`, so each rule lives here once.

Rules, first match wins:

- the job document is invalid, or its outcome cannot be stored: errored for good, with why,
  a failed attempt counted (killed, with why, if a kill was requested);
- a kill was requested (signal, or in the database), unless the handler returned before it saw
  one: killed;
- max runtime exceeded: a failed attempt ("max runtime exceeded");
- the handler returned: finished; but after the shutdown signal a resumable job is paused
  (its next run starts from its checkpoint);
- the worker stopped heartbeating (crashed, lost MongoDB, its event loop blocked: recovered by
  another worker), or lost track of the run: a failed attempt; a resumable job with attempts
  left is paused (resumes from its checkpoint);
- the handler raised `DoNotRetry` or `RetryLater`: a failed attempt as it says (ended, or
  retried at its time), whether a stop's signal came first or not;
- the shutdown signal, then the handler raised or was cancelled: paused if resumable, else
  pending at once ("interrupted"); neither consumes an attempt;
- the handler raised: a failed attempt (the backoff sets the retry time);
- the claim was put back unstarted (its reply was lost, or came once a stop had begun) and the
  handler never ran: back as it was at once, no attempt used (`paused` if it was paused before
  the claim, its checkpoint kept; else `pending`).

A failed attempt goes back to pending (retry at the backoff's time) while `failures <
max_attempts`, else errored. A job paused or put back at once is due from that moment (its
wait, in the metrics' oldest due age and start delay, counts from there, not from its first
due time).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from .abort import AbortReason
from .definitions import Backoff
from .retention import Retention
from .retries import backoff_delay
from .runs import INTERRUPTED, WORKER_SILENT, paused_before_claim
from .status import HOOKED, JobStatus

S = JobStatus


class Ending(StrEnum):
    RETURNED = "returned"
    RAISED = "raised"
    CANCELLED = "cancelled"
    CRASHED = "crashed"
    """Its worker stopped heartbeating (recovered by another worker's sweep)."""
    LOST_TRACK = "lost_track"
    """Running under a live worker that does not run it (its final write failed)."""
    INVALID = "invalid"
    """The job document cannot be run (a malformed field, a payload failing its model)."""
    UNRECORDABLE = "unrecordable"
    """The outcome could not be stored (e.g. a result over MongoDB's 16 MB document limit)."""
    UNSTARTED = "unstarted"
    """Claimed, but the claim's reply was lost: the handler never ran."""


@dataclass(frozen=True)
class RunEnd:
    how: Ending
    abort_reason: AbortReason | None = None
    kill_requested: bool = False
    """A kill was requested in the database (the signal may not have reached the handler)."""
    result: Any = None
    error: str | None = None
    retry_in: float | None = None
    """RetryLater's delay."""
    final: bool = False
    """DoNotRetry: no further attempt."""


@dataclass(frozen=True)
class Policy:
    """What the job's definition says, as far as this process knows it."""

    resumable: bool = False
    backoff: Backoff = field(default_factory=Backoff)
    has_hook: bool | None = None
    """None: the definition is unknown here; the hook is then recorded as owed."""
    retention: Retention | None = None
    """How long the job is kept once ended (None: unknown here, kept until a process that
    knows the definition records its hook)."""


@dataclass(frozen=True)
class Outcome:
    status: JobStatus
    result: Any = None
    error: str | None = None
    failures: int = 0
    retry_at: dt.datetime | None = None
    hook_owed: bool = False
    expires_at: dt.datetime | None = None
    """When the ended job may be deleted (TTL); never set while its hook is owed."""
    started: bool = True
    """False: claimed, never run (re-queued as it was: no attempt used, not started)."""

    @property
    def event(self) -> str:
        """The log event of a worker's final write (a run interrupted by a graceful stop is
        `job_interrupted`: queued again at once, no attempt used, not a failure)."""
        if self.status == S.PENDING and self.error == INTERRUPTED:
            return "job_interrupted"
        return {
            S.FINISHED: "job_finished",
            S.ERRORED: "job_errored",
            S.KILLED: "job_killed",
            S.PAUSED: "job_paused",
            S.PENDING: "job_retry_scheduled",
            S.SKIPPED: "cron_slot_missed",
        }[self.status]


@dataclass(frozen=True)
class _Ctx:
    doc: dict[str, Any]
    policy: Policy
    end: RunEnd
    now: dt.datetime
    rand: Callable[[], float]

    @property
    def failures(self) -> int:
        return _count(self.doc.get("failures"), 0)

    @property
    def crashed(self) -> bool:
        return self.end.how in (Ending.CRASHED, Ending.LOST_TRACK)

    def ended(self, status: JobStatus, error: str | None, result: Any = None) -> Outcome:
        owed = status in HOOKED and self.policy.has_hook is not False
        return Outcome(status, result=result, error=error, failures=self.failures, hook_owed=owed)

    def failed(self, error: str, *, final: bool = False, retry_in: float | None = None) -> Outcome:
        n = self.failures + 1
        resumable_crash = self.crashed and self.policy.resumable
        if final or n >= _count(self.doc.get("max_attempts"), 1):
            if resumable_crash and n > 1:
                error = f"{error}: crashed during {n} attempts, not resumed again"
            owed = self.policy.has_hook is not False
            return Outcome(S.ERRORED, self.end.result, error, failures=n, hook_owed=owed)
        if resumable_crash:
            # resumes from its checkpoint, due from now (metrics count its wait from here)
            return Outcome(S.PAUSED, error=error, failures=n, retry_at=self.now)
        delay = (
            retry_in if retry_in is not None else backoff_delay(self.policy.backoff, n, self.rand)
        )
        retry_at = self.now + dt.timedelta(milliseconds=int(delay * 1000))
        return Outcome(S.PENDING, self.end.result, error, failures=n, retry_at=retry_at)


def _count(value: Any, default: int) -> int:
    """A count read from a job document; a wrong type (another program wrote it, and the run
    is then errored as invalid) reads as the default, never raises."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    if not -(2**62) < value < 2**62:  # also NaN and infinities: BSON holds 64-bit integers
        return default
    return int(value)


def decide(
    doc: dict[str, Any],
    policy: Policy,
    end: RunEnd,
    now: dt.datetime,
    rand: Callable[[], float] = random.random,
) -> Outcome:
    outcome = _decide(doc, policy, end, now, rand)
    if policy.retention is None or outcome.hook_owed:
        return outcome
    expires = policy.retention.expires_at(outcome.status, now)
    return replace(outcome, expires_at=expires) if expires is not None else outcome


def _decide(
    doc: dict[str, Any],
    policy: Policy,
    end: RunEnd,
    now: dt.datetime,
    rand: Callable[[], float],
) -> Outcome:
    c = _Ctx(doc, policy, end, now, rand)
    kill = end.kill_requested or end.abort_reason == "killed"
    if end.how in (Ending.INVALID, Ending.UNRECORDABLE):
        if kill:  # kill wins here too (the errored write would not land past the request)
            return c.ended(S.KILLED, f"killed; {end.error}")
        errored = c.ended(S.ERRORED, end.error)  # a failed attempt, the last one
        return replace(errored, failures=c.failures + 1)
    if end.how == Ending.UNSTARTED and not end.kill_requested:  # never ran: no attempt used
        was = S.PAUSED if paused_before_claim(doc) else S.PENDING  # back as it was
        return Outcome(was, error=end.error, failures=c.failures, retry_at=now, started=False)
    if end.how == Ending.CRASHED:
        why = "killed (its worker stopped heartbeating)"
    elif end.how == Ending.LOST_TRACK:
        why = f"killed ({end.error or 'run lost'})"
    else:
        why = "killed"
    killed = c.ended(S.KILLED, why, end.result)
    if end.abort_reason == "killed":
        return killed
    outcome = _unkilled(c)
    # a kill request wins over every outcome but a finished run
    if end.kill_requested and outcome.status != S.FINISHED:
        return killed
    return outcome


def _unkilled(c: _Ctx) -> Outcome:
    end = c.end
    if end.abort_reason == "timeout":
        return c.failed("max runtime exceeded")
    if end.how == Ending.RETURNED:
        if end.abort_reason == "shutdown" and c.policy.resumable:
            return Outcome(S.PAUSED, failures=c.failures, retry_at=c.now)
        return c.ended(S.FINISHED, None, end.result)
    if c.crashed:
        return c.failed(WORKER_SILENT if end.how == Ending.CRASHED else end.error or "run lost")
    if end.how == Ending.RAISED and (end.final or end.retry_in is not None):
        # the handler's own verdict (DoNotRetry, RetryLater) stands, a stop or not: a webhook
        # answered 4xx or Retry-After while the worker was stopping is not sent again at once
        return c.failed(end.error or "cancelled", final=end.final, retry_in=end.retry_in)
    if end.abort_reason == "shutdown":  # stopped gracefully: not the job's fault
        if c.policy.resumable:
            return Outcome(S.PAUSED, failures=c.failures, retry_at=c.now)
        return Outcome(S.PENDING, error=INTERRUPTED, failures=c.failures, retry_at=c.now)
    return c.failed(end.error or "cancelled", final=end.final, retry_in=end.retry_in)
