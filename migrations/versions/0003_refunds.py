"""Refunds, and the amount refunded on each invoice.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 09:58:17.737529
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('refunds',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('invoice_id', sa.String(length=40), nullable=False),
    sa.Column('charge_attempt_id', sa.String(length=40), nullable=False),
    sa.Column('ledger_key', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=20), server_default='pending', nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=True),
    sa.Column('stripe_refund_id', sa.String(length=255), nullable=True),
    sa.Column('failure_message', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'started', 'unknown', 'succeeded', 'failed')", name=op.f('ck_refunds_status_known')),
    sa.CheckConstraint('amount > 0', name=op.f('ck_refunds_amount_positive')),
    sa.ForeignKeyConstraint(['charge_attempt_id'], ['charge_attempts.id'], name=op.f('fk_refunds_charge_attempt_id_charge_attempts')),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_refunds_invoice_id_invoices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refunds')),
    sa.UniqueConstraint('ledger_key', name=op.f('uq_refunds_ledger_key')),
    sa.UniqueConstraint('stripe_refund_id', name=op.f('uq_refunds_stripe_refund_id'))
    )
    op.create_index(op.f('ix_refunds_invoice_id'), 'refunds', ['invoice_id'], unique=False)
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column('invoices', sa.Column('amount_refunded', sa.BigInteger(), server_default='0', nullable=False))
    # NOT VALID, then VALIDATE: the check is enforced for new rows at once, and existing
    # rows are scanned without holding the lock that would block writes meanwhile.
    op.create_check_constraint(
        op.f('ck_invoices_refund_bounded'),
        'invoices',
        'amount_refunded >= 0 AND amount_refunded <= amount_paid',
        postgresql_not_valid=True,
    )
    op.execute('ALTER TABLE invoices VALIDATE CONSTRAINT ck_invoices_refund_bounded')


def downgrade() -> None:
    op.drop_constraint(op.f('ck_invoices_refund_bounded'), 'invoices', type_='check')
    op.drop_column('invoices', 'amount_refunded')
    op.drop_index(op.f('ix_refunds_invoice_id'), table_name='refunds')
    op.drop_table('refunds')
