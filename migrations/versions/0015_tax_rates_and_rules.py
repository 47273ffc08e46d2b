"""Tax rates and rules

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 17:33:21.228153

Tax rates as objects (`tax_rates`); customers' `tax_status` and `tax_id_type`; prices'
`tax_category`; on each invoice line the rate object it used (`tax_rate_id`) and why
(`tax_reason`); on invoices the VIES answer kept as evidence (`tax_evidence`); and on
subscription adjustments whether their amount already holds its tax (`tax_included`).

Safe while the previous release serves:
- `tax_rates` is a new table the previous release never reads.
- The new columns are nullable, or NOT NULL with a constant default, which PostgreSQL adds
  without rewriting the table. The previous release, which never writes them, gets the
  defaults: its customers are `business` (with no typed tax id, never reverse-charged),
  its prices `standard`, its adjustments not `tax_included`, and its lines NULL
  `tax_rate_id`/`tax_reason`, as every line made before this change.
- The new CHECKs and the foreign key are added NOT VALID (a short lock, no scan) and
  validated afterwards, outside the transaction, where VALIDATE lets reads and writes go on.
  Every existing row holds the defaults or NULL, which they admit.

Downgrade drops what this added: the lines forget their rate objects and reasons (they keep
their percentages and amounts), and tax ids keep their compact form, untyped.
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

CHECKS = (
    ('customers', 'ck_customers_tax_status_known',
     "tax_status IN ('business', 'individual', 'exempt')"),
    ('customers', 'ck_customers_tax_id_type_known',
     "tax_id_type IS NULL OR tax_id_type IN "
     "('eu_vat', 'gb_vat', 'ch_vat', 'no_vat', 'us_ein', 'au_abn', 'in_gst')"),
    ('invoice_lines', 'ck_invoice_lines_tax_reason_known',
     "tax_reason IS NULL OR tax_reason IN "
     "('standard', 'reverse_charge', 'zero_rated_export', 'exempt', 'manual')"),
    ('prices', 'ck_prices_tax_category_known',
     "tax_category IN ('standard', 'reduced', 'zero', 'exempt')"),
)


def upgrade() -> None:
    op.create_table('tax_rates',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('display_name', sa.String(length=50), nullable=False),
    sa.Column('percentage', sa.Numeric(precision=7, scale=4), nullable=False),
    sa.Column('inclusive', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('country', sa.String(length=2), nullable=False),
    sa.Column('region', sa.String(length=100), nullable=True),
    sa.Column('tax_category', sa.String(length=16), server_default='standard', nullable=False),
    sa.Column('active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("country ~ '^[A-Z]{2}$'", name=op.f('ck_tax_rates_country_alpha2')),
    sa.CheckConstraint("tax_category IN ('standard', 'reduced', 'zero', 'exempt')", name=op.f('ck_tax_rates_tax_category_known')),
    sa.CheckConstraint('percentage >= 0 AND percentage <= 100', name=op.f('ck_tax_rates_percentage_percent')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tax_rates'))
    )
    op.create_index('ix_tax_rates_active_country', 'tax_rates', ['country'], unique=False, postgresql_where=sa.text('active'))
    op.add_column('customers', sa.Column('tax_id_type', sa.String(length=16), nullable=True))
    op.add_column('customers', sa.Column('tax_status', sa.String(length=16), server_default='business', nullable=False))
    op.add_column('invoice_lines', sa.Column('tax_rate_id', sa.String(length=40), nullable=True))
    op.add_column('invoice_lines', sa.Column('tax_reason', sa.String(length=24), nullable=True))
    op.add_column('invoices', sa.Column('tax_evidence', postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column('prices', sa.Column('tax_category', sa.String(length=16), server_default='standard', nullable=False))
    op.add_column('subscription_adjustments', sa.Column('tax_included', sa.Boolean(), server_default=sa.text('false'), nullable=False))
    op.execute(
        "ALTER TABLE invoice_lines ADD CONSTRAINT fk_invoice_lines_tax_rate_id_tax_rates "
        "FOREIGN KEY (tax_rate_id) REFERENCES tax_rates (id) NOT VALID"
    )
    for table, name, condition in CHECKS:
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID")
    with op.get_context().autocommit_block():
        op.execute(
            "ALTER TABLE invoice_lines VALIDATE CONSTRAINT fk_invoice_lines_tax_rate_id_tax_rates"
        )
        for table, name, _ in CHECKS:
            op.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")


def downgrade() -> None:
    for table, name, _ in CHECKS:
        op.drop_constraint(op.f(name), table, type_='check')
    op.drop_column('subscription_adjustments', 'tax_included')
    op.drop_column('prices', 'tax_category')
    op.drop_column('invoices', 'tax_evidence')
    op.drop_constraint(op.f('fk_invoice_lines_tax_rate_id_tax_rates'), 'invoice_lines', type_='foreignkey')
    op.drop_column('invoice_lines', 'tax_reason')
    op.drop_column('invoice_lines', 'tax_rate_id')
    op.drop_column('customers', 'tax_status')
    op.drop_column('customers', 'tax_id_type')
    op.drop_index('ix_tax_rates_active_country', table_name='tax_rates', postgresql_where=sa.text('active'))
    op.drop_table('tax_rates')
