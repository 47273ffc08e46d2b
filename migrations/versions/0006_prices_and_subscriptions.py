"""Prices, subscriptions, their invoiced periods (one per (subscription, period_start)) and
pending proration adjustments

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 12:31:15.757917
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('prices',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('product', sa.String(length=256), nullable=False),
    sa.Column('unit_amount', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('interval', sa.String(length=8), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("interval IN ('month', 'year')", name=op.f('ck_prices_interval_known')),
    sa.CheckConstraint('currency = lower(currency)', name=op.f('ck_prices_currency_lowercase')),
    sa.CheckConstraint('unit_amount >= 0', name=op.f('ck_prices_unit_amount_not_negative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_prices'))
    )
    op.create_table('subscriptions',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('customer_id', sa.String(length=40), nullable=False),
    sa.Column('price_id', sa.String(length=40), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='active', nullable=False),
    sa.Column('collection_method', sa.String(length=32), nullable=False),
    sa.Column('days_until_due', sa.Integer(), nullable=True),
    sa.Column('billing_cycle_anchor', sa.DateTime(timezone=True), nullable=False),
    sa.Column('current_period_index', sa.Integer(), nullable=False),
    sa.Column('current_period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('current_period_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cancel_at_period_end', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('canceled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('latest_invoice_id', sa.String(length=40), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("collection_method IN ('charge_automatically', 'send_invoice')", name=op.f('ck_subscriptions_collection_known')),
    sa.CheckConstraint("status IN ('active', 'canceled')", name=op.f('ck_subscriptions_status_known')),
    sa.CheckConstraint('current_period_end > current_period_start', name=op.f('ck_subscriptions_period_ordered')),
    sa.CheckConstraint('quantity > 0', name=op.f('ck_subscriptions_quantity_positive')),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_subscriptions_customer_id_customers')),
    sa.ForeignKeyConstraint(['latest_invoice_id'], ['invoices.id'], name=op.f('fk_subscriptions_latest_invoice_id_invoices')),
    sa.ForeignKeyConstraint(['price_id'], ['prices.id'], name=op.f('fk_subscriptions_price_id_prices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subscriptions'))
    )
    op.create_index('ix_subscriptions_active_period_end', 'subscriptions', ['current_period_end'], unique=False, postgresql_where=sa.text("status = 'active'"))
    op.create_index(op.f('ix_subscriptions_customer_id'), 'subscriptions', ['customer_id'], unique=False)
    op.create_table('subscription_adjustments',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('subscription_id', sa.String(length=40), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('invoice_id', sa.String(length=40), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_subscription_adjustments_invoice_id_invoices')),
    sa.ForeignKeyConstraint(['subscription_id'], ['subscriptions.id'], name=op.f('fk_subscription_adjustments_subscription_id_subscriptions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subscription_adjustments'))
    )
    op.create_index('ix_subscription_adjustments_pending', 'subscription_adjustments', ['subscription_id'], unique=False, postgresql_where=sa.text('invoice_id IS NULL'))
    op.create_table('subscription_periods',
    sa.Column('subscription_id', sa.String(length=40), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_index', sa.Integer(), nullable=False),
    sa.Column('invoice_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_subscription_periods_invoice_id_invoices')),
    sa.ForeignKeyConstraint(['subscription_id'], ['subscriptions.id'], name=op.f('fk_subscription_periods_subscription_id_subscriptions')),
    sa.PrimaryKeyConstraint('subscription_id', 'period_start', name=op.f('pk_subscription_periods')),
    sa.UniqueConstraint('invoice_id', name='uq_subscription_periods_invoice'),
    sa.UniqueConstraint('subscription_id', 'period_index', name='uq_subscription_periods_index')
    )


def downgrade() -> None:
    op.drop_table('subscription_periods')
    op.drop_index('ix_subscription_adjustments_pending', table_name='subscription_adjustments', postgresql_where=sa.text('invoice_id IS NULL'))
    op.drop_table('subscription_adjustments')
    op.drop_index(op.f('ix_subscriptions_customer_id'), table_name='subscriptions')
    op.drop_index('ix_subscriptions_active_period_end', table_name='subscriptions', postgresql_where=sa.text("status = 'active'"))
    op.drop_table('subscriptions')
    op.drop_table('prices')
