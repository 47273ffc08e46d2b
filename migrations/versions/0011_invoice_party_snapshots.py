"""Invoices keep their seller and buyer as they stood at finalization

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 08:40:00.000000

Two nullable columns without a default: a change of the catalogue only, no table rewrite,
so the release still serving goes on writing invoices meanwhile (it leaves them null, and
a null snapshot shows the current values, as before).
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('invoices', sa.Column('seller_party', postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column('invoices', sa.Column('buyer_party', postgresql.JSONB(astext_type=sa.Text()), nullable=True))


def downgrade() -> None:
    op.drop_column('invoices', 'buyer_party')
    op.drop_column('invoices', 'seller_party')
