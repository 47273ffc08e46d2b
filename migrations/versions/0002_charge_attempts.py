"""Charge attempts: one row per try at collecting an invoice through a PaymentIntent.

Two partial unique indexes are the last wall against a double charge: one succeeded
attempt per invoice, and at most one attempt in flight per invoice at any time.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 09:54:40.577047
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('charge_attempts',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('invoice_id', sa.String(length=40), nullable=False),
    sa.Column('ledger_key', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=20), server_default='pending', nullable=False),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('payment_method', sa.String(length=255), nullable=True),
    sa.Column('stripe_payment_intent_id', sa.String(length=255), nullable=True),
    sa.Column('decline_code', sa.String(length=128), nullable=True),
    sa.Column('failure_message', sa.Text(), nullable=True),
    sa.Column('next_action', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('client_secret', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'started', 'unknown', 'requires_action', 'succeeded', 'failed', 'canceled')", name=op.f('ck_charge_attempts_status_known')),
    sa.CheckConstraint('amount > 0', name=op.f('ck_charge_attempts_amount_positive')),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_charge_attempts_invoice_id_invoices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_charge_attempts')),
    sa.UniqueConstraint('ledger_key', name=op.f('uq_charge_attempts_ledger_key')),
    sa.UniqueConstraint('stripe_payment_intent_id', name=op.f('uq_charge_attempts_stripe_payment_intent_id'))
    )
    op.create_index(op.f('ix_charge_attempts_invoice_id'), 'charge_attempts', ['invoice_id'], unique=False)
    op.create_index('uq_charge_attempts_one_in_flight_per_invoice', 'charge_attempts', ['invoice_id'], unique=True, postgresql_where=sa.text("status IN ('pending', 'started', 'unknown', 'requires_action')"))
    op.create_index('uq_charge_attempts_one_success_per_invoice', 'charge_attempts', ['invoice_id'], unique=True, postgresql_where=sa.text("status = 'succeeded'"))


def downgrade() -> None:
    op.drop_index('uq_charge_attempts_one_success_per_invoice', table_name='charge_attempts', postgresql_where=sa.text("status = 'succeeded'"))
    op.drop_index('uq_charge_attempts_one_in_flight_per_invoice', table_name='charge_attempts', postgresql_where=sa.text("status IN ('pending', 'started', 'unknown', 'requires_action')"))
    op.drop_index(op.f('ix_charge_attempts_invoice_id'), table_name='charge_attempts')
    op.drop_table('charge_attempts')
