"""costs and budgets: cost sources, estimates, budget holds, tenant caps

Revision ID: 142e206f255a
Revises: a02282e21464
Create Date: 2026-12-01 09:11:35.254493

Every migration must stay compatible with the previous release's code: split breaking
changes into expand and contract steps. Never import application models here.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '142e206f255a'
down_revision: str | None = 'a02282e21464'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('tenant_budgets',
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('daily_usd', sa.Numeric(precision=12, scale=6), nullable=True),
    sa.Column('monthly_usd', sa.Numeric(precision=12, scale=6), nullable=True),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('tenant', name=op.f('pk_tenant_budgets'))
    )
    op.add_column('assets', sa.Column('cost_source', sa.String(length=16), nullable=True))
    op.add_column('batches', sa.Column('estimated_cost', sa.Numeric(precision=12, scale=6), nullable=False,
                                       server_default='0'))  # existing batches: unknown, shown as 0
    op.add_column('batches', sa.Column('max_cost_usd', sa.Numeric(precision=12, scale=6), nullable=True))
    op.add_column('jobs', sa.Column('cost_source', sa.String(length=16), nullable=True))
    op.add_column('jobs', sa.Column('estimated_cost', sa.Numeric(precision=12, scale=6), nullable=True))
    op.add_column('jobs', sa.Column('charged_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('jobs', sa.Column('hold_reason', sa.String(length=16), nullable=True))
    op.create_index('ix_jobs_tenant_charged', 'jobs', ['tenant', 'charged_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_jobs_tenant_charged', table_name='jobs')
    op.drop_column('jobs', 'hold_reason')
    op.drop_column('jobs', 'charged_at')
    op.drop_column('jobs', 'estimated_cost')
    op.drop_column('jobs', 'cost_source')
    op.drop_column('batches', 'max_cost_usd')
    op.drop_column('batches', 'estimated_cost')
    op.drop_column('assets', 'cost_source')
    op.drop_table('tenant_budgets')
