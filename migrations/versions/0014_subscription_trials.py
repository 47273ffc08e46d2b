"""Subscription trials

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 16:56:10.575110

Safe while the previous release serves:
- The new columns are nullable without defaults (no rewrite of the table), and the previous
  release, which never writes them, leaves them NULL, which every new CHECK admits.
- The status CHECK only widens, to admit `trialing`. The previous release never writes it,
  and no row holds it until the new release starts a trial. During the rollout's overlap
  such a row may meet an old process: its billing run scans only `active` subscriptions (so
  it neither invoices nor charges a trial; the new run does, within the hour), its cancel
  and update refuse it with 409 `subscription_not_active`, and only its read of that one
  subscription fails. Nothing is charged or lost, and the overlap lasts minutes.
- The new CHECKs are added NOT VALID and validated afterwards, outside the transaction,
  where VALIDATE takes a lock that lets reads and writes go on.
- The billing run's index widens from `active` to `active` or `trialing`: built
  CONCURRENTLY first, so that the previous release's scan (status = 'active', which the new
  predicate implies) always has one of the two, and only then is the old one dropped.

Downgrade: a trialing subscription becomes `active`. With the trial as its period -1 and
its anchor on the trial's end, the previous release's run then invoices period 0 at the
trial's end, just as this release would have; only the trial_will_end notice is lost.
"""
from alembic import op
import sqlalchemy as sa


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

STATUSES_BEFORE = "status IN ('active', 'canceled')"
STATUSES = "status IN ('active', 'canceled', 'trialing')"
TRIAL_ORDERED = "trial_end IS NULL OR (trial_start IS NOT NULL AND trial_end > trial_start)"
BILLABLE = sa.text("status IN ('active', 'trialing')")
UNNOTIFIED_TRIALS = sa.text("status = 'trialing' AND trial_will_end_notified_at IS NULL")


def upgrade() -> None:
    op.add_column('subscriptions', sa.Column('trial_start', sa.DateTime(timezone=True), nullable=True))
    op.add_column('subscriptions', sa.Column('trial_end', sa.DateTime(timezone=True), nullable=True))
    op.add_column('subscriptions', sa.Column('trial_will_end_notified_at', sa.DateTime(timezone=True), nullable=True))
    op.drop_constraint(op.f('ck_subscriptions_status_known'), 'subscriptions', type_='check')
    op.execute(
        f"ALTER TABLE subscriptions ADD CONSTRAINT ck_subscriptions_status_known "
        f"CHECK ({STATUSES}) NOT VALID"
    )
    op.execute(
        f"ALTER TABLE subscriptions ADD CONSTRAINT ck_subscriptions_trial_ordered "
        f"CHECK ({TRIAL_ORDERED}) NOT VALID"
    )
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE subscriptions VALIDATE CONSTRAINT ck_subscriptions_status_known")
        op.execute("ALTER TABLE subscriptions VALIDATE CONSTRAINT ck_subscriptions_trial_ordered")
        # A concurrent build that failed half-way leaves an invalid index behind, and the
        # revision unrecorded: each is dropped first, so that running it again builds it.
        for name, column, where in (
            ('ix_subscriptions_billable_period_end', 'current_period_end', BILLABLE),
            ('ix_subscriptions_trial_end_unnotified', 'trial_end', UNNOTIFIED_TRIALS),
        ):
            op.drop_index(
                name, table_name='subscriptions', postgresql_concurrently=True, if_exists=True
            )
            op.create_index(
                name,
                'subscriptions',
                [column],
                unique=False,
                postgresql_where=where,
                postgresql_concurrently=True,
            )
        op.drop_index(
            op.f('ix_subscriptions_active_period_end'),
            table_name='subscriptions',
            postgresql_concurrently=True,
            if_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            op.f('ix_subscriptions_active_period_end'),
            table_name='subscriptions',
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.create_index(
            op.f('ix_subscriptions_active_period_end'),
            'subscriptions',
            ['current_period_end'],
            unique=False,
            postgresql_where=sa.text("status = 'active'"),
            postgresql_concurrently=True,
        )
        for name in ('ix_subscriptions_trial_end_unnotified', 'ix_subscriptions_billable_period_end'):
            op.drop_index(
                name, table_name='subscriptions', postgresql_concurrently=True, if_exists=True
            )
    op.execute("UPDATE subscriptions SET status = 'active' WHERE status = 'trialing'")
    op.drop_constraint(op.f('ck_subscriptions_trial_ordered'), 'subscriptions', type_='check')
    op.drop_constraint(op.f('ck_subscriptions_status_known'), 'subscriptions', type_='check')
    op.create_check_constraint(op.f('ck_subscriptions_status_known'), 'subscriptions', STATUSES_BEFORE)
    op.drop_column('subscriptions', 'trial_will_end_notified_at')
    op.drop_column('subscriptions', 'trial_end')
    op.drop_column('subscriptions', 'trial_start')
