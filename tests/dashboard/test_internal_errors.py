"""An unexpected error in the dashboard (a bug, an auth callable that raises): a 500 with the
security headers every response carries, JSON under /api/, a page otherwise, no traceback and
no exception text shown, the error logged once (docs/dashboard.md)."""

from __future__ import annotations

import logging
from typing import Any

import httpx2 as httpx
import pytest
from pymongo.errors import ServerSelectionTimeoutError

from job_processor import JobDef, init_job_processor
from job_processor.dashboard import create_dashboard
from job_processor.ops.admin import Admin

SECURITY = {
    "x-frame-options": "SAMEORIGIN",
    "content-security-policy": "frame-ancestors 'self'",
    "x-content-type-options": "nosniff",
}
LOGGER = "mydashboard.jobs"


async def noop(*args: Any) -> None:
    return None


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")


def failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The paths of the dashboard_request_failed lines logged."""
    return [
        r.fields["path"]  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "event", None) == "dashboard_request_failed"
    ]


def assert_internal_error(resp: httpx.Response, api: bool) -> None:
    assert resp.status_code == 500, resp.text
    for name, value in SECURITY.items():
        assert resp.headers.get(name) == value, (name, resp.headers)
    assert "Traceback" not in resp.text and "do-not-show" not in resp.text
    if api:
        assert resp.headers["content-type"] == "application/json"
        assert "dashboard_request_failed" in resp.json()["error"]
    else:
        assert resp.headers["content-type"].startswith("text/html")
        assert "Internal error" in resp.text and "dashboard_request_failed" in resp.text


async def test_an_auth_callable_that_raises_is_a_500_with_headers_logged_once(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger(LOGGER)
    processor = await init_job_processor(db, logger=logger, jobs={"send": JobDef(handler=noop)})

    def auth(request: Any) -> bool:
        raise RuntimeError("identity provider down: token do-not-show")

    app = create_dashboard(processor, auth=auth)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        async with client(app) as c:
            assert_internal_error(await c.get("/"), api=False)
            assert_internal_error(await c.get("/api/jobs"), api=True)
    assert failures(caplog) == ["/", "/api/jobs"]


async def test_an_auth_callable_that_cannot_reach_mongodb_is_the_503_page(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An auth callable reading its users from MongoDB during an outage: the 503 every page
    gives then (it was a 500 "Internal error"), with the headers, JSON under /api/."""
    logger = logging.getLogger(LOGGER)
    processor = await init_job_processor(db, logger=logger, jobs={"send": JobDef(handler=noop)})

    async def auth(request: Any) -> bool:
        raise ServerSelectionTimeoutError("users-db:27017: [Errno 111] Connection refused")

    app = create_dashboard(processor, auth=auth)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        async with client(app) as c:
            page, api = await c.get("/"), await c.get("/api/jobs")
    for resp in (page, api):
        assert resp.status_code == 503, resp.text
        for name, value in SECURITY.items():
            assert resp.headers.get(name) == value, (name, resp.headers)
    assert "MongoDB unavailable" in page.text and "connection refused" in page.text
    assert api.headers["content-type"] == "application/json"
    assert "connection refused" in api.json()["error"]
    assert failures(caplog) == []


async def test_a_page_that_fails_is_a_500_page_and_the_api_json(
    db: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = logging.getLogger(LOGGER)
    processor = await init_job_processor(db, logger=logger, jobs={"send": JobDef(handler=noop)})

    async def broken(self: Admin, *args: Any, **kw: Any) -> Any:
        raise KeyError("do-not-show")

    monkeypatch.setattr(Admin, "list_workers", broken)
    app = create_dashboard(processor, auth=None)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        async with client(app) as c:
            page = await c.get("/workers")
            assert_internal_error(page, api=False)
            assert 'href="/jobs"' in page.text  # the layout, its navigation (signed in)
            assert_internal_error(await c.get("/api/overview"), api=True)
            assert (await c.get("/jobs")).status_code == 200  # the rest goes on
    assert failures(caplog) == ["/workers", "/api/overview"]
