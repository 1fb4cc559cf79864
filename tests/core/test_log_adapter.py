"""A stdlib `logging.LoggerAdapter` as the logger keeps each record's structure (no server): its
`process()` replaced the `extra` carrying `record.event` / `record.fields`, so the filter
docs/guide.md shows on `record.event` dropped nothing (an outside review's finding, failing
before its fix); an adapter that changes the message keeps its change, and an adapter around
an adapter keeps both extras (a second review's findings)."""

from __future__ import annotations

import logging
from typing import Any

from job_processor.core.log import EventLog


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_an_adapter_keeps_event_fields_and_its_own_extra() -> None:
    base = logging.getLogger("test.log_adapter")
    base.setLevel(logging.INFO)
    keep = Keep()
    base.addHandler(keep)
    try:
        log = EventLog(logging.LoggerAdapter(base, {"service": "api"}))
        log.info("job_started", job_id="j1")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("job_errored", job_id="j2")
    finally:
        base.removeHandler(keep)
    started, errored = keep.records
    assert (started.event, started.fields, started.service) == (  # type: ignore[attr-defined]
        "job_started",
        {"job_id": "j1"},
        "api",
    )
    assert started.getMessage() == "job_started job_id='j1'"
    assert errored.event == "job_errored" and errored.exc_info is not None  # type: ignore[attr-defined]


class Prefixed(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        msg, kwargs = super().process(msg, kwargs)
        return f"[{self.extra['tenant']}] {msg}", kwargs  # type: ignore[index]


def _logger(name: str) -> tuple[logging.Logger, Keep]:
    base = logging.getLogger(name)
    base.setLevel(logging.INFO)
    base.propagate = False
    keep = Keep()
    base.addHandler(keep)
    return base, keep


def test_an_adapter_that_changes_the_message_keeps_its_change() -> None:
    base, keep = _logger("test.rev.prefixed")
    EventLog(Prefixed(base, {"tenant": "acme"})).info("job_started", job_id="j1")
    (record,) = keep.records
    assert record.event == "job_started"  # type: ignore[attr-defined]
    assert record.getMessage() == "[acme] job_started job_id='j1'", record.getMessage()


def test_a_nested_adapter_keeps_event_and_both_extras() -> None:
    base, keep = _logger("test.rev.nested")
    inner = logging.LoggerAdapter(base, {"service": "api"})
    outer = logging.LoggerAdapter(inner, {"region": "eu"})
    EventLog(outer).info("job_started", job_id="j1")
    (record,) = keep.records
    assert getattr(record, "event", None) == "job_started"
    assert getattr(record, "fields", None) == {"job_id": "j1"}
