"""Operating a job-processor database from the database alone: no handlers needed.

`admin` (the operator verbs, one module per area: jobs, crons, names and workers, events,
status; every action compare-and-set and audit-logged), `status` (the processor's
`get_status()` report), `health` (the health checks), `metrics` (Prometheus, an optional
extra).

May import: `core`, `storage`, `engine`, `events`. Nothing above (`cli`, `dashboard`, the top).
"""
