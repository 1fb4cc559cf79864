FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY job_processor ./job_processor
RUN pip install --no-cache-dir '.[motor,metrics]'
# Your application's code (the module whose factory `job-processor run` serves):
COPY examples ./examples
ENV PYTHONUNBUFFERED=1
STOPSIGNAL SIGTERM
# Run it with an init as PID 1 (`docker run --init`, compose `init: true`): see docs/operations.md.
CMD ["job-processor", "run", "examples.tagged_workers:make"]
