"""A Flask app that enqueues jobs and polls their results, with the synchronous client.

    .venv/bin/pip install -q flask                        # (the dev extra has it already)
    export MONGODB_URL=mongodb://127.0.0.1:27017/job_processor
    .venv/bin/job-processor run examples.report_jobs:make   # the async workers, another terminal
    .venv/bin/flask --app examples.flask_app run          # then:
    curl -X POST localhost:5000/reports -H 'content-type: application/json' \\
         -d '{"customer": "acme", "rows": 40}'            # -> 202 {"id": ..., "status_url": ...}
    curl 'localhost:5000/reports/<id>?wait=5'             # -> 200 {"status": "finished", ...}

In production, under a forking server (the app imported once, before the fork; port 8000):

    .venv/bin/pip install -q gunicorn
    .venv/bin/gunicorn -w 4 --preload examples.flask_app:app

One JobClient per process, shared by every request thread (it is thread-safe).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from flask import Flask, jsonify, request, url_for
from pymongo import MongoClient

from examples.report_jobs import JOBS, long_poll_seconds, public_error
from job_processor import InvalidPayloadError, JobNotFoundError
from job_processor.sync import JobClient

app = Flask(__name__)
_client: JobClient | None = None
_lock = threading.Lock()


def jobs() -> JobClient:
    """The process's client, made on first use (after a fork, in each worker process)."""
    global _client
    with _lock:
        if _client is None:
            mongo = MongoClient(os.environ["MONGODB_URL"], tz_aware=True)
            _client = JobClient(mongo.get_default_database("job_processor"), JOBS)
        return _client


@app.post("/reports")
def enqueue_report() -> Any:
    try:
        body = request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            return jsonify(error="the body must be a JSON object"), 400
        job = jobs().schedule_job("build-report", body)
    except InvalidPayloadError as exc:  # names the field: nothing was written
        return jsonify(error=str(exc)), 400
    return jsonify(id=job.id, status_url=url_for("report", job_id=job.id)), 202


@app.get("/reports/<job_id>")
def report(job_id: str) -> Any:
    """The job's state; `?wait=5` waits up to 5 s for it to end (a long poll)."""
    wait = long_poll_seconds(request.args.get("wait", "0"))
    if wait is None:
        return jsonify(error="wait must be a number of seconds from 0 to 25"), 400
    try:
        job = jobs().wait_for(job_id, timeout=wait)
    except JobNotFoundError:
        return jsonify(error=f"no report {job_id}"), 404
    except TimeoutError:
        job = jobs().get_job(job_id)
        return jsonify(id=job.id, status=job.status.value), 202
    if job.status == "finished":
        return jsonify(id=job.id, status="finished", result=job.result)
    return jsonify(id=job.id, status=job.status.value, error=public_error(job.error)), 200
