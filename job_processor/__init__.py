"""job-processor: background jobs and cron schedules stored in MongoDB."""

from .abort import AbortSignal
from .clock import Clock, FakeClock, SystemClock
from .definitions import Backoff, CronDef, JobDef
from .errors import (
    DatabaseUnreachableError,
    DoNotRetry,
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
)
from .models import Job, JobOutput, JobStatus, ProcessorStatus, WorkerInfo
from .processor import JobProcessor, init_job_processor

__all__ = [
    "AbortSignal",
    "Backoff",
    "Clock",
    "CronDef",
    "DatabaseUnreachableError",
    "DoNotRetry",
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
    "ProcessorStatus",
    "RetryLater",
    "SystemClock",
    "UnknownJobError",
    "WorkerInfo",
    "init_job_processor",
]
