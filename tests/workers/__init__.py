"""Tests of the Celery task modules, called as plain functions."""
