"""What every operations command shares: exit codes, usage errors, the Admin opened from
MONGODB_URL, and the output (tables for people, JSON for scripts, secrets masked)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import sysconfig
import traceback
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel
from pymongo.errors import PyMongoError

from ..core.clock import iso_utc
from ..core.commands import command
from ..core.errors import DatabaseUnreachableError, JobProcessorError
from ..core.masking import DEFAULT_SENSITIVE_FIELDS, Masker, mask_job, visible
from ..core.models import Job, recorded
from ..core.status import JobStatus
from ..ops.admin import ActionResult, Admin
from ..storage.connect import (
    MISSING_URL,
    check_reachable,
    close_database,
    databases_with_data,
    holds_data,
    open_database,
)
from ..storage.transient import describe, is_transient

DONE, NOTHING, BAD_INPUT, UNREACHABLE = 0, 1, 2, 3


class UsageError(JobProcessorError):
    """Bad command-line input: exit 2."""


def mongodb_url() -> str:
    url = os.environ.get("MONGODB_URL")
    if not url:
        raise UsageError(MISSING_URL)
    return url


async def with_admin(args: argparse.Namespace, fn: Callable[[Admin], Awaitable[int]]) -> int:
    db = open_database(mongodb_url(), args.timeout)
    try:
        await check_reachable(db, args.timeout, refused_is_final=True)
        await warn_if_empty(db, args.prefix)
        admin = await Admin.open(db, args.prefix, actor=args.actor or None)
        return await fn(admin)
    finally:
        await close_database(db)


async def warn_if_empty(db: Any, prefix: str) -> None:
    """A database without job-processor collections is most likely a typo in MONGODB_URL (or a
    --prefix that differs): say so on stderr, with the databases that do hold some."""
    try:
        if await holds_data(db, prefix):
            return
        others = await databases_with_data(db, prefix)
    except PyMongoError:
        return
    where = (
        f"; databases that do: {', '.join(others)}"
        if others
        else " (or no worker or producer has used it yet)"
    )
    print(
        f"warning: database {db.name!r} holds no job-processor data ({prefix}*): check "
        f"the database name in MONGODB_URL{where}",
        file=sys.stderr,
    )


def emit_json(value: Any) -> None:
    """A `--json` output: its dates (a model's, `to_jsonable`'s, or one given as it is) as
    `iso_utc` writes them, UTC ending in Z."""
    print(json.dumps(value, indent=2, default=_plain))


def _plain(value: Any) -> Any:
    return iso_utc(value) if isinstance(value, dt.datetime) else str(value)


def when(value: dt.datetime | None) -> str:
    """A date of a table's row; "-" for none, or none recorded (another program's insert)."""
    shown = recorded(value)
    if shown is None:
        return "-"
    return shown.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def shown_json(value: Any) -> str:
    """A value as JSON for a person: its text as written (é, not \\u00e9); what could act on
    the terminal is escaped by the stream (`VisibleStream`)."""
    return json.dumps(value, ensure_ascii=False, default=str)


class VisibleStream:
    """A text stream that writes control characters as escapes (`masking.visible`): what a
    job's name, error, log line or dedup key holds is shown, and never acts on the terminal
    (escape sequences, a carriage return that hides the start of a line, bidi overrides)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        shown = visible(text)
        try:
            self._stream.write(shown)
        except UnicodeEncodeError:  # a terminal that cannot show it (PYTHONIOENCODING=latin-1)
            encoding = getattr(self._stream, "encoding", None) or "ascii"
            self._stream.write(shown.encode(encoding, "backslashreplace").decode(encoding))
        return len(text)  # what was given, as a text stream says

    def writelines(self, lines: Iterable[str]) -> None:  # else the wrapped stream's, as is
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding...
        return getattr(self._stream, name)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """One line per row: a line break or a tab inside a cell (a name another program wrote)
    is printed as its `\\uXXXX` escape, never as a row of its own."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in r] for r in rows]
    widths = [max(columns(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        line = "  ".join(c + " " * (w - columns(c)) for c, w in zip(r, widths, strict=True))
        print(line.rstrip())
    if not rows:
        print("(none)")


def _cell(value: Any) -> str:
    """A cell as printed: its control characters as the escapes the stream writes (measured
    as such)."""
    if value is None:
        return "-"
    return visible(one_line(value))


#: Characters a terminal draws over the one before: combining marks, format characters (a
#: zero-width joiner).
_ZERO_WIDTH = frozenset({"Mn", "Me", "Cf"})


def columns(text: str) -> int:
    """The columns a terminal gives `text`: two for a wide character (日本語, most emoji),
    none for one drawn over the previous (an accent given as a combining mark)."""
    return sum(
        0
        if unicodedata.category(c) in _ZERO_WIDTH
        else 2
        if unicodedata.east_asian_width(c) in "WF"
        else 1
        for c in text
    )


def one_line(value: Any) -> str:
    """A value on one line: a line break or a tab in it (a log line's message, a name another
    program wrote) printed as its `\\uXXXX` escape, never as a line that reads as another
    field of the output."""
    return str(value).replace("\n", "\\u000a").replace("\r", "\\u000d").replace("\t", "\\u0009")


def first_line(text: Any, width: int = 60) -> str:
    """The first line of a text (an error), cut to `width`; anything else as its text."""
    if text is None or text == "":
        return ""
    lines = str(text).splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= width else line[: width - 1] + "…"


#: What the CLI never prints: the dashboard's default sensitive names (on top of each
#: definition's `sensitive_fields`, which the Admin layer redacts for every reader).
MASKER = Masker(DEFAULT_SENSITIVE_FIELDS)


def masked(job: Job[Any], carried: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The job as JSON, masked (with the secrets of the event a delivery job carries)."""
    extra = (carried[job.id],) if carried and job.id in carried else ()
    return mask_job(MASKER, job, *extra)


