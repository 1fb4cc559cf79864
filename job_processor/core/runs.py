"""How a job's runs read for people (the dashboard, the CLI), pure: each run's own outcome, and
runs, failures and attempts stated so that they add up.

`attempt` counts the runs that started (a resume and a retry after a failure are runs too);
`failures` counts the failed attempts since the job was scheduled or last retried by hand, and
`max_attempts` is how many failures it may have: "run 3 · 0 of 3 failures used" is a resumable
job that was paused twice by graceful stops, and "run 6 · 1 of 3 failures used" one retried by
hand after using its three attempts, then failing once more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
    if error.startswith("worker crashed") or "crashed during" in error:
        return "crashed"
    if status == "pending" and error == "interrupted":
        return "interrupted"  # a graceful stop: not the job's fault, no attempt used
    if status == "paused" and not error:
        return "paused"  # a resumable job stopped gracefully: resumes from its checkpoint
    if status == "pending" and error.startswith("its claim's reply was lost"):
        return "not started"
    return "failed"


def runs_summary(attempt: Any, failures: Any, max_attempts: Any) -> str:
    """ "run 3 · 0 of 3 failures used" (or "not run yet · 0 of 3 failures used")."""
    runs, allowed = int(attempt or 0), int(max_attempts or 1)
    head = f"run {runs}" if runs else "not run yet"
    return f"{head} · {int(failures or 0)} of {allowed} failure{'s' if allowed != 1 else ''} used"
