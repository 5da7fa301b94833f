"""Alembic migrations, shipped inside the wheel so `orchestrator db upgrade` works anywhere."""
