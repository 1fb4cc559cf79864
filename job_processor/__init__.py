"""job-processor: background jobs and cron schedules stored in MongoDB."""

from .core.abort import AbortSignal
from .core.clock import Clock, FakeClock, SystemClock
from .core.definitions import Backoff, CronDef, JobDef, Limit, Subscriber
from .core.errors import (
    DatabaseUnreachableError,
    DoNotRetry,
    EventDeliveryError,
    EventNotFoundError,
    EventTimeoutError,
    InvalidArgumentError,
    InvalidDatabaseError,
    InvalidDefinitionError,
    InvalidPayloadError,
    JobAbortedError,
    JobFailedError,
    JobLostError,
    JobNotFoundError,
    JobProcessorError,
    RetryLater,
    UnknownJobError,
    WebhookNotFoundError,
)
from .core.models import Delivery, Event, Job, JobOutput, ProcessorStatus, WorkerInfo
from .core.producing import JobSpec
from .core.status import JobStatus
from .events.webhooks import WebhookEndpoint, WebhookOptions
from .processor import JobProcessor, init_job_processor

__all__ = [
    "AbortSignal",
    "Backoff",
    "Clock",
    "CronDef",
    "DatabaseUnreachableError",
    "Delivery",
    "DoNotRetry",
    "Event",
    "EventDeliveryError",
    "EventNotFoundError",
    "EventTimeoutError",
    "FakeClock",
    "InvalidArgumentError",
    "InvalidDatabaseError",
    "InvalidDefinitionError",
    "InvalidPayloadError",
    "Job",
    "JobAbortedError",
    "JobDef",
    "JobFailedError",
    "JobLostError",
    "JobNotFoundError",
    "JobOutput",
    "JobProcessor",
    "JobProcessorError",
    "JobSpec",
    "JobStatus",
    "Limit",
    "ProcessorStatus",
    "RetryLater",
    "Subscriber",
    "SystemClock",
    "UnknownJobError",
    "WebhookEndpoint",
    "WebhookNotFoundError",
    "WebhookOptions",
    "WorkerInfo",
    "init_job_processor",
]
