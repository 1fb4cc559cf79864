"""What running one job needs, shared by the worker, the hooks and the recovery: the Job a
handler receives, calling a handler (async or plain), the policy of a job's definition,
storable results and readable errors.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
from pydantic import ValidationError

from ..core import retention as R
from ..core.abort import AbortSignal
from ..core.definitions import HOOK_WHEN_MARK, JobDef
from ..core.errors import InvalidPayloadError, field_errors
from ..core.models import Job
from ..core.notes import storable_text
from ..core.outcome import Policy
from ..core.retention import Retention
from ..core.values import (
    MIB,
    TOO_DEEP,
    CyclicValue,
    cycle_message,
    finite_or_text,
    may_hold_non_finite,
    naive_datetime_at,
    refuse_non_finite,
    why_unstorable,
)
from ..storage.jobs import MAX_VALUE_BYTES
from ..storage.transient import WriteStop
from . import threads as threads_module
from .threads import USER_THREADS

Doc = dict[str, Any]


@dataclass
class Run:
    """One job being executed by this process."""

    doc: Doc
    definition: JobDef | None
    """None: the claimed document's name is missing or not one of this worker's jobs."""
    signal: AbortSignal = field(default_factory=AbortSignal)
    lost: bool = False
    """Set when this process learns it no longer owns the job: it must write nothing."""
    exc: BaseException | None = None
    """The handler's exception, if it raised (for Sentry)."""
    notes: Any = None
    """Its progress and log lines not written yet (`engine.notes.RunNotes`), once it runs."""
    carried: list[Any] = field(default_factory=list)
    """What else the run holds (a delivery's event payload): its secrets are hidden in logs."""
    given_up: asyncio.Event = field(default_factory=asyncio.Event)
    """Set with `lost`: ends a shutdown grace under way (another worker may run it now)."""
    writes_stop: WriteStop = field(default_factory=WriteStop)
    """Set with `lost`: its final write's try under way is cut short, none follows."""
    still_running: asyncio.Future[Any] | None = None
    """Set when the run ended with its handler still going (a plain def's thread given up,
    an async handler that swallowed its cancellation): done once it returns. Its limit slot
    is held until then."""
    returned_late: bool = False
    """A plain def's thread given up has returned (see `engine.handler`)."""

    def give_up(self) -> None:
        """This process no longer owns the job: write nothing more, stop the handler now."""
        self.lost = True
        self.given_up.set()
        self.writes_stop.set()


def eligible_names(definitions: Mapping[str, JobDef], worker_tags: list[str] | None) -> list[str]:
    """Names this worker may claim: untagged ones, plus those whose tag is in worker_tags."""
    return sorted(
        name
        for name, d in definitions.items()
        if worker_tags is None or d.tag is None or d.tag in worker_tags
    )


def logged_values(run: Run) -> tuple[Any, ...]:
    """What the worker's log lines of a run hide the secrets of: its payload, the checkpoint
    it started from, what it carries."""
    return (run.doc.get("payload"), run.doc.get("state"), *run.carried)


def paths_of(run: Run) -> tuple[str, ...]:
    """The run's definition's `sensitive_fields` (none when this process lacks it)."""
    return run.definition.sensitive_fields if run.definition is not None else ()


def policy_of(definition: JobDef | None, doc: Doc, retention: Retention) -> Policy:
    """The rules for this job: its own document says whether it is resumable (so a worker that
    does not know the definition recovers it right); the definition gives the rest, with the
    processor's retention defaults."""
    resumable = bool(doc.get("resumable", False))  # a lean document omits False
    if definition is None:
        return Policy(resumable=resumable)
    hook = definition.on_job_exited
    when = getattr(hook, HOOK_WHEN_MARK, None)
    return Policy(
        resumable=resumable,
        backoff=definition.backoff,
        has_hook=hook is not None and (when is None or bool(when(doc))),
        retention=R.of(definition, retention),
    )


#: The frames that only hand a call to the user's function (left out of tracebacks): the
#: call itself, and for a plain def the thread's side.
_PLUMBING = frozenset(
    {
        (__file__, "call_maybe_async"),
        (threads_module.__file__, "run"),
        (threads_module.__file__, "_execute"),
    }
)
#: The longest error text stored: its start (the message) and its end (where it was raised).
MAX_ERROR_CHARS = 4000


def describe_error(exc: BaseException) -> str:
    """`Type: message`, then the traceback's last 5 frames (of each chained or grouped
    exception), without those that only hand the call to the user's function."""
    if isinstance(exc, ExitCalled) and exc.__cause__ is not None:
        exc = exc.__cause__  # "SystemExit: 2" and where it was raised
    shown = traceback.TracebackException.from_exception(exc)
    _trim(shown, set())
    said = said_by(exc)
    # BSON holds UTF-8 only: a lone surrogate (a file name that is not UTF-8) as its escape
    text = storable_text(f"{type(exc).__name__}: {said}\n{''.join(shown.format())}")
    if len(text) <= MAX_ERROR_CHARS:
        return text
    head = MAX_ERROR_CHARS // 3
    tail = MAX_ERROR_CHARS - head - 7
    return f"{text[:head]}\n[...]\n{text[-tail:]}"


