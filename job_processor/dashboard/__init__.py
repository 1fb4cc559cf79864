"""The web dashboard (optional extra: `pip install 'job-processor[dashboard]'`).

    from job_processor.dashboard import create_dashboard
    app.mount("/jobs", create_dashboard(processor_or_db, auth=("admin", "secret")))

or `MONGODB_URL=... job-processor dashboard --host 127.0.0.1 --port 8080`. Pages: overview,
jobs (filters, cursor pages), job, crons, workers, names, events (and replays), audit;
actions through `job_processor.admin` (audit-logged with the signed-in user); `/metrics`,
`/healthz`, `/readyz`. See docs/dashboard.md.

Modules: `app` (create_dashboard and the routes), `state` (what every page shares), `guard`
(authentication, CSRF, read-only), `views`, `actions` and `events` (the pages by area),
`render`, `auth`, `csrf`, `serve` (`job-processor dashboard`).

May import: `ops`, `events`, `engine`, `storage`, `core`. Nothing above (`cli`, the top).
"""

from ..core.masking import DEFAULT_SENSITIVE_FIELDS, MASK, Masker
from .app import create_dashboard
from .auth import UNSET, DashboardConfigError
from .state import Dashboard

__all__ = [
    "DEFAULT_SENSITIVE_FIELDS",
    "MASK",
    "UNSET",
    "Dashboard",
    "DashboardConfigError",
    "Masker",
    "create_dashboard",
]
