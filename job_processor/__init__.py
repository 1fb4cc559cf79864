"""job-processor: background jobs and cron schedules stored in MongoDB."""

from .clock import Clock, FakeClock, SystemClock
from .definitions import Backoff, CronDef, JobDef
from .errors import (
    DoNotRetry,
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
from .signals import AbortSignal

__all__ = [
    "AbortSignal",
    "Backoff",
    "Clock",
    "CronDef",
    "DoNotRetry",
    "FakeClock",
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
