"""Dunning for invoices whose automatic charge failed before dunning existed

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-21 15:10:00

Dunning starts on an invoice's first failed automatic charge (`dunning_started_on`, added
by 0007 and set by the charge path since). An invoice that failed before 0007 was never
given a start, so the nightly run would never retry, remind or give up on it: an unpaid
invoice nobody chases. Each such invoice (open, charged automatically, no payment and no
charge in flight) starts its dunning on the day of its first failed attempt, the day the
charge path would have set. For one that failed long ago, the run's catch-up rule then
takes only the latest step due: one last retry first, the final notice after it. Only
rows still without a start are touched, so running it again changes nothing.
"""
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        UPDATE invoices AS i
        SET dunning_started_on = first_failure.day
        FROM (
            SELECT invoice_id,
                   (min(coalesce(finished_at, created_at)) AT TIME ZONE 'UTC')::date AS day
            FROM charge_attempts
            WHERE status = 'failed'
            GROUP BY invoice_id
        ) AS first_failure
        WHERE i.id = first_failure.invoice_id
          AND i.status = 'open'
          AND i.collection_method = 'charge_automatically'
          AND i.dunning_started_on IS NULL
          AND NOT EXISTS (
              SELECT 1 FROM charge_attempts AS a
              WHERE a.invoice_id = i.id
                AND a.status IN ('pending', 'started', 'unknown', 'requires_action', 'succeeded')
          )
        """
    )


def downgrade() -> None:
    # The start dates cannot be told apart from those the charge path set: kept.
    pass
