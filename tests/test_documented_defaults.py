"""The defaults the docs print are the code's: read from the docs' own text, compared with the
signatures and models (a default changed in one place and not the other fails here)."""

from __future__ import annotations

import ast
import datetime as dt
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from job_processor import Backoff, CronDef, JobDef, Subscriber, init_job_processor
from job_processor.cli.parser import build_parser
from job_processor.events.webhooks import WebhookOptions
from job_processor.storage import PRODUCER_RETRY_SECONDS
from job_processor.sync import JobClient

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _block(doc: str, opening: str) -> str:
    """The first ```python block of `doc` whose first line starts with `opening`."""
    for block in re.findall(r"```python\n(.*?)```", (DOCS / doc).read_text(), re.S):
        if block.lstrip().startswith(opening):
            return str(block)
    raise AssertionError(f"no python block starting with {opening!r} in docs/{doc}")


def _documented(block: str) -> dict[str, Any]:
    """`name=value,` lines (with or without a comment): the documented default of each keyword."""
    found: dict[str, Any] = {}
    for name, value in re.findall(r"^\s+(\w+)=(.+?),(?:\s+#.*)?$", block, re.M):
        if value in ("{...}", name):  # jobs={...}, handler=handler: no default to compare
            continue
        if value == "Backoff()":
            found[name] = Backoff()
        elif value.startswith("timedelta("):  # timedelta(days=N): its keywords, literal
            call = ast.parse(value, mode="eval").body
            assert isinstance(call, ast.Call), value
            found[name] = dt.timedelta(
                **{k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
            )
        else:
            found[name] = ast.literal_eval(value)
    return found


def _signature_defaults(fn: Any) -> dict[str, Any]:
    return {
        n: p.default
        for n, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_init_job_processor_defaults_are_the_guides() -> None:
    documented = _documented(_block("guide.md", "processor = await init_job_processor("))
    actual = _signature_defaults(init_job_processor)
    assert len(documented) >= 19
    assert {n: actual[n] for n in documented} == documented


def test_jobdef_defaults_are_the_guides() -> None:
    block = _block("guide.md", "JobDef(")
    documented = _documented(block)
    assert {n: JobDef.model_fields[n].default for n in documented} == documented
    # "max_attempts: failed attempts allowed; default 1, or 3 for a resumable job"
    handler = lambda job, signal: None  # noqa: E731
    assert JobDef(handler=handler).attempts == 1
    assert JobDef(handler=handler, resumable=True).attempts == 3
    # the Backoff() comment spells its defaults out
    spelled = re.search(r"Backoff\(kind=\"(\w+)\", base_seconds=(\d+),\s*#?\s*max_seconds=(\d+), "
                        r"jitter=(\w+)\)", block)  # fmt: skip
    assert spelled is not None
    kind, base, cap, jitter = spelled.groups()
    assert Backoff() == Backoff(
        kind=kind,  # type: ignore[arg-type]
        base_seconds=float(base),
        max_seconds=float(cap),
        jitter=jitter == "True",
    )


def test_crondef_defaults_are_the_guides() -> None:
    text = (DOCS / "guide.md").read_text()
    assert '`checkin_margin` (minutes, default 5) and `timezone` (default\n`"UTC"`)' in text
    assert CronDef.model_fields["checkin_margin"].default == 5
    assert CronDef.model_fields["timezone"].default == "UTC"


def _call_defaults(doc: str, call: str, tick: bool = True) -> dict[str, str]:
    """`call(a, b=1, c="x")` as printed in `doc`: its keyword defaults, as text."""
    text = " ".join((DOCS / doc).read_text().split())
    found = re.search(("`" if tick else "") + re.escape(call) + r"\((.*?)\)`", text)
    assert found is not None, f"{call}(...) not found in docs/{doc}"
    return dict(re.findall(r"(\w+)=([^,]+(?:\([^)]*\))?)", found.group(1)))


def test_subscriber_and_webhook_defaults_are_events_mds() -> None:
    sub = _call_defaults("events.md", "Subscriber")
    assert sub == {
        "mode": '"async"',
        "max_attempts": "3",
        "backoff": "Backoff()",
        "tag": "None",
        "max_runtime_in_minutes": "None",
    }
    fields = Subscriber.model_fields
    assert fields["mode"].default == "async" and fields["max_attempts"].default == 3
    assert fields["backoff"].default == Backoff() and fields["tag"].default is None
    assert fields["max_runtime_in_minutes"].default is None
    hooks = _call_defaults("events.md", "webhook_options= WebhookOptions", tick=False)
    assert hooks == {
        "max_attempts": "10",
        "backoff": "...",
        "timeout": "10",
        "disable_after": "20",
        "deliver": "True",
    }
    options = WebhookOptions()
    assert (options.max_attempts, options.timeout, options.disable_after, options.deliver) == (
        10,
        10,
        20,
        True,
    )
    # "exponential backoff (10 s, 20 s, 40 s, ... capped at an hour, with jitter)"
    assert options.backoff == Backoff(
        kind="exponential", base_seconds=10, max_seconds=3600, jitter=True
    )
    # "at most `sync_timeout` seconds (default 30)"
    assert inspect.signature(JobClient.emit).parameters["sync_timeout"].default == 30


def test_job_client_defaults_are_producers_mds() -> None:
    documented = _call_defaults("producers.md", "JobClient")
    assert documented == {
        "jobs": "None",
        "prefix": '"job_processor_"',
        "producer_retry_seconds": "10",
        "connect_timeout": "10",
        "logger": "None",
        "keep_events": "timedelta(days=30)",
    }
    actual = _signature_defaults(JobClient.__init__)
    assert actual == {
        "jobs": None,
        "prefix": "job_processor_",
        "producer_retry_seconds": 10,
        "connect_timeout": 10,
        "logger": None,
        "keep_events": dt.timedelta(days=30),
    }
    assert PRODUCER_RETRY_SECONDS == 10  # "producer_retry_seconds, 10 s" (README)
    assert _signature_defaults(init_job_processor)["producer_retry_seconds"] == 10
    assert _signature_defaults(init_job_processor)["keep_events"] == dt.timedelta(days=30)
    assert _signature_defaults(init_job_processor)["unknown_name_grace"] == 3600  # "an hour"


@pytest.mark.parametrize(
    ("argv", "option", "documented"),
    [
        (["jobs", "list"], "timeout", 5.0),  # "--timeout SECONDS ... default 5"
        (["jobs", "list"], "limit", 50),  # "jobs list ... [--limit 50]"
        (["jobs", "retry", "--name", "n", "--status", "errored"], "limit", 10_000),
        (["events", "list"], "limit", 50),
        (["events", "replay", "--name", "n", "--since", "2030-01-01"], "limit", 1000),
    ],
)
def test_cli_defaults_are_operations_mds(argv: list[str], option: str, documented: Any) -> None:
    text = " ".join((DOCS / "operations.md").read_text().split())
    assert "how long to wait for MongoDB, default 5" in text
    assert "[--limit 50]" in text and "[--limit 10000]" in text and "[--limit 1000]" in text
    args = build_parser().parse_args(argv)
    assert getattr(args, option) == documented
