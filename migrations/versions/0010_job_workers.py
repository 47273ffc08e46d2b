"""The worker running each job

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 08:40:00.000000

A nullable column without a default: adding it rewrites nothing and takes its lock for an
instant, and the release still serving neither reads nor writes it.
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('outbox_jobs', sa.Column('worker', sa.String(length=128), nullable=True))


def downgrade() -> None:
    op.drop_column('outbox_jobs', 'worker')
