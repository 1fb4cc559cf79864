"""One small adapter: structured events whatever logger the user gave (structlog or stdlib)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Mapping
from typing import Any

import structlog

from .errors import InvalidDefinitionError

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
#: The levels a logger given to the processor must have (`critical` falls back to `error`).
_REQUIRED = ("debug", "info", "warning", "error")


class EventLog:
    """`log.info("job_claimed", job_id=..., ...)` on structlog or a stdlib logger.

    A line that cannot be written (the pipe the logs go to was closed: `run ... | head`; a
    failing handler or processor of the user's logger) is dropped and counted in `dropped`:
    logging never stops a loop of the worker (the stdlib's handlers already swallow their own
    errors; structlog's print loggers do not)."""

    dropped = 0
    """Lines dropped in this process because writing them raised."""

    def __init__(self, target: Any, context: dict[str, Any] | None = None) -> None:
        self._target = target
        self._context = dict(context or {})
        self._stdlib = isinstance(target, logging.Logger | logging.LoggerAdapter)

    def bind(self, **fields: Any) -> EventLog:
        return EventLog(self._target, {**self._context, **fields})

    def _emit(self, level: str, event: str, fields: dict[str, Any], exc: bool = False) -> None:
        try:
            if self._stdlib and not self._target.isEnabledFor(_LEVELS[level]):
                return  # below the logger's level: nothing is built (the worker's hot path)
            merged = {**self._context, **fields}
            if self._stdlib:
                text = " ".join(f"{k}={v!r}" for k, v in merged.items())
                extras: dict[str, Any] = {}
                target, message = self._target, "%s %s"
                options: dict[str, Any] = {"exc_info": exc}
                # an adapter's process() replaces `extra` (record.event was lost): each level's
                # (an adapter around an adapter too) is run, its message kept, its extra merged
                while isinstance(target, logging.LoggerAdapter):
                    message, processed = target.process(message, options)
                    options = dict(processed)
                    extras = {**(options.pop("extra", None) or {}), **extras}
                    target = target.logger
                extra = {**extras, "event": event, "fields": merged}
                target.log(_LEVELS[level], message, event, text, **options, extra=extra)
            else:
                if exc:
                    merged["exc_info"] = True
                method = getattr(self._target, level, None)
                method = method if callable(method) else self._target.error  # no critical
                method(event, **merged)
        except Exception as exc:  # count it; say it once where something may still read it
            EventLog.dropped += 1
            if EventLog.dropped == 1:
                with contextlib.suppress(Exception):
                    print(
                        f"job-processor: a log line could not be written ({describe(exc)}); "
                        "such lines are dropped (EventLog.dropped counts them)",
                        file=sys.__stderr__,
                    )

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        """At CRITICAL (a job's `critical` log line); `error` on a logger without it."""
        self._emit("critical", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields, exc=True)


def make_log(logger: Any | None) -> EventLog:
    if logger is None:
        logger = structlog.get_logger("job_processor")
    if isinstance(logger, EventLog):
        return logger
    if isinstance(logger, Mapping):  # init_job_processor(db, {...}): its second is the logger
        raise InvalidDefinitionError(
            f"logger must be a logging.Logger or a structlog logger, got a dict "
            f"({', '.join(map(repr, list(logger)[:3]))}): definitions go by name, "
            "init_job_processor(db, jobs={...}) (crons={...} for crons): its second "
            "parameter is the logger"
        )
    inner = logger
    while isinstance(inner, logging.LoggerAdapter):
        inner = inner.logger
    if inner is not logger and not isinstance(inner, logging.Logger):
        raise InvalidDefinitionError(
            f"logger: a logging.LoggerAdapter must wrap a logging.Logger, got one around "
            f"{type(inner).__name__}: pass the structlog logger itself (structlog binds "
            "context with .bind(...)), or wrap logging.getLogger('myapp')"
        )
    if not all(callable(getattr(logger, level, None)) for level in _REQUIRED):
        name = logger if isinstance(logger, str) else "myapp"
        raise InvalidDefinitionError(
            f"logger must be a logging.Logger or a structlog logger, got "
            f"{type(logger).__name__} {logger!r:.60}: pass logging.getLogger({name!r}) (or "
            "structlog.get_logger(), or None for the default)"
        )
    return EventLog(logger)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
