"""Celery workers: dispatch, webhook processing, storage, callbacks and the sweep.

Only `orchestrator`'s command-line entry point imports this package.
"""
