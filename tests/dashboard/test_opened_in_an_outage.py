"""A dashboard (over Motor) whose first page came during an outage: the server's kind is asked
again once MongoDB answers, never taken as "a real MongoDB" for good."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import httpx2 as httpx
from motor.motor_asyncio import AsyncIOMotorClient

from job_processor.dashboard import create_dashboard
from job_processor.storage.local_server import free_port, start_local_server


async def test_a_dashboard_first_read_during_an_outage_detects_the_server_once_it_answers() -> None:
    """Its first page during an outage read the failed detection as a real MongoDB: on
    nx-27017, once back, its workarounds stayed off for the dashboard's life (reads that
    nx-27017 answers wrongly, a retry refused by a unique key said as "changed meanwhile")."""
    port = free_port()
    client: Any = AsyncIOMotorClient(f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=300)
    app = create_dashboard(client["app"], auth=None)
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 1)),
        base_url="http://127.0.0.1",
    )
    server = None
    try:
        down = await http.get("/jobs")
        assert down.status_code >= 500
        server = start_local_server(Path(tempfile.mkdtemp(prefix="jp-dash-")), port=port)
        up = await http.get("/jobs")
        assert up.status_code == 200
        admin = await app.state.dashboard.admin()
        assert admin.storage.profile.kind == "nx-27017"  # was: "mongodb"
    finally:
        await http.aclose()
        client.close()
        if server is not None:
            server.stop()
