"""The runtime of one process: everything that runs jobs, in one `Runtime` (`runtime`).

`worker` (the claim loop, executions, abort signals, max runtime), `execution` (what running one
job needs), `finals` (grouped final writes), `hooks` (on_job_exited, recorded), `recovery`
(dead workers' runs, exactly once), `heartbeat`, `ownership` (kill delivery, reconciliation),
`limiter` (cluster-wide limits), `wakeup` (change streams, due times), `crons` (the cron
scheduler), `upkeep` (the definitions registry, retention trimming), `signals`, `sentry`.

May import: `core`, `storage`. Nothing above (`events`, `ops`, `cli`, `dashboard`, the top).
"""
