"""The public API stays where users import it from, whatever the layout underneath.

The lists below were taken from the release before the packages were split by layer
(`job_processor.admin`, `events` and `webhooks` were modules then); `data/cli_verbs.json` is
the command line's verbs and options as that release's parser declared them.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

import pytest

from job_processor.cli import build_parser

HERE = Path(__file__).parent

#: module path -> the names users import from it (the docs, the README, the examples).
PUBLIC: dict[str, list[str]] = {
    "job_processor": [
        "AbortSignal",
        "Backoff",
        "Clock",
        "CronDef",
        "DatabaseUnreachableError",
        "Delivery",
        "DoNotRetry",
        "Event",
        "EventDeliveryError",
        "EventNotFoundError",
        "EventTimeoutError",
        "FakeClock",
        "InvalidArgumentError",
        "InvalidDatabaseError",
        "InvalidDefinitionError",
        "InvalidPayloadError",
        "Job",
        "JobAbortedError",
        "JobDef",
        "JobFailedError",
        "JobLostError",
        "JobNotFoundError",
        "JobOutput",
        "JobProcessor",
        "JobProcessorError",
        "JobSpec",
        "JobStatus",
        "Limit",
        "ProcessorStatus",
        "RetryLater",
        "Subscriber",
        "SystemClock",
        "UnknownJobError",
        "WebhookEndpoint",
        "WebhookNotFoundError",
        "WebhookOptions",
        "WorkerInfo",
        "init_job_processor",
    ],
    "job_processor.testing": ["JobHarness", "in_memory_processor", "run_until_idle"],
    "job_processor.sync": ["JobClient", "JobSpec"],
    "job_processor.dashboard": [
        "DEFAULT_SENSITIVE_FIELDS",
        "MASK",
        "UNSET",
        "Dashboard",
        "DashboardConfigError",
        "Masker",
        "create_dashboard",
    ],
    "job_processor.admin": [
        "ActionResult",
        "Admin",
        "AuditEntry",
        "CronRun",
        "CronView",
        "DefinitionView",
        "JobPage",
        "Overview",
        "QueueRow",
        "ThroughputRow",
        "WorkerView",
        "check_payload",
        "decode_cursor",
        "default_actor",
        "encode_cursor",
        "hide_in_texts",
        "leaves",
        "parse_duration",
        "parse_time",
        "redact",
        "redact_any",
        "scrub",
        "values_at",
    ],
    "job_processor.cli": ["RunContext", "build_parser", "main"],
    "job_processor.events": [
        "Delivery",
        "Event",
        "Subscriber",
        "SubscriberInfo",
        "Target",
        "check_event_name",
        "check_payload",
        "complete_fanout",
        "current_targets",
        "event_id_of",
        "get_event",
        "list_events",
        "list_subscribers",
        "parse_subscribers",
        "replay_event",
        "replay_events",
        "without_jobs",
    ],
    "job_processor.webhooks": [
        "Decision",
        "Secret",
        "WebhookEndpoint",
        "WebhookError",
        "WebhookOptions",
        "Webhooks",
        "check_url",
        "classify",
        "encode_body",
        "endpoint_id_of",
        "generate_secret",
        "load_secrets",
        "parse_secret",
        "retry_after_seconds",
        "sign",
        "standard_format",
        "url_host",
        "webhook_warnings",
    ],
    "job_processor.metrics": ["Metrics", "enable", "for_database", "render", "serve"],
    "job_processor.health": ["Health", "check", "ready"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_public_name_imports_from_its_documented_path(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lost {missing}"


def test_the_package_exports_exactly_its_public_api() -> None:
    import job_processor

    assert sorted(job_processor.__all__) == sorted(PUBLIC["job_processor"])


def test_one_object_whichever_path_imports_it() -> None:
    import job_processor
    from job_processor import admin, events, webhooks
    from job_processor.ops.admin import Admin

    assert admin.Admin is Admin
    from job_processor import sync

    assert sync.JobSpec is job_processor.JobSpec
    assert events.Event is job_processor.Event
    assert webhooks.WebhookOptions is job_processor.WebhookOptions


def _verbs(parser: argparse.ArgumentParser, prefix: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    options = sorted(o for a in parser._actions for o in a.option_strings)
    positionals = [
        a.dest
        for a in parser._actions
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
    ]
    out[" ".join(prefix) or "job-processor"] = {"options": options, "positionals": positionals}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out |= _verbs(sub, [*prefix, name])
    return out


def test_the_command_line_keeps_its_verbs_and_options() -> None:
    before = json.loads((HERE / "data" / "cli_verbs.json").read_text())
    now = _verbs(build_parser(), [])
    lost = {verb: spec for verb, spec in before.items() if verb not in now}
    assert not lost, f"verbs removed: {sorted(lost)}"
    for verb, spec in before.items():
        gone = set(spec["options"]) - set(now[verb]["options"])
        assert not gone, f"{verb}: options removed: {sorted(gone)}"
        assert now[verb]["positionals"] == spec["positionals"], verb


def test_collection_names_are_unchanged() -> None:
    from mongomock_motor import AsyncMongoMockClient

    from job_processor.storage import Storage

    storage = Storage(AsyncMongoMockClient()["x"], "app_")
    names = {
        store.coll.name
        for store in (
            storage.jobs,
            storage.workers,
            storage.crons,
            storage.limits,
            storage.definitions,
            storage.paused,
            storage.audit,
            storage.events,
            storage.subscribers,
            storage.webhooks,
        )
    }
    assert names == {
        f"app_{n}"
        for n in (
            "jobs",
            "workers",
            "crons",
            "limits",
            "definitions",
            "paused",
            "audit",
            "events",
            "subscribers",
            "webhooks",
        )
    }
