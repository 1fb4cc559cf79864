"""`job_processor.health`: the stable import path of the health checks (`ready`, `check`),
which live in `job_processor.ops.health`."""

from .ops.health import Health, check, ready

__all__ = ["Health", "check", "ready"]
