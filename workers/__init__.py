"""Celery workers, one step per module.

Task modules (none imports another): dispatch (claim and submit), deliveries (stored webhook
deliveries), store (images into storage), notify (the client's batch.completed), maintenance
(the sweep). What they share: celery_app, context (per-process services), admission (limits),
retry (backoff, failover), reconcile (applying provider outcomes, polling).

Only `orchestrator`'s command-line entry point imports this package.
"""
