"""`job_processor.metrics`: the stable import path of the Prometheus metrics (optional extra
`job-processor[metrics]`), which live in `job_processor.ops.metrics`."""

from .ops.metrics import (
    CONTENT_TYPE,
    DatabaseCollector,
    Metrics,
    MetricsServer,
    enable,
    for_database,
    render,
    serve,
)

__all__ = [
    "CONTENT_TYPE",
    "DatabaseCollector",
    "Metrics",
    "MetricsServer",
    "enable",
    "for_database",
    "render",
    "serve",
]
