"""claim index on queued jobs; provider account rows created once

Revision ID: 4cb818f894e4
Revises: c4a1e2d3f5b6
Create Date: 2026-12-01 09:18:01.369039

The partial index holds queued jobs only, in claim order, so a claim reads just the rows it
takes. The account rows are created here (and by the claimer only if missing), so claims never
upsert them.

Every migration must stay compatible with the previous release's code: split breaking
changes into expand and contract steps. Never import application models here.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '4cb818f894e4'
down_revision: str | None = 'c4a1e2d3f5b6'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


PROVIDERS = ("fal", "runware")


def upgrade() -> None:
    op.create_index('ix_jobs_claim', 'jobs',
                    ['provider', sa.literal_column('lane DESC'), 'next_attempt_at', 'position'], unique=False,
                    postgresql_where=sa.text("state = 'queued'"), sqlite_where=sa.text("state = 'queued'"))
    # A new account starts with a full bucket (the claim clamps it to the burst size).
    for provider in PROVIDERS:
        op.execute(sa.text("INSERT INTO provider_accounts (provider, tokens, refilled_at, consecutive_failures) "
                           "SELECT :p, 1e9, CURRENT_TIMESTAMP, 0 WHERE NOT EXISTS "
                           "(SELECT 1 FROM provider_accounts WHERE provider = :p)").bindparams(p=provider))


def downgrade() -> None:
    op.drop_index('ix_jobs_claim', table_name='jobs', postgresql_where=sa.text("state = 'queued'"),
                  sqlite_where=sa.text("state = 'queued'"))
