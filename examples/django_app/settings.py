"""The smallest Django settings for the example (no database of Django's own: the jobs live in
MongoDB, behind job_processor.sync.JobClient).

    .venv/bin/pip install -q django                     # (the dev extra has it already)
    export MONGODB_URL=mongodb://127.0.0.1:27017/job_processor
    .venv/bin/job-processor run examples.report_jobs:make             # the async workers
    DJANGO_SETTINGS_MODULE=examples.django_app.settings .venv/bin/python -m django runserver
    # (python -m, from the repository's root: it puts the current folder on the import path,
    # which django-admin does not)
    .venv/bin/gunicorn -w 4 --preload examples.django_app.wsgi      # production: see wsgi.py
"""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
ROOT_URLCONF = "examples.django_app.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

#: Where the jobs are (the same database the workers use).
MONGODB_URL = os.environ.get("MONGODB_URL", "mongodb://127.0.0.1:27017/job_processor")