def said_by(exc: BaseException) -> str:
    """str(exc), or what the traceback module says when its __str__ raises (a user's bug)."""
    try:
        return str(exc)
    except Exception:
        return "<exception str() failed>"


def _trim(shown: traceback.TracebackException, seen: set[int]) -> None:
    if id(shown) in seen:
        return
    seen.add(id(shown))
    frames = [f for f in shown.stack if (f.filename, f.name) not in _PLUMBING] or list(shown.stack)
    shown.stack = traceback.StackSummary.from_list(frames[-5:])
    grouped = getattr(shown, "exceptions", None) or []  # an ExceptionGroup's (TaskGroup)
    for chained in (shown.__cause__, shown.__context__, *grouped):
        if chained is not None:
            _trim(chained, seen)


def check_state(state: Any) -> dict[str, Any]:
    """A checkpoint's state as a worker stores it: InvalidPayloadError naming what is wrong (not
    a dict, a naive datetime, what BSON cannot hold, NaN or infinity, over the size limit).
    Returns it as it is read back (a copy: a tuple as a list), which the handler's later
    changes to its own dict do not reach."""
    if not isinstance(state, dict):
        raise InvalidPayloadError(f"checkpoint state must be a dict, got {type(state).__name__}")
    try:
        naive = naive_datetime_at(state)
    except CyclicValue as exc:
        raise InvalidPayloadError(cycle_message("checkpoint state", exc)) from None
    except RecursionError:
        raise InvalidPayloadError(f"checkpoint state {TOO_DEEP}") from None
    if naive is not None:
        raise InvalidPayloadError(
            f"checkpoint state field {naive[0]!r} is a datetime without a time zone "
            f"({naive[1].isoformat()}); it would be read back as UTC: pass an aware "
            "datetime, e.g. datetime.now(UTC)"
        )
    try:
        encoded = bson.encode(state)
    except (bson.errors.InvalidDocument, TypeError, OverflowError, ValueError) as exc:
        raise InvalidPayloadError(why_unstorable("checkpoint state", state, exc)) from None
    refuse_non_finite("checkpoint state", state, encoded)
    size = len(encoded)
    if size > MAX_VALUE_BYTES:
        raise InvalidPayloadError(
            f"checkpoint state is {size / MIB:.1f} MiB ({size} bytes), over the "
            f"{MAX_VALUE_BYTES / MIB:.0f} MiB a job can hold: keep large data elsewhere and "
            "checkpoint a reference"
        )
    try:
        return bson.decode(encoded, _READ_BACK)
    except Exception as exc:  # encodes, but is not read back (a bson.DatetimeMS past 9999)
        raise InvalidPayloadError(
            f"checkpoint state could not be read back from MongoDB: {exc}"
        ) from None


class ResultTooLarge(ValueError):
    pass


_READ_BACK: bson.CodecOptions[dict[str, Any]] = bson.CodecOptions(tz_aware=True, tzinfo=dt.UTC)


def storable(value: Any) -> Any:
    """Return values go into MongoDB as-is when BSON can hold them, as repr() otherwise (NaN and
    infinity, anywhere in it, as their text: 'nan', 'inf', '-inf'; a cycle, a value nested too
    deeply, a dict keyed by datetimes or a mapping that fails to iterate, as their repr()).
    Raises ResultTooLarge past MAX_VALUE_BYTES (checked here, whatever the server enforces), and
    for a datetime without a time zone stored as a BSON date (it would be read back as UTC:
    never silently; in a repr() it is text)."""
    try:
        encoded = bson.encode({"v": value})
    except Exception:  # what BSON cannot hold; its error message may call a failing __repr__
        return unencodable(value)
    try:  # encoded: no cycle, no key that is not text, every mapping iterable
        naive = naive_datetime_at(value)
    except RecursionError:  # as deep as BSON goes, deeper than this walk may
        return unencodable(value)
    if naive is not None:
        path, when = naive
        where = f"result field {path!r}" if path and path != "(payload)" else "the result"
        raise ResultTooLarge(
            f"{where} is a datetime without a time zone ({when.isoformat()}); it would be read "
            "back as UTC: return an aware datetime, e.g. datetime.now(UTC)"
        )
    try:
        if may_hold_non_finite(encoded):
            value = finite_or_text(value)
            encoded = bson.encode({"v": value})
        size = len(encoded)
    except Exception:  # what BSON cannot hold; its error message may call a failing __repr__
        return unencodable(value)
    if value is None or type(value) in (str, int, float, bool):
        return within_limit(value, size)  # read back as it is
    # as every reader will read it (a tuple as a list, a str Enum as its text, a datetime to
    # the millisecond): the job `run_job` returns and the one on_job_exited gets hold the same
    try:
        read_back = bson.decode(encoded, _READ_BACK)["v"]
    except Exception:  # encodes, but is not read back (a bson.DatetimeMS past year 9999)
        return unencodable(value)
    return within_limit(read_back, size)


