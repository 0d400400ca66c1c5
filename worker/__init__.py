"""The textq worker: Celery app, batcher, model runners. The only package that imports torch."""
