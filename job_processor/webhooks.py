"""`job_processor.webhooks`: the stable import path of the webhook helpers users call
(`generate_secret`, `sign`, `webhook_warnings`, `WebhookEndpoint`, `WebhookOptions`), which
live in `job_processor.events.webhooks`."""

from .events.webhooks import (
    WebhookEndpoint,
    WebhookOptions,
    Webhooks,
    generate_secret,
    sign,
    webhook_warnings,
)

__all__ = [
    "WebhookEndpoint",
    "WebhookOptions",
    "Webhooks",
    "generate_secret",
    "sign",
    "webhook_warnings",
]
