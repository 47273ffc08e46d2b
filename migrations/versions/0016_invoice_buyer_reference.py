"""Invoices' buyer reference

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 17:45:00.000000

The e-invoice's BT-10 (the buyer's purchase order number, or a German public buyer's
Leitweg-ID), given when the invoice is created.

Safe while the previous release serves: one nullable column without a default, added
without rewriting the table; the previous release never reads or writes it.
"""
from alembic import op
import sqlalchemy as sa


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('invoices', sa.Column('buyer_reference', sa.String(length=200), nullable=True))


def downgrade() -> None:
    op.drop_column('invoices', 'buyer_reference')