#: Actions that make one job: reported as that job ("created job NAME ID, pending, due now").
ONE_NEW_JOB = {"job_created": "created", "job_duplicated": "created (a copy)"}


#: What an action that workers learn of at their next heartbeat says after its count.
TAKES_A_BEAT = {
    "name_paused": "live workers stop claiming it at their next heartbeat (within their "
    "heartbeat_interval, 5 s by default: a job of it due until then may still start); jobs "
    "already running go on",
    "name_resumed": "live workers claim it again from their next heartbeat (within their "
    "heartbeat_interval)",
}


def print_more(cursor: str, given: str | None) -> None:
    """The next page's cursor, on stderr: added to the command for the first page, in place
    of the `--cursor` given past it (added, the option would be given twice: refused)."""
    if given:
        print(f"more: in place of this page's cursor, --cursor {cursor}", file=sys.stderr)
    else:
        print(f"more: add --cursor {cursor}", file=sys.stderr)


def print_paused(result: ActionResult) -> None:
    """The names of the jobs the action queued that no worker runs until they are resumed."""
    for name in result.detail.get("paused") or []:
        resume = command("names resume", name)
        print(one_line(f"  {name!r} is paused: no worker runs it until `{resume}`"))


def report(result: ActionResult, as_json: bool) -> int:
    made = result.jobs[0] if result.action in ONE_NEW_JOB and result.jobs else None
    if as_json:
        extra = {"id": made.id} if made is not None else {}
        emit_json(
            result.model_dump(mode="json") | extra | {"jobs": [masked(j) for j in result.jobs]}
        )
    elif made is not None:
        due = made.scheduled_for
        when = "due now" if due <= result.at else f"due {due.isoformat(timespec='seconds')}"
        if made.status not in (JobStatus.PENDING, JobStatus.WAITING):  # running, paused
            when = (
                f"since {made.started_at.isoformat(timespec='seconds')}" if made.started_at else ""
            )
        state = f"{made.status}, {when}" if when else str(made.status)
        if made.id in result.skipped and made.status != JobStatus.SKIPPED:  # a dedup key held
            print(
                one_line(
                    f"not created: job {made.name} {made.id} ({state}) holds the key "
                    f"{made.key!r} while it is active"
                )
            )
        else:
            print(one_line(f"{ONE_NEW_JOB[result.action]} job {made.name} {made.id} ({state})"))
            print_paused(result)
            for why in result.skipped.values():
                print(f"  {one_line(why)}")
    else:
        verb = result.action.replace("_", " ")
        requested = list(result.detail.get("requested", []))
        now = [c for c in result.changed if c not in requested]  # done at once
        what = ", ".join(now[:10]) + (" ..." if len(now) > 10 else "")
        if result.done and (now or not result.changed):
            print(f"{verb}: {result.count - len(requested)}" + (f" ({what})" if what else ""))
            if result.action in TAKES_A_BEAT:
                print(f"  {TAKES_A_BEAT[result.action]}")
            print_paused(result)
        for job_id in requested:  # one line per job: a running one is aborted by its worker
            print(one_line(f"{job_id}: kill requested (its worker aborts it)"))
        for key, why in result.skipped.items():
            shown = one_line(f"{key}: nothing done: {why}")
            print(shown, file=sys.stderr if result.done else sys.stdout)
        if not result.done and not result.skipped:
            print(f"{verb}: nothing matched")
    if (
        not result.done
        and result.skipped
        and all(w == "not found" for w in result.skipped.values())
    ):
        return BAD_INPUT  # every id given is of no job: a typo, not "already done"
    return DONE if result.done else NOTHING


