"""What a running handler tells about itself: its progress and its own log lines. Pure.

- `progress_of(done, total, message, now)`: the job's `progress` field, `{done, total, fraction,
  message, at}`, validated.
- `log_line(run, level, message, fields, now)`: one line, `{at, run, level, message, fields}`,
  at most `LINE_BYTES` (the message is cut to fit), its fields made JSON-safe (they are shown,
  never computed with).
- `notes_update(progress, lines)`: the update that records them, merged into a checkpoint or
  a final write, or written alone (coalesced: at most one write per second per job).
- `NoteSink`: where a `Job` sends them (a worker's coalescing writer, or `JobHarness`'s record).

The job keeps the last `LOG_LIMIT` lines (`$push` with `$slice`), across its runs.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import math
import numbers
import sys
from collections.abc import Mapping
from typing import Any, Protocol

import bson

from .clock import iso_utc
from .errors import InvalidArgumentError
from .values import fits_int64, is_utf8

Doc = dict[str, Any]

#: Lines kept on a job (the last ones, across its runs).
LOG_LIMIT = 200
#: A line's size limit, message and fields together (the message is cut to fit).
LINE_BYTES = 2048
#: Progress messages longer than this are cut.
MESSAGE_CHARS = 500
#: At most one write of progress and lines per job per this many seconds.
FLUSH_EVERY = 1.0

LEVELS = ("debug", "info", "warning", "error", "critical")
_LEVEL_NAMES = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "critical"}
#: Other names of those levels (stdlib's and structlog's), read in any case: "WARNING", "warn".
_LEVEL_ALIASES = {"warn": "warning", "fatal": "critical", "exception": "error"}


class NoteSink(Protocol):
    """Where a running job's progress and log lines go (it validates and stamps them)."""

    async def progress(self, done: Any, total: Any, message: Any) -> Doc:
        """Record the progress; returns it as stored (`progress_of`)."""
        ...

    def line(self, level: str, message: Any, fields: Mapping[str, Any]) -> None: ...

    def carry(self, value: Any) -> None:
        """What else the run holds whose secrets its log lines must hide (a delivery's
        event payload)."""
        ...


