"""The test suite; its folders mirror the source tree.

tests/orchestrator/...  one folder per package of orchestrator/ (api, cli, dashboard, providers/{fal,runware},
                        sandbox/{fal,runware}, storage), its top-level modules' tests directly inside
tests/workers/          the Celery task modules, called as plain functions on real Postgres
tests/migrations/       the Alembic migrations
tests/e2e/              whole running systems: worker processes, the API, both sandboxes; the chaos run
tests/security/         cross-cutting: SSRF, hostile JSON, secrets in logs, callback binding
tests/test_compose.py   the Dockerfile and compose.yaml at the repository root

Shared helpers stay here: conftest.py (database, isolation, app), factories.py, http_helpers.py, stack.py.
"""