async def reported(result: Awaitable[ActionResult], as_json: bool) -> int:
    return report(await result, as_json)


async def listed(
    fetch: Awaitable[Sequence[BaseModel]],
    as_json: bool,
    headers: list[str],
    row: Callable[[Any], list[Any]],
) -> int:
    """A listing: JSON for scripts, else a table for people."""
    items = await fetch
    if as_json:
        emit_json([i.model_dump(mode="json") for i in items])
    else:
        table(headers, [row(i) for i in items])
    return DONE


def handle_errors(exc: BaseException, command: str = "") -> int:
    """Exit code and one-line message for an error of a command (`run`: the app factory's
    init_job_processor decides how long to wait for MongoDB)."""
    if isinstance(exc, DatabaseUnreachableError):
        where = str(exc).split(";")[0]
        wait = (
            "init_job_processor(connect_timeout=...) in the app factory sets the wait"
            if command == "run"
            else "--timeout sets the wait"
        )
        hint = "" if "connection refused" in where else f" ({wait})"  # it did not wait
        print(
            f"error: {where}; check MONGODB_URL and that the server is running{hint}",
            file=sys.stderr,
        )
        return UNREACHABLE
    if is_transient(exc):  # an outage in the middle of a command (its budget was spent)
        print(
            f"error: MongoDB stopped answering: {describe(exc)}; what was done before it is "
            "in the audit log (Admin.audit_log()); run the command again once it answers",
            file=sys.stderr,
        )
        return UNREACHABLE
    built = raised_in_user_code(exc) if command == "run" else None
    print(f"error: {exc}" + (f"\n  at {built}" if built else ""), file=sys.stderr)
    return BAD_INPUT


#: Where the library, its dependencies and Python live: frames there are not the user's.
_NOT_USER_CODE = tuple(
    Path(p).resolve()
    for p in (
        Path(__file__).parents[1],
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["stdlib"],
        sys.prefix,
        sys.base_prefix,
    )
)


def raised_in_user_code(exc: BaseException) -> str | None:
    """`path:line (function)` of the last frame of the user's code in the traceback: for `run`,
    the line of the app factory that built a bad JobDef or CronDef (None when there is none,
    an app installed into site-packages included)."""
    found = None
    for frame, line in traceback.walk_tb(exc.__traceback__):
        path = Path(frame.f_code.co_filename).resolve()
        if not any(path.is_relative_to(lib) for lib in _NOT_USER_CODE):
            found = f"{path}:{line} ({frame.f_code.co_name})"
    return found