class JobLogger:
    """`job.logger`: a structlog-style bound logger whose lines go to the job's log (the same
    lines as `job.log`), with the level given: `job.logger.info("fetched", rows=40)`,
    `job.logger.bind(batch=3).warning("slow")`."""

    def __init__(self, sink: NoteSink | None, bound: Mapping[str, Any] | None = None) -> None:
        self._sink = sink
        self._bound = dict(bound or {})

    def bind(self, /, **fields: Any) -> JobLogger:
        return JobLogger(self._sink, self._bound | fields)

    def new(self, /, **fields: Any) -> JobLogger:
        return JobLogger(self._sink, fields)

    def log(self, level: str | int, event: Any, /, *args: Any, **fields: Any) -> None:
        """`level`: a name ("info") or a stdlib number (logging.INFO); the message and the
        level are positional, so that any field name (`level=`, `event=`, `message=`) is a
        field. `args`: the stdlib's %-style arguments of the message (`"rows %s", 40`)."""
        if isinstance(level, int) and not isinstance(level, bool):
            level = _LEVEL_NAMES.get(level // 10 * 10, "critical" if level > 50 else "debug")
        elif isinstance(level, str):
            level = _level_of_name(level)
        else:
            raise InvalidArgumentError(
                f"job log level {level!r}: use a name ({', '.join(LEVELS)}, in any case) or a "
                "stdlib number (logging.WARNING)"
            )
        if self._sink is None:
            raise RuntimeError(
                "job.log() and job.logger are only available inside a running handler; in a "
                "unit test, build the job with job_processor.testing.JobHarness"
            )
        if args:
            event = _formatted(event, args)
        self._sink.line(str(level), event, self._bound | fields)

    def debug(self, event: Any, /, *args: Any, **fields: Any) -> None:
        self.log("debug", event, *args, **fields)

    def info(self, event: Any, /, *args: Any, **fields: Any) -> None:
        self.log("info", event, *args, **fields)

    def warning(self, event: Any, /, *args: Any, **fields: Any) -> None:
        self.log("warning", event, *args, **fields)

    warn = warning

    def error(self, event: Any, /, *args: Any, **fields: Any) -> None:
        self.log("error", event, *args, **fields)

    def critical(self, event: Any, /, *args: Any, **fields: Any) -> None:
        self.log("critical", event, *args, **fields)

    def exception(self, event: Any, /, *args: Any, **fields: Any) -> None:
        """An error line with the exception being handled (its type and message)."""
        exc = sys.exc_info()[1]
        if exc is not None:
            fields = fields | {"exception": f"{type(exc).__name__}: {_text(exc)}"}
        self.log("error", event, *args, **fields)


def _formatted(event: Any, args: tuple[Any, ...]) -> str:
    """A message with the stdlib's %-style arguments (one mapping: by name); one they do not
    fit is kept with the arguments after it (a log call never fails a run)."""
    one = args[0] if len(args) == 1 and isinstance(args[0], Mapping) and args[0] else None
    try:
        return _text(event) % (one if one is not None else args)
    except Exception:
        return " ".join([_text(event), *(_text(a) for a in args)])


def progress_of(done: Any, total: Any, message: Any, now: dt.datetime) -> Doc:
    """`{done, total, fraction, message, at}`; `fraction` is done / total (None without a
    total; 1 for a total of 0: nothing to do), at most 1; a message over MESSAGE_CHARS is cut
    to them, ending in "…", with `cut: True`."""
    done, total = _from_decimal(done), _from_decimal(total)
    if not _number(done) or done < 0:
        raise ValueError(
            "report_progress: done must be a finite number >= 0 (an integer within 64 bits, "
            f"what MongoDB stores), got {_said(done)}"
        )
    if total is not None and (not _number(total) or total < 0):
        raise ValueError(
            "report_progress: total must be a finite number >= 0 (an integer within 64 bits, "
            f"what MongoDB stores) or None, got {_said(total)}"
        )
    if message is not None and not isinstance(message, str):
        raise ValueError(f"report_progress: message must be text or None, got {_said(message)}")
    if total is not None and float(total) == 0:  # "0 of 0", as stored (float): done
        fraction: float | None = 1.0
    else:
        fraction = min(float(done) / float(total), 1.0) if total is not None else None
    cut = False
    if message is not None and len(message) > MESSAGE_CHARS:
        cut = True  # readers mask a secret cut by its end, as in a cut log line
        message = message[: MESSAGE_CHARS - 1] + "…"
    return {
        "done": _plain(done),
        "total": None if total is None else _plain(total),
        "fraction": fraction,
        "message": storable_text(message) if message else None,
        "at": now,
    } | ({"cut": True} if cut else {})


def _said(value: Any) -> str:
    """A refused argument as an error quotes it: its repr(), an integer past Python's 4,300
    digits for text by its size, anything else whose repr() raises by its type."""
    if isinstance(value, int) and not fits_int64(value):
        return f"an integer of {value.bit_length()} bits"
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


def _level_of_name(name: str) -> str:
    """A level name in any case, an alias ("warn", "fatal"), or a custom stdlib level's name
    (logging.addLevelName) by its number; any other name is kept as "info" (a log call never
    fails a run)."""
    folded = name.lower()
    if folded in LEVELS:
        return folded
    if folded in _LEVEL_ALIASES:
        return _LEVEL_ALIASES[folded]
    number = logging.getLevelName(name)  # a registered name gives its number
    if not isinstance(number, int):  # in any case: "alert" for addLevelName(35, "ALERT")
        registered = {k.lower(): v for k, v in logging.getLevelNamesMapping().items()}
        number = registered.get(folded)
    if isinstance(number, int):
        return _LEVEL_NAMES.get(number // 10 * 10, "critical" if number > 50 else "debug")
    return "info"


def _from_decimal(value: Any) -> Any:
    """A finite Decimal (amounts in billing code) as the int or float it is: it is no
    `numbers.Real` (it does not mix with floats), and BSON stores neither as such."""
    if isinstance(value, decimal.Decimal) and value.is_finite():
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _number(value: Any) -> bool:
    """Any real number (int, float, numbers.Real such as numpy's), not a bool, NaN or an
    infinity, and an integer that BSON can hold (64 bits)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return -(2**63) <= int(value) < 2**63
    try:
        return math.isfinite(float(value))
    except (OverflowError, TypeError, ValueError):  # Fraction(10**400): no float holds it
        return False


def _plain(value: Any) -> int | float:
    """What BSON stores: a Python int or float (numpy's int64 is neither)."""
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def log_line(
    run: int, level: str, message: Any, fields: Mapping[str, Any], now: dt.datetime
) -> Doc:
    """One line of a job's log, at most LINE_BYTES once encoded (as JSON and as BSON): the
    message is cut to fit; fields that alone do not fit become one text."""
    safe = {_key(k): _shown(v) for k, v in fields.items()}
    line: Doc = {"at": now, "run": run, "level": level if level in LEVELS else "info"}
    if safe:
        line["fields"] = safe
    if _stored_size(line) > LINE_BYTES // 2:  # the fields alone are too big: one cut text
        folded = json.dumps(safe, default=str, ensure_ascii=False)  # a secret as it is written
        # 512 characters, fewer when they take over 1 KB escaped (an emoji takes 12 bytes):
        # the longest such prefix, so that the message keeps room
        lo, hi = 0, min(len(folded), LINE_BYTES // 4)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            fits = _size({"f": folded[:mid]}) - 8 <= LINE_BYTES // 2
            lo, hi = (mid, hi) if fits else (lo, mid - 1)
        line["fields"] = {"fields": folded[:lo] + "…"}
    text = storable_text(_text(message))
    room = LINE_BYTES - _stored_size(line | {"message": ""})
    if _size({"m": text}) - 8 > room:
        line["cut"] = True  # readers mask a secret cut by the end of the message
        room = LINE_BYTES - _stored_size(line | {"message": ""})
        # the longest prefix that fits escaped as JSON (a non-ASCII character takes 6 bytes
        # there, an emoji 12: a cut by the bytes over left such a message empty)
        lo, hi = 0, min(len(text), room)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            fits = _size({"m": text[:mid] + "…"}) - 8 <= room
            lo, hi = (mid, hi) if fits else (lo, mid - 1)
        text = text[:lo] + "…"
    line["message"] = text
    return line


def _size(value: Any) -> int:
    return len(json.dumps(value, default=str).encode())


def _stored_size(line: Doc) -> int:
    """A line's size as JSON or as BSON, the larger (BSON stores each list item with its index
    as a key: a list of small numbers takes about three times its JSON size)."""
    try:
        stored = len(bson.encode(line))
    except Exception:  # not BSON (a value `_shown` keeps): its JSON size
        stored = 0
    return max(_size(line), stored)


#: How deep a log field's containers are followed; deeper ones are kept as text.
FIELD_DEPTH = 20


def storable_text(text: str) -> str:
    """`text` as BSON can store it: a lone surrogate (a file name that is not UTF-8, from
    os.listdir; JSON's "\\ud800") written as its escape, the rest as it is."""
    return text if is_utf8(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _key(key: Any) -> str:
    """A field name BSON can store: text, no NUL (a C string)."""
    return storable_text(_text(key)).replace("\x00", "\\x00")


def _text(value: Any) -> str:
    """`str(value)`, or its type when its `__str__` raises (a log call never fails a run)."""
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}>"


def _shown(value: Any, depth: int = 0, within: frozenset[int] = frozenset()) -> Any:
    """A field as it is shown: JSON's own types kept, anything else as text (NaN and infinity,
    which JSON has not, and integers over MongoDB's 64 bits included); a container holding
    itself, nested past FIELD_DEPTH, or failing to iterate, as text too (a log call never
    fails a run)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return value if fits_int64(value) else _text(value)  # past 4,300 digits: `<int>`
    if isinstance(value, list | tuple | Mapping):
        if id(value) in within or depth >= FIELD_DEPTH:
            return "<cycle>" if id(value) in within else f"<nested deeper than {FIELD_DEPTH}>"
        inner = within | {id(value)}
        try:
            if isinstance(value, Mapping):
                return {_key(k): _shown(v, depth + 1, inner) for k, v in value.items()}
            return [_shown(v, depth + 1, inner) for v in value]
        except Exception:  # one that fails to iterate (a closed shelf): its text, or its type
            return storable_text(_cut(_text(value)))
    if isinstance(value, dt.datetime):  # as the JSON outputs write dates; naive: zone unknown
        return value.isoformat() if value.tzinfo is None else iso_utc(value)
    return storable_text(_cut(_text(value)))


def _cut(text: str, chars: int = 1000) -> str:
    return text if len(text) <= chars else text[:chars] + "…"


def notes_update(progress: Doc | None, lines: list[Doc]) -> Doc:
    """The update recording the latest progress and the new lines (empty: nothing to write)."""
    update: Doc = {}
    if progress is not None:
        update["$set"] = {"progress": progress}
    if lines:
        update["$push"] = {"logs": {"$each": list(lines), "$slice": -LOG_LIMIT}}
    return update


def merged(update: Doc, extra: Doc) -> Doc:
    """`update` with `extra`'s operators added (their fields never overlap)."""
    if not extra:
        return update
    out = {op: dict(fields) for op, fields in update.items()}
    for op, fields in extra.items():
        out[op] = out.get(op, {}) | dict(fields)
    return out
