from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("reports", views.enqueue_report, name="enqueue-report"),
    path("reports/<str:job_id>", views.report, name="report"),
]
