"""job-processor: background jobs and cron schedules stored in MongoDB."""

from .abort import AbortSignal
from .clock import Clock, FakeClock, SystemClock
from .definitions import Backoff, CronDef, JobDef, Limit
from .errors import (
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
    JobLostError,
    JobNotFoundError,
    JobProcessorError,
    RetryLater,
    UnknownJobError,
    WebhookNotFoundError,
)
from .events import Delivery, Event, Subscriber
from .models import Job, JobOutput, JobStatus, ProcessorStatus, WorkerInfo
from .processor import JobProcessor, init_job_processor
from .webhooks import WebhookEndpoint, WebhookOptions

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
    "JobLostError",
    "JobNotFoundError",
    "JobOutput",
    "JobProcessor",
    "JobProcessorError",
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
