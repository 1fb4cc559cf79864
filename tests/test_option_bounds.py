"""Options and arguments out of range are refused where they are given, naming the field, before
anything is written (an outside review's findings, each failing before its fix)."""

from __future__ import annotations

from typing import Any

import pytest

from job_processor import InvalidArgumentError, InvalidDefinitionError, JobDef
from job_processor.core.settings import MAX_CONCURRENCY
from tests.helpers import make


async def noop(job: Any, signal: Any) -> None:
    return None


@pytest.mark.parametrize("concurrency", [2**63, 2**31, MAX_CONCURRENCY + 1])
async def test_a_concurrency_that_cannot_work_is_refused_at_init(db: Any, concurrency: Any) -> None:
    """2**63 was taken, then start() and run_job raised OverflowError (MongoDB's ints are 8
    bytes, the worker document records it); a billion slots would batch-claim the whole queue."""
    with pytest.raises(InvalidDefinitionError, match=r"^concurrency must be an integer >= 1 and"):
        await make(db, {"x": JobDef(handler=noop)}, concurrency=concurrency)
    assert await db.list_collection_names() == []  # refused before anything was written


async def test_the_largest_concurrency_runs_jobs(db: Any) -> None:
    processor = await make(db, {"x": JobDef(handler=noop)}, concurrency=MAX_CONCURRENCY)
    job = await processor.run_job("x")
    assert job.status == "finished"


@pytest.mark.parametrize(
    "bad", [{"format": ["standard"]}, {"secret_ref": ["crm"]}, {"format": {"a": 1}}]
)
async def test_webhooks_add_refuses_a_format_or_secret_ref_that_is_not_text(
    db: Any, bad: dict[str, Any]
) -> None:
    """A list was looked up among the formats or secrets first: TypeError, unhashable."""
    processor = await make(db, {}, webhook_secrets={"crm": "whsec_" + "QUJD" * 8})
    before = await processor.webhooks.list()
    (field,) = bad
    with pytest.raises(InvalidArgumentError, match=rf"^{field} must be"):
        await processor.webhooks.add(url="https://example.com/h", events=["ev"], **bad)
    assert await processor.webhooks.list() == before


@pytest.mark.parametrize("bad", [{"format": ["standard"]}, {"secret_ref": ["crm"]}])
async def test_webhooks_update_refuses_a_format_or_secret_ref_that_is_not_text(
    db: Any, bad: dict[str, Any]
) -> None:
    processor = await make(db, {}, webhook_secrets={"crm": "whsec_" + "QUJD" * 8})
    endpoint = await processor.webhooks.add(url="https://example.com/h", events=["ev"])
    (field,) = bad
    with pytest.raises(InvalidArgumentError, match=rf"^{field} must be"):
        await processor.webhooks.update(endpoint.id, **bad)
    assert await processor.webhooks.list() == [endpoint]
