"""The process's JobClient: one, shared by every request thread (it is thread-safe)."""

from __future__ import annotations

import threading

from django.conf import settings
from pymongo import MongoClient

from examples.report_jobs import JOBS
from job_processor.sync import JobClient

_client: JobClient | None = None
_lock = threading.Lock()


def client() -> JobClient:
    global _client
    with _lock:
        if _client is None:
            mongo = MongoClient(settings.MONGODB_URL, tz_aware=True)
            _client = JobClient(mongo.get_default_database("job_processor"), JOBS)
        return _client
