"""Invoice documents, stored blobs, email deliveries; customer locale and billing emails

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 11:18:31.751688
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('stored_blobs',
    sa.Column('key', sa.String(length=512), nullable=False),
    sa.Column('content_type', sa.String(length=100), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_stored_blobs'))
    )
    op.create_table('email_deliveries',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('invoice_id', sa.String(length=40), nullable=False),
    sa.Column('occasion', sa.String(length=64), nullable=False),
    sa.Column('recipient', sa.String(length=320), nullable=False),
    sa.Column('ledger_key', sa.String(length=255), nullable=False),
    sa.Column('context', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('message_id', sa.String(length=255), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("kind IN ('invoice_issued', 'payment_receipt', 'payment_failed', 'authentication_required', 'refund_issued', 'payment_reminder', 'final_notice')", name=op.f('ck_email_deliveries_kind_known')),
    sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name=op.f('ck_email_deliveries_status_known')),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_email_deliveries_invoice_id_invoices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_email_deliveries')),
    sa.UniqueConstraint('ledger_key', name=op.f('uq_email_deliveries_ledger_key'))
    )
    op.create_index(op.f('ix_email_deliveries_invoice_id'), 'email_deliveries', ['invoice_id'], unique=False)
    op.create_table('invoice_documents',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('invoice_id', sa.String(length=40), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('invoice_status', sa.String(length=16), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('storage', sa.String(length=16), nullable=False),
    sa.Column('storage_key', sa.String(length=512), nullable=False),
    sa.Column('template_version', sa.String(length=32), nullable=False),
    sa.Column('renderer_version', sa.String(length=64), nullable=False),
    sa.Column('source_fingerprint', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('version > 0', name=op.f('ck_invoice_documents_version_positive')),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_invoice_documents_invoice_id_invoices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoice_documents')),
    sa.UniqueConstraint('invoice_id', 'sha256', name='uq_invoice_documents_sha256'),
    sa.UniqueConstraint('invoice_id', 'version', name='uq_invoice_documents_version')
    )
    op.create_index(op.f('ix_invoice_documents_invoice_id'), 'invoice_documents', ['invoice_id'], unique=False)
    op.add_column('customers', sa.Column('locale', sa.String(length=35), server_default='en_US', nullable=False))
    op.add_column('customers', sa.Column('billing_emails', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False))


def downgrade() -> None:
    op.drop_column('customers', 'billing_emails')
    op.drop_column('customers', 'locale')
    op.drop_index(op.f('ix_invoice_documents_invoice_id'), table_name='invoice_documents')
    op.drop_table('invoice_documents')
    op.drop_index(op.f('ix_email_deliveries_invoice_id'), table_name='email_deliveries')
    op.drop_table('email_deliveries')
    op.drop_table('stored_blobs')
