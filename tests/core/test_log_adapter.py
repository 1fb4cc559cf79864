"""A stdlib `logging.LoggerAdapter` as the logger keeps each record's structure (no server): its
`process()` replaced the `extra` carrying `record.event` / `record.fields`, so the filter
docs/guide.md shows on `record.event` dropped nothing (an outside review's finding, failing
before its fix)."""

from __future__ import annotations

import logging

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
