"""Two views: one enqueues a report, one polls it (`?wait=5` waits up to 5 s for its end)."""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from examples.report_jobs import long_poll_seconds, public_error
from job_processor import InvalidPayloadError, JobNotFoundError

from .jobs import client


@require_POST
def enqueue_report(request: HttpRequest) -> JsonResponse:
    try:
        payload = json.loads(request.body or b"{}")
        job = client().schedule_job("build-report", payload)
    except (ValueError, InvalidPayloadError) as exc:  # names the field: nothing was written
        return JsonResponse({"error": str(exc)}, status=400)
    url = reverse("report", kwargs={"job_id": job.id})
    return JsonResponse({"id": job.id, "status_url": url}, status=202)


@require_GET
def report(request: HttpRequest, job_id: str) -> JsonResponse:
    wait = long_poll_seconds(request.GET.get("wait", "0"))
    if wait is None:
        return JsonResponse({"error": "wait must be a number of seconds from 0 to 25"}, status=400)
    try:
        job = client().wait_for(job_id, timeout=wait)
    except JobNotFoundError:
        return JsonResponse({"error": f"no report {job_id}"}, status=404)
    except TimeoutError:
        job = client().get_job(job_id)
        return JsonResponse({"id": job.id, "status": job.status.value}, status=202)
    if job.status == "finished":
        return JsonResponse({"id": job.id, "status": "finished", "result": job.result})
    error = public_error(job.error)
    return JsonResponse({"id": job.id, "status": job.status.value, "error": error})
