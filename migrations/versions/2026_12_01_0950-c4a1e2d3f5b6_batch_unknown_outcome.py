"""batch unknown_outcome policy

Revision ID: c4a1e2d3f5b6
Revises: 142e206f255a
Create Date: 2026-12-01 09:30:00

Additive and nullable: the previous release's code ignores the column (None = the setting).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'c4a1e2d3f5b6'
down_revision: str | None = '142e206f255a'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('batches', sa.Column('unknown_outcome', sa.String(length=16), nullable=True))


def downgrade() -> None:
    op.drop_column('batches', 'unknown_outcome')
