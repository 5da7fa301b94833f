"""index of budget-held queued jobs per batch

Revision ID: 7d3e9a1b2c4f
Revises: 4cb818f894e4
Create Date: 2026-12-01 16:30:00.000000

A batch's status shows how many of its queued jobs a budget cap holds. Without this partial
index that count walked the claim index over every queued job of the provider on each poll of
the batch (CLI --watch, the dashboard); now it reads only the held ones.

Every migration must stay compatible with the previous release's code: split breaking
changes into expand and contract steps. Never import application models here.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '7d3e9a1b2c4f'
down_revision: str | None = '4cb818f894e4'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HELD = "state = 'queued' AND hold_reason IS NOT NULL"


def upgrade() -> None:
    op.create_index('ix_jobs_held', 'jobs', ['batch_id'], unique=False,
                    postgresql_where=sa.text(HELD), sqlite_where=sa.text(HELD))


def downgrade() -> None:
    op.drop_index('ix_jobs_held', table_name='jobs', postgresql_where=sa.text(HELD), sqlite_where=sa.text(HELD))
