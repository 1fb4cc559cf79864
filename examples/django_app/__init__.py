"""A Django project that enqueues jobs and polls their results (see views.py)."""
