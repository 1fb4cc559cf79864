"""Per-value limits, pure: the key filled from the payload, the clear error when a field is
missing, and what status pages show when there are many keys."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from job_processor import InvalidPayloadError, JobDef, Limit
from job_processor.core.limits import taken, top_usage
from job_processor.core.producing import Template, new_job_doc

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


async def noop(job: Any, signal: Any) -> None:
    return None


def test_a_templated_key_is_filled_from_the_payload() -> None:
    per_tenant = Limit(key="tenant:{tenant_id}", concurrency=2)
    assert per_tenant.templated and per_tenant.fields == ("tenant_id",)
    assert per_tenant.key_for({"tenant_id": "acme"}) == "tenant:acme"
    assert per_tenant.key_for({"tenant_id": 42}) == "tenant:42"
    assert per_tenant.key_for({"tenant_id": 42.0}) == "tenant:42"  # the same tenant
    for odd in (True, float("nan")):
        with pytest.raises(ValueError, match="needs the payload field 'tenant_id', got"):
            per_tenant.key_for({"tenant_id": odd})
    assert per_tenant.for_key("tenant:acme").key == "tenant:acme"
    assert not Limit(key="smtp", concurrency=1).templated
    with pytest.raises(ValueError, match="needs the payload field 'tenant_id' \\(missing\\)"):
        per_tenant.key_for({"tenant": "acme"})
    with pytest.raises(ValueError, match="got \\[1\\]"):
        per_tenant.key_for({"tenant_id": [1]})
    with pytest.raises(ValueError, match="must name a top-level payload field"):
        Limit(key="tenant:{0}", concurrency=1)


def test_scheduling_records_the_key_or_names_the_missing_field() -> None:
    template = Template.of(
        JobDef(handler=noop, limit=Limit(key="tenant:{tenant_id}", concurrency=2))
    )
    doc = new_job_doc("sync", template, {"tenant_id": "acme"}, now=NOW)
    assert doc["limit_key"] == "tenant:acme"
    with pytest.raises(InvalidPayloadError, match=r"job 'sync': limit key 'tenant:\{tenant_id\}'"):
        new_job_doc("sync", template, {"tenant": "acme"}, now=NOW)


def test_many_keys_are_shown_as_the_busiest_and_the_rest_folded() -> None:
    limit = Limit(key="tenant:{t}", concurrency=4)
    docs = []
    for i in range(30):
        key = f"tenant:{i}"
        doc: dict[str, Any] = {"_id": key, "rev": 0, "running": 0, "holders": {}, "starts": {}}
        update = taken(
            doc, limit.for_key(key), [f"r{j}" for j in range(i % 5)], "w", NOW, "tenant:{t}"
        )
        docs.append({"_id": key, "running": i % 5} | update["$set"])
    docs.append({"_id": "smtp", "running": 1, "concurrency": 3})
    shown = top_usage(docs, NOW, most=5)
    assert len(shown) == 7  # the static limit, the 5 busiest keys, one row for the rest
    assert shown[0]["key"] == "smtp"
    assert [u["running"] for u in shown[1:6]] == [4, 4, 4, 4, 4]
    folded = shown[-1]
    assert folded["key"] == "tenant:{t} (other keys)" and folded["keys"] == 25  # a fixed label
    assert folded["running"] == sum(i % 5 for i in range(30)) - 20
    assert folded["concurrency"] == 25 * limit.concurrency  # the capacity of the keys folded
    assert folded["running"] <= folded["concurrency"]
