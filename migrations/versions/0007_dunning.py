"""Dunning: the steps taken per invoice, delinquent customers, the day dunning started

Adds columns with constant defaults (no table rewrite) and a new table. The partial index
on open invoices is built CONCURRENTLY, outside the migration's transaction, so that
invoices stay writable while it is built.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21 12:33:54.253400
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dunning_steps',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('invoice_id', sa.String(length=40), nullable=False),
    sa.Column('step', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('taken_on', sa.Date(), nullable=False),
    sa.Column('charge_attempt_id', sa.String(length=40), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('done', 'skipped')", name=op.f('ck_dunning_steps_status_known')),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_dunning_steps_invoice_id_invoices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dunning_steps')),
    sa.UniqueConstraint('invoice_id', 'step', name='uq_dunning_steps_invoice_step')
    )
    op.add_column('customers', sa.Column('delinquent', sa.Boolean(), server_default=sa.text('false'), nullable=False))
    op.add_column('invoices', sa.Column('dunning_started_on', sa.Date(), nullable=True))
    with op.get_context().autocommit_block():
        op.create_index('ix_invoices_open_by_id', 'invoices', ['id'], unique=False, postgresql_where=sa.text("status = 'open'"), postgresql_concurrently=True, if_not_exists=True)


def downgrade() -> None:
    op.drop_index('ix_invoices_open_by_id', table_name='invoices')
    op.drop_column('invoices', 'dunning_started_on')
    op.drop_column('customers', 'delinquent')
    op.drop_table('dunning_steps')
