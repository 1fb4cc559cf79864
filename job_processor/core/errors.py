"""Exceptions. Every message names what was wrong and how to fix it."""

from __future__ import annotations

import difflib
import functools
import inspect
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar, cast

P = ParamSpec("P")
T = TypeVar("T")


def field_errors(errors: list[Any], whole: str = "(value)") -> str:
    """A pydantic ValidationError's errors (`exc.errors()`) as one line naming each field:
    "field 'to': Field required; field 'rows': Input should be a valid integer". A nested
    definition's own error (`InvalidFieldsError`, raised by its __init__) is shown as its
    fields, under the path where it sits."""
    parts: list[str] = []
    for e in errors:
        at = ".".join(str(p) for p in e["loc"])
        inner = (e.get("ctx") or {}).get("error")
        if isinstance(inner, InvalidFieldsError):
            for field, msg in inner.fields:
                path = f"{at}.{field}" if at else field
                parts.append(f"field {path!r}: {msg}")
        else:
            parts.append(f"field {at or whole!r}: {e['msg']}")
    return "; ".join(parts)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """ " (did you mean 'x'?)" naming the closest known name first, or "" when none is close
    (the name itself is never suggested; nor any for a name that is no text)."""
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, sorted(set(known) - {name}), n=2, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def keywords_checked(fn: Callable[P, T]) -> Callable[P, T]:
    """A public verb whose unknown keyword raises a TypeError naming the verb as the user
    called it (not the internal class that defines it), the closest keyword and the ones it
    takes: "schedule_job() got an unexpected keyword argument 'prio' (did you mean
    'priority'?); it takes: ...". One set test per call."""
    params = inspect.signature(fn).parameters.values()
    keywords = [
        p.name
        for p in params
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    known = frozenset(keywords)

    def refuse(kwargs: dict[str, Any]) -> None:
        wrong = next(k for k in kwargs if k not in known)
        raise TypeError(
            f"{fn.__name__}() got an unexpected keyword argument {wrong!r}"
            f"{did_you_mean(wrong, keywords)}; it takes: {', '.join(keywords)}"
        )

    if inspect.iscoroutinefunction(fn):  # stays a coroutine function for inspect

        @functools.wraps(fn)
        async def checked_async(*args: Any, **kwargs: Any) -> Any:
            if not known.issuperset(kwargs):
                refuse(kwargs)
            return await fn(*args, **kwargs)

        return cast(Callable[P, T], checked_async)

    @functools.wraps(fn)
    def checked(*args: P.args, **kwargs: P.kwargs) -> T:
        if not known.issuperset(kwargs):
            refuse(kwargs)
        return fn(*args, **kwargs)

    return checked


def _rebuilt(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class JobProcessorError(Exception):
    """Root of every error raised by job_processor. Every one pickles (a `JobFailedError`
    re-raised from a `ProcessPoolExecutor`, say), whatever its constructor takes."""

    def __reduce__(self) -> Any:
        return (_rebuilt, (type(self), self.args, dict(self.__dict__)))


class InvalidDefinitionError(JobProcessorError, ValueError):
    """A JobDef or CronDef (or an init_job_processor option) is invalid."""


class InvalidFieldsError(InvalidDefinitionError):
    """What a definition built directly raises (`JobDef(...)`, `Backoff(...)`, ...): the
    message, and its (field, what is wrong) pairs (kept when pydantic wraps it, as validating a
    nested definition calls its own __init__)."""

    def __init__(self, message: str, fields: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.fields = fields


class UnknownJobError(JobProcessorError, KeyError):
    """A job name that was not given to init_job_processor."""

    def __init__(
        self, name: str, known: list[str], where: str = "init_job_processor(jobs={...})"
    ) -> None:
        self.name = name
        listing = ", ".join(sorted(known)) or "none"
        hint = did_you_mean(name, known)
        fix = "check the name, or add it to" if hint else "add it to"
        super().__init__(f"unknown job {name!r}{hint}: {fix} {where} (known jobs: {listing})")

    @classmethod
    def for_cron(cls, name: str, known: Sequence[str]) -> UnknownJobError:
        hint = did_you_mean(name, list(known))
        return cls._saying(
            name,
            f"unknown cron {name!r}{hint}: add it to init_job_processor(crons={{...}}) "
            f"(known: {', '.join(known) or 'none'})",
        )

    @classmethod
    def unregistered(cls, name: str, known: Sequence[str]) -> UnknownJobError:
        """A name to remove from the registry that is not in it (nothing to forget)."""
        hint = did_you_mean(name, list(known))
        return cls._saying(
            name,
            f"{name!r} is not a registered job name{hint} "
            f"(registered: {', '.join(sorted(known)) or 'none'}; see names list)",
        )

    @classmethod
    def _saying(cls, name: str, message: str) -> UnknownJobError:
        err = cls.__new__(cls)
        err.name = name
        Exception.__init__(err, message)
        return err

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return str(self.args[0])


class InvalidPayloadError(JobProcessorError, ValueError):
    """A payload that is not a dict, fails the job's payload model, or cannot be stored as BSON."""


class InvalidArgumentError(JobProcessorError, ValueError):
    """An argument of a JobProcessor method is invalid (a naive datetime, an unknown status)."""


class JobArgumentError(InvalidArgumentError, InvalidPayloadError):
    """A `schedule_job` argument beside the payload that is invalid (`priority`, `key`,
    `max_attempts`): an `InvalidArgumentError`, and an `InvalidPayloadError` too, which versions
    before 2026-12 raised for them, so that code catching that one keeps working."""


class DatabaseUnreachableError(JobProcessorError, ConnectionError):
    """MongoDB did not answer within the connect timeout (or a producer call's budget).

    For a `schedule_jobs` batch of more than 1,000 jobs cut midway: `written` holds the jobs of
    the chunks already written, `failed_at` the index of the first item that may not be, and
    `remaining` those items as JobSpecs to schedule again, their `after` references to the
    items written turned into those jobs' ids (indexes shifted to the rest).

    The call did not complete, which is not "nothing was written": a server that hung (rather
    than went away) may still run a write it had received before the call gave up. For
    `schedule_job`, `job_id` is the id its job would have: `get_job(error.job_id)` says whether
    it was written (or schedule with a `key`, which a second call cannot duplicate)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.job_id: str | None = None
        self.written: list[Any] = []
        self.failed_at: int | None = None
        self.remaining: list[Any] = []


class InvalidDatabaseError(JobProcessorError, TypeError):
    """init_job_processor was given something other than an async MongoDB database."""


class JobNotFoundError(JobProcessorError, LookupError):
    """No job has that id."""


class JobFailedError(JobProcessorError):
    """`result()` of a job that ended without a result: errored, killed or skipped. Carries
    `job_id`, `status` and `error` (the job's error, or why it was skipped)."""

    def __init__(self, job_id: str, status: str, error: str | None) -> None:
        self.job_id = job_id
        self.status = status
        self.error = error
        why = (error or "").splitlines()[0] if error else "no error recorded"
        if why == status:  # "killed": said once
            super().__init__(f"job {job_id} {status}")
        elif why.startswith(f"{status} "):  # "killed (its worker stopped heartbeating)"
            super().__init__(f"job {job_id} {why}")
        else:
            super().__init__(f"job {job_id} {status}: {why}")


class JobAbortedError(JobProcessorError):
    """Raised by AbortSignal.raise_if_aborted() once the job was asked to stop."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"job aborted: {reason}")


def _seconds(value: Any) -> float | None:
    """A number (Decimal, Fraction and numpy numbers too) as float seconds; None if it is not."""
    if not isinstance(value, numbers.Number) or isinstance(value, bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # complex; an int past a float's range
        return None


#: RetryLater's longest delay: a year, in seconds.
MAX_RETRY_DELAY = 365 * 24 * 3600


class RetryLater(JobProcessorError):
    """Raise from a handler to retry after `delay` seconds instead of the backoff's delay.
    It counts as a failed attempt: with no attempt left the job is errored."""

    def __init__(self, delay: float, reason: str = "") -> None:
        seconds = _seconds(delay)
        if seconds is None or not 0 <= seconds <= MAX_RETRY_DELAY:  # NaN fails this too
            raise ValueError(
                f"RetryLater(delay=...) must be a number of seconds from 0 to {MAX_RETRY_DELAY} "
                f"(a year), got {delay!r:.60}"
            )
        self.delay = seconds
        self.reason = reason
        super().__init__(f"retry in {self.delay:g}s" + (f": {reason}" if reason else ""))


def retry_delay(exc: RetryLater) -> float | None:
    """The delay a RetryLater asks for; None (the backoff's delay) from a subclass whose
    `__init__` never called RetryLater's, or that set a `delay` out of its bounds."""
    seconds = _seconds(getattr(exc, "delay", None))
    return seconds if seconds is not None and 0 <= seconds <= MAX_RETRY_DELAY else None


class DoNotRetry(JobProcessorError):
    """Raise from a handler to fail the job for good, whatever attempts are left."""


class JobLostError(JobProcessorError):
    """This process no longer owns the job (it was recovered by another worker or killed)."""


class EventNotFoundError(JobProcessorError, LookupError):
    """No event has that id."""


class EventDeliveryError(JobProcessorError):
    """A sync subscriber's delivery failed for good (it is recorded on its delivery job).

    `event_id` and `deliveries` (the failed Delivery records) say which and why."""

    def __init__(self, message: str, event_id: str, deliveries: list[object]) -> None:
        self.event_id = event_id
        self.deliveries = deliveries
        super().__init__(message)


class EventTimeoutError(EventDeliveryError, TimeoutError):
    """A sync subscriber's delivery did not end within emit's `sync_timeout`; it still runs."""


class WebhookNotFoundError(JobProcessorError, LookupError):
    """No webhook endpoint has that id."""
