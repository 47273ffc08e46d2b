"""Tax-inclusive invoice lines

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 22:30:00.000000

A line taxed at a tax-inclusive rate gives its unit_amount tax included; its amount is the
net worked out of it, so that amount + tax = quantity * unit_amount instead of amount =
quantity * unit_amount.

Safe while the previous release serves:
- The new column is NOT NULL with a constant default, which PostgreSQL records without
  rewriting the table; the previous release never writes it, so its lines are exclusive,
  for which the CHECK is the one it had.
- The CHECK only widens for inclusive lines. It is added NOT VALID and validated
  afterwards, outside the transaction, where VALIDATE lets reads and writes go on. A
  previous process that recomputed a draft holding an inclusive line would have its write
  refused by the CHECK: nothing is stored wrong, and the overlap lasts minutes.

Downgrade refuses while inclusive lines exist: their amounts mean something the previous
release cannot read, and an issued invoice is never rewritten.
"""
from alembic import op
import sqlalchemy as sa


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

PRODUCT_BEFORE = 'amount = quantity * unit_amount'
PRODUCT = (
    'CASE WHEN tax_inclusive THEN amount + tax = quantity * unit_amount '
    'ELSE amount = quantity * unit_amount END'
)


def upgrade() -> None:
    op.add_column(
        'invoice_lines',
        sa.Column('tax_inclusive', sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.drop_constraint(op.f('ck_invoice_lines_amount_is_product'), 'invoice_lines', type_='check')
    op.execute(
        f'ALTER TABLE invoice_lines ADD CONSTRAINT ck_invoice_lines_amount_is_product '
        f'CHECK ({PRODUCT}) NOT VALID'
    )
    with op.get_context().autocommit_block():
        op.execute('ALTER TABLE invoice_lines VALIDATE CONSTRAINT ck_invoice_lines_amount_is_product')


def downgrade() -> None:
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM invoice_lines WHERE tax_inclusive) THEN "
        "RAISE EXCEPTION 'tax-inclusive invoice lines exist'; END IF; END $$"
    )
    op.drop_constraint(op.f('ck_invoice_lines_amount_is_product'), 'invoice_lines', type_='check')
    op.create_check_constraint(op.f('ck_invoice_lines_amount_is_product'), 'invoice_lines', PRODUCT_BEFORE)
    op.drop_column('invoice_lines', 'tax_inclusive')
