"""Credit notes, the customer balance, coupons and discounts

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 16:44:59.217202

Safe while the previous release serves: new tables, and new columns with defaults (zero)
under which every row it writes satisfies the widened constraints (a total is still the
subtotal plus the tax when nothing is discounted, nothing paid by balance or credited).
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

EMAIL_KINDS_BEFORE = ['invoice_issued', 'payment_receipt', 'payment_failed', 'authentication_required', 'refund_issued', 'payment_reminder', 'final_notice']
EMAIL_KINDS = EMAIL_KINDS_BEFORE + ['credit_note_issued', 'trial_will_end']


def upgrade() -> None:
    op.create_table('coupons',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('percent_off', sa.Numeric(precision=7, scale=4), nullable=True),
    sa.Column('amount_off', sa.BigInteger(), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('duration', sa.String(length=16), nullable=False),
    sa.Column('duration_in_months', sa.Integer(), nullable=True),
    sa.Column('max_redemptions', sa.Integer(), nullable=True),
    sa.Column('redeem_by', sa.DateTime(timezone=True), nullable=True),
    sa.Column('times_redeemed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("(duration = 'repeating') = (duration_in_months IS NOT NULL) AND (duration_in_months IS NULL OR duration_in_months > 0)", name=op.f('ck_coupons_months_iff_repeating')),
    sa.CheckConstraint("duration IN ('once', 'repeating', 'forever')", name=op.f('ck_coupons_duration_known')),
    sa.CheckConstraint('(amount_off IS NULL) = (currency IS NULL)', name=op.f('ck_coupons_currency_iff_amount')),
    sa.CheckConstraint('(percent_off IS NULL) <> (amount_off IS NULL)', name=op.f('ck_coupons_one_kind')),
    sa.CheckConstraint('amount_off > 0', name=op.f('ck_coupons_amount_off_positive')),
    sa.CheckConstraint('percent_off > 0 AND percent_off <= 100', name=op.f('ck_coupons_percent_off_bounded')),
    sa.CheckConstraint('times_redeemed >= 0 AND (max_redemptions IS NULL OR times_redeemed <= max_redemptions)', name=op.f('ck_coupons_redemptions_bounded')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_coupons'))
    )
    op.create_table('credit_note_number_sequences',
    sa.Column('year', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('last_number', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('year', name=op.f('pk_credit_note_number_sequences'))
    )
    op.create_table('promotion_codes',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('coupon_id', sa.String(length=40), nullable=False),
    sa.Column('active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('customer_id', sa.String(length=40), nullable=True),
    sa.Column('max_redemptions', sa.Integer(), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('times_redeemed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('times_redeemed >= 0 AND (max_redemptions IS NULL OR times_redeemed <= max_redemptions)', name=op.f('ck_promotion_codes_redemptions_bounded')),
    sa.ForeignKeyConstraint(['coupon_id'], ['coupons.id'], name=op.f('fk_promotion_codes_coupon_id_coupons')),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_promotion_codes_customer_id_customers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_promotion_codes'))
    )
    op.create_index(op.f('ix_promotion_codes_coupon_id'), 'promotion_codes', ['coupon_id'], unique=False)
    op.create_index('uq_promotion_codes_code', 'promotion_codes', [sa.literal_column('lower(code)')], unique=True)
    op.create_table('credit_notes',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('number', sa.String(length=32), nullable=False),
    sa.Column('invoice_id', sa.String(length=40), nullable=False),
    sa.Column('customer_id', sa.String(length=40), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('memo', sa.Text(), nullable=True),
    sa.Column('subtotal', sa.BigInteger(), nullable=False),
    sa.Column('tax', sa.BigInteger(), nullable=False),
    sa.Column('total', sa.BigInteger(), nullable=False),
    sa.Column('amount_due_reduction', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('refund_amount', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('credit_balance_amount', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('out_of_band_amount', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('issued_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('voided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("(status = 'void') = (voided_at IS NOT NULL)", name=op.f('ck_credit_notes_void_dated')),
    sa.CheckConstraint("reason IN ('duplicate', 'order_change', 'product_unsatisfactory', 'fraudulent', 'other')", name=op.f('ck_credit_notes_reason_known')),
    sa.CheckConstraint("status IN ('issued', 'void')", name=op.f('ck_credit_notes_status_known')),
    sa.CheckConstraint('amount_due_reduction >= 0 AND refund_amount >= 0 AND credit_balance_amount >= 0 AND out_of_band_amount >= 0 AND amount_due_reduction + refund_amount + credit_balance_amount + out_of_band_amount = total', name=op.f('ck_credit_notes_settlement_is_total')),
    sa.CheckConstraint('total = subtotal + tax AND total > 0', name=op.f('ck_credit_notes_total_is_sum')),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_credit_notes_customer_id_customers')),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_credit_notes_invoice_id_invoices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credit_notes')),
    sa.UniqueConstraint('number', name=op.f('uq_credit_notes_number'))
    )
    op.create_index('ix_credit_notes_customer', 'credit_notes', ['customer_id', 'id'], unique=False)
    op.create_index(op.f('ix_credit_notes_invoice_id'), 'credit_notes', ['invoice_id'], unique=False)
    op.create_table('credit_note_documents',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('credit_note_id', sa.String(length=40), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('credit_note_status', sa.String(length=16), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('storage', sa.String(length=16), nullable=False),
    sa.Column('storage_key', sa.String(length=512), nullable=False),
    sa.Column('template_version', sa.String(length=32), nullable=False),
    sa.Column('renderer_version', sa.String(length=64), nullable=False),
    sa.Column('source_fingerprint', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('version > 0', name=op.f('ck_credit_note_documents_version_positive')),
    sa.ForeignKeyConstraint(['credit_note_id'], ['credit_notes.id'], name=op.f('fk_credit_note_documents_credit_note_id_credit_notes')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credit_note_documents')),
    sa.UniqueConstraint('credit_note_id', 'sha256', name='uq_credit_note_documents_sha256'),
    sa.UniqueConstraint('credit_note_id', 'version', name='uq_credit_note_documents_version')
    )
    op.create_index(op.f('ix_credit_note_documents_credit_note_id'), 'credit_note_documents', ['credit_note_id'], unique=False)
    op.create_table('credit_note_lines',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('credit_note_id', sa.String(length=40), nullable=False),
    sa.Column('invoice_line_id', sa.String(length=40), nullable=True),
    sa.Column('description', sa.String(length=500), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=True),
    sa.Column('tax_rate', sa.Numeric(precision=7, scale=4), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('tax', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('amount >= 0 AND tax >= 0', name=op.f('ck_credit_note_lines_amounts_not_negative')),
    sa.CheckConstraint('quantity IS NULL OR quantity > 0', name=op.f('ck_credit_note_lines_quantity_positive')),
    sa.ForeignKeyConstraint(['credit_note_id'], ['credit_notes.id'], name=op.f('fk_credit_note_lines_credit_note_id_credit_notes'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['invoice_line_id'], ['invoice_lines.id'], name=op.f('fk_credit_note_lines_invoice_line_id_invoice_lines')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credit_note_lines'))
    )
    op.create_index(op.f('ix_credit_note_lines_credit_note_id'), 'credit_note_lines', ['credit_note_id'], unique=False)
    op.create_table('customer_balance_transactions',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('customer_id', sa.String(length=40), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('balance_after', sa.BigInteger(), nullable=False),
    sa.Column('credit_note_id', sa.String(length=40), nullable=True),
    sa.Column('invoice_id', sa.String(length=40), nullable=True),
    sa.Column('description', sa.String(length=500), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("type IN ('credit_note', 'credit_note_voided', 'adjustment', 'applied_to_invoice', 'invoice_voided')", name=op.f('ck_customer_balance_transactions_type_known')),
    sa.CheckConstraint('amount <> 0', name=op.f('ck_customer_balance_transactions_amount_not_zero')),
    sa.CheckConstraint('balance_after >= 0', name=op.f('ck_customer_balance_transactions_balance_after_not_negative')),
    sa.ForeignKeyConstraint(['credit_note_id'], ['credit_notes.id'], name=op.f('fk_customer_balance_transactions_credit_note_id_credit_notes')),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_customer_balance_transactions_customer_id_customers')),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_customer_balance_transactions_invoice_id_invoices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_customer_balance_transactions'))
    )
    op.create_index('ix_customer_balance_transactions_customer', 'customer_balance_transactions', ['customer_id', 'id'], unique=False)
    op.create_index('uq_customer_balance_transactions_credit_note', 'customer_balance_transactions', ['credit_note_id', 'type'], unique=True, postgresql_where=sa.text('credit_note_id IS NOT NULL'))
    op.create_index('uq_customer_balance_transactions_invoice', 'customer_balance_transactions', ['invoice_id', 'type'], unique=True, postgresql_where=sa.text('invoice_id IS NOT NULL'))
    op.create_table('discounts',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('coupon_id', sa.String(length=40), nullable=False),
    sa.Column('promotion_code_id', sa.String(length=40), nullable=True),
    sa.Column('customer_id', sa.String(length=40), nullable=False),
    sa.Column('subscription_id', sa.String(length=40), nullable=True),
    sa.Column('invoice_id', sa.String(length=40), nullable=True),
    sa.Column('start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('subscription_id IS NULL OR invoice_id IS NULL', name=op.f('ck_discounts_one_subscription_or_invoice')),
    sa.ForeignKeyConstraint(['coupon_id'], ['coupons.id'], name=op.f('fk_discounts_coupon_id_coupons')),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_discounts_customer_id_customers')),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_discounts_invoice_id_invoices')),
    sa.ForeignKeyConstraint(['promotion_code_id'], ['promotion_codes.id'], name=op.f('fk_discounts_promotion_code_id_promotion_codes')),
    sa.ForeignKeyConstraint(['subscription_id'], ['subscriptions.id'], name=op.f('fk_discounts_subscription_id_subscriptions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_discounts'))
    )
    op.create_index('ix_discounts_customer', 'discounts', ['customer_id'], unique=False)
    op.create_index('ix_discounts_invoice', 'discounts', ['invoice_id'], unique=False)
    op.create_index('ix_discounts_subscription', 'discounts', ['subscription_id'], unique=False)
    op.create_table('invoice_discounts',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('invoice_id', sa.String(length=40), nullable=False),
    sa.Column('discount_id', sa.String(length=40), nullable=False),
    sa.Column('coupon_id', sa.String(length=40), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('amount >= 0', name=op.f('ck_invoice_discounts_amount_not_negative')),
    sa.ForeignKeyConstraint(['coupon_id'], ['coupons.id'], name=op.f('fk_invoice_discounts_coupon_id_coupons')),
    sa.ForeignKeyConstraint(['discount_id'], ['discounts.id'], name=op.f('fk_invoice_discounts_discount_id_discounts')),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_invoice_discounts_invoice_id_invoices'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoice_discounts')),
    sa.UniqueConstraint('invoice_id', 'discount_id', name='uq_invoice_discounts_discount')
    )
    op.create_index(op.f('ix_invoice_discounts_invoice_id'), 'invoice_discounts', ['invoice_id'], unique=False)
    op.add_column('customers', sa.Column('balance', sa.BigInteger(), server_default='0', nullable=False))
    op.add_column('invoice_lines', sa.Column('discount_amount', sa.BigInteger(), server_default='0', nullable=False))
    op.add_column('invoices', sa.Column('discount', sa.BigInteger(), server_default='0', nullable=False))
    op.add_column('invoices', sa.Column('balance_applied', sa.BigInteger(), server_default='0', nullable=False))
    op.add_column('invoices', sa.Column('amount_credited', sa.BigInteger(), server_default='0', nullable=False))
    op.add_column('invoices', sa.Column('credit_notes_total', sa.BigInteger(), server_default='0', nullable=False))
    op.add_column('refunds', sa.Column('credit_note_id', sa.String(length=40), nullable=True))
    op.create_unique_constraint(op.f('uq_refunds_credit_note_id'), 'refunds', ['credit_note_id'])
    op.create_foreign_key(op.f('fk_refunds_credit_note_id_credit_notes'), 'refunds', 'credit_notes', ['credit_note_id'], ['id'])
    op.create_check_constraint(op.f('ck_customers_balance_not_negative'), 'customers', 'balance >= 0')
    op.create_check_constraint(op.f('ck_invoice_lines_discount_bounded'), 'invoice_lines', 'discount_amount >= 0 AND discount_amount <= greatest(amount, 0)')
    op.drop_constraint(op.f('ck_invoices_total_is_sum'), 'invoices', type_='check')
    op.create_check_constraint(op.f('ck_invoices_total_is_sum'), 'invoices', 'total = subtotal - discount + tax')
    op.create_check_constraint(op.f('ck_invoices_discount_not_negative'), 'invoices', 'discount >= 0')
    op.drop_constraint(op.f('ck_invoices_amount_paid_bounded'), 'invoices', type_='check')
    op.create_check_constraint(op.f('ck_invoices_amount_paid_bounded'), 'invoices', 'amount_paid >= 0 AND balance_applied >= 0 AND amount_credited >= 0 AND amount_paid + balance_applied + amount_credited <= total')
    op.create_check_constraint(op.f('ck_invoices_credit_notes_bounded'), 'invoices', 'credit_notes_total >= 0 AND credit_notes_total <= total')
    # Two new kinds of email: a credit note issued (about its invoice) and a trial about to
    # end (about a subscription, with no invoice).
    op.add_column('email_deliveries', sa.Column('subscription_id', sa.String(length=40), nullable=True))
    op.create_foreign_key(op.f('fk_email_deliveries_subscription_id_subscriptions'), 'email_deliveries', 'subscriptions', ['subscription_id'], ['id'])
    op.alter_column('email_deliveries', 'invoice_id', existing_type=sa.String(length=40), nullable=True)
    op.create_check_constraint(op.f('ck_email_deliveries_about_something'), 'email_deliveries', 'invoice_id IS NOT NULL OR subscription_id IS NOT NULL')
    op.drop_constraint(op.f('ck_email_deliveries_kind_known'), 'email_deliveries', type_='check')
    op.create_check_constraint(op.f('ck_email_deliveries_kind_known'), 'email_deliveries', f"kind IN ({', '.join(repr(k) for k in EMAIL_KINDS)})")


def downgrade() -> None:
    op.drop_constraint(op.f('ck_email_deliveries_kind_known'), 'email_deliveries', type_='check')
    op.create_check_constraint(op.f('ck_email_deliveries_kind_known'), 'email_deliveries', f"kind IN ({', '.join(repr(k) for k in EMAIL_KINDS_BEFORE)})")
    op.drop_constraint(op.f('ck_email_deliveries_about_something'), 'email_deliveries', type_='check')
    op.execute("DELETE FROM email_deliveries WHERE invoice_id IS NULL")
    op.alter_column('email_deliveries', 'invoice_id', existing_type=sa.String(length=40), nullable=False)
    op.drop_constraint(op.f('fk_email_deliveries_subscription_id_subscriptions'), 'email_deliveries', type_='foreignkey')
    op.drop_column('email_deliveries', 'subscription_id')
    op.drop_constraint(op.f('ck_invoices_credit_notes_bounded'), 'invoices', type_='check')
    op.drop_constraint(op.f('ck_invoices_amount_paid_bounded'), 'invoices', type_='check')
    op.create_check_constraint(op.f('ck_invoices_amount_paid_bounded'), 'invoices', 'amount_paid >= 0 AND amount_paid <= total')
    op.drop_constraint(op.f('ck_invoices_discount_not_negative'), 'invoices', type_='check')
    op.drop_constraint(op.f('ck_invoices_total_is_sum'), 'invoices', type_='check')
    op.create_check_constraint(op.f('ck_invoices_total_is_sum'), 'invoices', 'total = subtotal + tax')
    op.drop_constraint(op.f('ck_invoice_lines_discount_bounded'), 'invoice_lines', type_='check')
    op.drop_constraint(op.f('ck_customers_balance_not_negative'), 'customers', type_='check')


    op.drop_constraint(op.f('fk_refunds_credit_note_id_credit_notes'), 'refunds', type_='foreignkey')
    op.drop_constraint(op.f('uq_refunds_credit_note_id'), 'refunds', type_='unique')
    op.drop_column('refunds', 'credit_note_id')
    op.drop_column('invoices', 'credit_notes_total')
    op.drop_column('invoices', 'amount_credited')
    op.drop_column('invoices', 'balance_applied')
    op.drop_column('invoices', 'discount')
    op.drop_column('invoice_lines', 'discount_amount')
    op.drop_column('customers', 'balance')
    op.drop_index(op.f('ix_invoice_discounts_invoice_id'), table_name='invoice_discounts')
    op.drop_table('invoice_discounts')
    op.drop_index('ix_discounts_subscription', table_name='discounts')
    op.drop_index('ix_discounts_invoice', table_name='discounts')
    op.drop_index('ix_discounts_customer', table_name='discounts')
    op.drop_table('discounts')
    op.drop_index('uq_customer_balance_transactions_invoice', table_name='customer_balance_transactions', postgresql_where=sa.text('invoice_id IS NOT NULL'))
    op.drop_index('uq_customer_balance_transactions_credit_note', table_name='customer_balance_transactions', postgresql_where=sa.text('credit_note_id IS NOT NULL'))
    op.drop_index('ix_customer_balance_transactions_customer', table_name='customer_balance_transactions')
    op.drop_table('customer_balance_transactions')
    op.drop_index(op.f('ix_credit_note_lines_credit_note_id'), table_name='credit_note_lines')
    op.drop_table('credit_note_lines')
    op.drop_index(op.f('ix_credit_note_documents_credit_note_id'), table_name='credit_note_documents')
    op.drop_table('credit_note_documents')
    op.drop_index(op.f('ix_credit_notes_invoice_id'), table_name='credit_notes')
    op.drop_index('ix_credit_notes_customer', table_name='credit_notes')
    op.drop_table('credit_notes')
    op.drop_index('uq_promotion_codes_code', table_name='promotion_codes')
    op.drop_index(op.f('ix_promotion_codes_coupon_id'), table_name='promotion_codes')
    op.drop_table('promotion_codes')
    op.drop_table('credit_note_number_sequences')
    op.drop_table('coupons')