def unencodable(value: Any) -> str:
    """What is stored for a result BSON cannot hold: its repr(), or a description of it when
    repr() itself fails (it raised, or the value is nested too deeply)."""
    try:
        text = repr(value)
    except Exception as exc:  # a user's __repr__ may raise anything
        why = (
            "nested too deeply"
            if isinstance(exc, RecursionError)
            else f"{type(exc).__name__}: {said_by(exc)[:200]}"
        )
        text = f"<{type(value).__name__} that BSON cannot hold and repr() failed on: {why}>"
    return str(within_limit(text, len(text)))


def within_limit(value: Any, size: int) -> Any:
    if size > MAX_VALUE_BYTES:
        raise ResultTooLarge(
            f"the result is {size / MIB:.1f} MiB ({size} bytes), over the "
            f"{MAX_VALUE_BYTES / MIB:.0f} MiB a job can hold (MongoDB documents hold 16 MiB): "
            "store it elsewhere and return a reference"
        )
    return value


def is_async(fn: Callable[..., Any]) -> bool:
    """An async function, or a callable object with an async __call__."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )


async def call_maybe_async(
    fn: Callable[..., Any],
    *args: Any,
    on_late_return: Callable[[str, float], None] | None = None,
) -> Any:
    """Await async functions; run plain ones on the process's own threads (`engine.threads`),
    so they never block the event loop, and one that outlives its timeout never keeps another
    from running. `on_late_return(name, seconds)` is called (from that thread) when a plain
    function that was given up returns after all. A coroutine returned by either (`return
    helper()`, its await forgotten) is awaited: its result is what was meant, not its repr.
    A SystemExit it raises (`sys.exit()`, argparse) is that call's failure (`ExitCalled`):
    asyncio lets it end the event loop, and with it every job of the worker. (One raised in a
    task the function creates still does: asyncio raises it out of the loop, documented.)"""
    try:
        if is_async(fn):
            result = await fn(*args)
            if inspect.iscoroutine(result):
                result = await result
            return result
        try:
            result = await USER_THREADS.run(fn, *args, on_late_return=on_late_return)
        except KeyboardInterrupt as exc:  # raised on its thread by the function: no Ctrl-C
            raise ExitCalled(exc) from exc
        if inspect.isawaitable(result):
            result = await result
        return result
    except SystemExit as exc:
        raise ExitCalled(exc) from exc


class ExitCalled(Exception):
    """A user's function raised SystemExit (or a plain function KeyboardInterrupt, on its
    thread): a failure of that call, described as that exception itself (`describe_error`),
    never the end of the worker's process."""

    def __init__(self, exc: SystemExit | KeyboardInterrupt) -> None:
        said = f"SystemExit: {exc.code}" if isinstance(exc, SystemExit) else "KeyboardInterrupt"
        super().__init__(said)


def invalid_document(exc: Exception, definition: JobDef | None) -> str:
    """Why a claimed document cannot become the handler's Job, first line first: the payload
    model's fields named as at schedule time ("payload does not match ReportRequest: field
    'rows': ..."), then pydantic's full text."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    model = definition.payload_model if definition is not None else None
    payload = [{**e, "loc": e["loc"][1:]} for e in exc.errors() if e["loc"][:1] == ("payload",)]
    if payload and model is not None:
        first = f"payload does not match {model.__name__}: {field_errors(payload)}"
    else:
        first = field_errors(exc.errors())
    return f"{first}\n{exc}"


def build_job(doc: Doc, definition: JobDef | None) -> Job[Any]:
    """The Job a handler receives (`Job[Model]` when the definition has a payload model)."""
    model = definition.payload_model if definition is not None else None
    payload = doc.get("payload")
    if model is None and payload is not None and not isinstance(payload, dict):
        raise ValueError(f"payload must be a document (a dict), got {type(payload).__name__}")
    cls: type[Job[Any]] = Job[model] if model is not None else Job  # type: ignore[valid-type]
    return cls.model_validate(doc)


def claimed_too_late(doc: dict[str, Any], now: dt.datetime) -> bool:
    """A cron task must start within its check-in margin; a late one is never run late."""
    deadline = doc.get("start_deadline")
    return (
        doc.get("type") == "cron_task"
        and deadline is not None
        and doc.get("started_at") is None  # a resumed or retried task is not late
        and now > deadline
    )
