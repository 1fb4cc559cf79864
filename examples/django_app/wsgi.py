"""The WSGI application, for a production server (gunicorn, uWSGI), from the repository's root:

    .venv/bin/pip install -q gunicorn
    .venv/bin/gunicorn -w 4 --preload -b 127.0.0.1:8000 examples.django_app.wsgi

`--preload` imports the app once, before gunicorn forks its workers: each worker makes its own
JobClient on its first request (examples/django_app/jobs.py).
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
application = get_wsgi_application()
