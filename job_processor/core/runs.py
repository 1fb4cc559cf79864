"""How a job's runs read (the dashboard, the CLI, `Job.history`), pure: each run's own outcome;
runs, failures and attempts stated so that they add up; and the record of a job's last run.

A job's `history` holds its runs' records, except the last run of a job that has ended: that
one is the job's own top-level fields (attempt, worker_id, run_started_at, ended_at, status,
error), and readers derive its record from them (`with_last_run`), so the final write does not
send it twice. `retry_job` moves it into `history` before the job runs again.

`attempt` counts the runs that started (a resume and a retry after a failure are runs too);
`failures` counts the failed attempts since the job was scheduled or last retried by hand, and
`max_attempts` is how many failures it may have: "run 3 · 0 of 3 failures used" is a resumable
job that was paused twice by graceful stops, and "run 6 · 1 of 3 failures used" one retried by
hand after using its three attempts, then failing once more.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from .clock import as_utc

#: The error recorded for a run a graceful stop interrupted.
INTERRUPTED = "interrupted"

#: The error recorded for a run recovered from a worker that stopped heartbeating for
#: `worker_timeout`: the sweeper cannot tell a crash from a lost network or a blocked loop.
#: (Before, "worker crashed": still read as a crashed run.)
WORKER_SILENT = "worker stopped heartbeating (crashed, lost MongoDB, or its event loop was blocked)"

#: How the error of a claim put back unstarted ends (its reply was lost, or came while its
#: worker was stopping or being declared dead): no attempt used, the run never began.
NOT_RUN = ": not run"

#: A run's outcome, from the record the final write keeps in `history`.
OUTCOMES = ("finished", "failed", "crashed", "killed", "interrupted", "paused", "missed")


def run_outcome(entry: Mapping[str, Any]) -> str:
    """What this run came to (not the job's status after it: a failed attempt that is retried
    leaves the job pending, but the run failed)."""
    status = entry.get("status")
    error = str(entry.get("error") or "")
    if status in ("finished", "killed"):
        return str(status)
    if status == "skipped":
        return "missed"
    if error.startswith(("worker stopped heartbeating", "worker crashed")) or (
        "crashed during" in error
    ):
        return "crashed"
    if error.startswith(("its worker lost track of the run", "its worker gave the run up")):
        return "lost"  # its final write failed for good: reconciled, not the handler's failure
    if status == "pending" and error == INTERRUPTED:
        return "interrupted"  # a graceful stop: not the job's fault, no attempt used
    if status == "paused" and not error:
        return "paused"  # a resumable job stopped gracefully: resumes from its checkpoint
    if status in ("pending", "paused") and (
        error.startswith("its claim's reply was lost") or error.endswith(NOT_RUN)
    ):
        return "not started"  # put back as it was before its claim (`paused_before_claim`)
    return "failed"


def paused_before_claim(doc: Mapping[str, Any]) -> bool:
    """Whether the claimed job `doc` was `paused` when it was claimed (a resumable job paused
    by a graceful stop or a crash, or such a job put back unstarted since): its last run's
    record, the last of `history`, says `paused`, and the `output` that write left is still
    there. The claim's reply leaves the status out, and a claim read back after a lost reply
    is already `running`: the record tells either. A job killed while paused, then retried, is
    `pending` though its last run's record says `paused` (a kill while paused is no run): the
    retry removed its `output`, which every write that pauses a job sets."""
    history = doc.get("history")
    latest = history[-1] if isinstance(history, list) and history else None
    paused = isinstance(latest, Mapping) and latest.get("status") == "paused"
    return paused and doc.get("output") is not None


def runs_summary(attempt: Any, failures: Any, max_attempts: Any, status: Any = None) -> str:
    """ "run 3 · 0 of 3 failures used" (or "not run yet · ...", or "never ran · ..." for a job
    that ended without running: skipped, or errored or killed before its first run)."""
    runs, allowed = int(attempt or 0), int(max_attempts or 1)
    ended = str(getattr(status, "value", status)) in _ENDED
    head = f"run {runs}" if runs else ("never ran" if ended else "not run yet")
    return f"{head} · {int(failures or 0)} of {allowed} failure{'s' if allowed != 1 else ''} used"


#: Ended statuses whose last run is read from the job's own fields.
_ENDED = frozenset({"finished", "errored", "killed", "skipped"})


def last_run(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record of an ended job's last run, from its own fields; None when it has none (it
    never ran, or it is active) or when `history` already holds it (an older document)."""
    attempt = doc.get("attempt")
    if doc.get("status") not in _ENDED or not attempt or doc.get("run_started_at") is None:
        return None
    history = doc.get("history")
    if isinstance(history, list) and history:
        latest = history[-1]
        if (
            isinstance(latest, Mapping)
            and latest.get("attempt") == attempt
            and _same_instant(latest.get("started_at"), doc.get("run_started_at"))
        ):  # the same run (a claim put back unstarted keeps its attempt: another run)
            return None
    output = doc.get("output")
    error = output.get("error") if isinstance(output, Mapping) else None
    entry = {
        "attempt": attempt,
        "worker_id": doc.get("worker_id"),
        "started_at": doc.get("run_started_at"),
        "ended_at": doc.get("ended_at"),
        "status": doc.get("status"),
        "error": str(error).splitlines()[0][:500] if error else None,
    }
    return entry


def _same_instant(a: Any, b: Any) -> bool:
    """Two stored times of one run, to the millisecond (what BSON keeps)."""
    if isinstance(a, dt.datetime) and isinstance(b, dt.datetime):
        return abs(as_utc(a) - as_utc(b)) < dt.timedelta(milliseconds=1)
    return bool(a == b)


def with_last_run(doc: Mapping[str, Any]) -> list[Any]:
    """`history` with the last run's record (derived from the job's fields) at its end."""
    history = doc.get("history")
    past = list(history) if isinstance(history, list) else []
    last = last_run(doc)
    return [*past, last][-20:] if last is not None else past
