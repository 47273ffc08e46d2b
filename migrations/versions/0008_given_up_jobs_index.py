"""Index of the jobs that gave up (dead-lettered or failed)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-21 14:48:56.586648

Built CONCURRENTLY, outside the migration's transaction: outbox_jobs takes a write for
every job, and a plain CREATE INDEX would block them all while it scans the table.
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

GIVEN_UP = sa.text("state IN ('dead_lettered', 'failed')")


def upgrade() -> None:
    with op.get_context().autocommit_block():
        # A concurrent build that failed half-way leaves an invalid index behind, and the
        # revision unrecorded: drop it, so that running the migration again builds it.
        op.drop_index(
            'ix_outbox_jobs_given_up',
            table_name='outbox_jobs',
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.create_index(
            'ix_outbox_jobs_given_up',
            'outbox_jobs',
            ['finished_at'],
            unique=False,
            postgresql_where=GIVEN_UP,
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            'ix_outbox_jobs_given_up',
            table_name='outbox_jobs',
            postgresql_concurrently=True,
            if_exists=True,
        )
