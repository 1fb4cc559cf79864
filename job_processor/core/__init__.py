"""The pure domain: no I/O, no MongoDB driver call, no task.

Records (`models`: Job, Event; `reports`: Delivery, WorkerInfo, status reports; `status`: the
statuses and the one table of allowed transitions), declarations (`definitions`: JobDef,
CronDef, Limit, Backoff, Subscriber; `settings`), the one outcome function (`outcome.decide`),
the builders of every job, worker and event document (`documents`, `event_documents`), and the
rules: retries (`retries`), retention (`retention`), limit maths (`limits`), cron slot maths
(`schedule`), which live workers serve which names (`coverage`), masking (`masking`), what
MongoDB can store (`values`). Plus the injected clock (`clock`), the abort signal (`abort`),
errors (`errors`), the logging adapter (`log`), the metrics hook (`telemetry`) and the
protocols lower code needs from higher code (`protocols`).

May import: nothing of this package outside `core`.
"""
