"""Embedding job-processor in a web service's startup (Starlette lifespan; FastAPI is the same),
with the dashboard mounted at /dashboard once the processor exists.

The web process schedules jobs and also runs them (worker_tags=None); in production you would
usually run the web app with `worker_tags=["web"]` (or not start() at all) and let the
`job-processor run` containers do the work.

To run:
    .venv/bin/pip install -q -e '.[demo,dashboard]'
    .venv/bin/job-processor server          # no MongoDB? a local one, in another terminal
    MONGODB_URL=mongodb://127.0.0.1:27017/job_processor DASHBOARD_PASSWORD=a-long-secret \
        .venv/bin/uvicorn examples.web_service:app
    curl -X POST 'localhost:8000/emails?to=ada@example.com'
    open http://localhost:8000/dashboard/   # user admin, the DASHBOARD_PASSWORD
    .venv/bin/job-processor jobs list       # the same database: the URL's, or job_processor
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from pymongo import AsyncMongoClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from job_processor import AbortSignal, Job, JobDef, JobNotFoundError, init_job_processor
from job_processor.dashboard import create_dashboard


async def send_email(job: Job, signal: AbortSignal) -> dict[str, str]:
    # call your mail provider here; raise on failure, check signal.aborted in long loops
    return {"sent_to": job.payload["to"]}


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        os.environ["MONGODB_URL"], tz_aware=True
    )
    processor = await init_job_processor(
        client.get_default_database(default="job_processor"),  # the default everywhere
        jobs={"send-email": JobDef(handler=send_email)},
    )
    app.state.jobs = processor
    dashboard = create_dashboard(processor, auth=("admin", os.environ["DASHBOARD_PASSWORD"]))
    app.mount("/dashboard", dashboard)  # its links and forms stay under /dashboard
    async with processor:  # start() now, graceful stop() at shutdown
        yield
    await client.close()


async def schedule_email(request: Request) -> JSONResponse:
    to = request.query_params.get("to")
    if not to:
        return JSONResponse({"error": "give ?to=<address>"}, status_code=400)
    job = await request.app.state.jobs.schedule_job("send-email", {"to": to})
    return JSONResponse({"job_id": job.id, "status": job.status.value}, status_code=202)


async def get_job(request: Request) -> JSONResponse:
    try:
        job = await request.app.state.jobs.get_job(request.path_params["job_id"])
    except JobNotFoundError as exc:  # an unknown id, or not an id at all
        return JSONResponse({"error": str(exc)}, status_code=404)
    return JSONResponse(job.model_dump(mode="json"))


app = Starlette(
    routes=[
        Route("/emails", schedule_email, methods=["POST"]),
        Route("/jobs/{job_id}", get_job),
    ],
    lifespan=lifespan,
)
