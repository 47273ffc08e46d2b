"""Invoice PDFs end to end in one process: finalize, the pdf job through its real Celery
task, storage (PostgreSQL, or S3 on moto's server), and the download endpoint."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from pypdf import PdfReader
from sqlalchemy import func, select

from billing.extensions import db
from billing.models import InvoiceDocument, OutboxJob, StoredBlob
from devstack.servers import free_port


def pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


def _send_invoice(admin, make_customer, **customer_fields: Any) -> dict[str, Any]:
    customer = make_customer(**customer_fields)
    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "collection_method": "send_invoice",
            "lines": [
                {"description": "Platform seats", "quantity": 12, "unit_amount": 2500},
                {"description": "Support plan", "quantity": 1, "unit_amount": 9900, "tax_rate": 19},
            ],
        },
    ).get_json()
    finalized = admin.post(f"/v1/invoices/{draft['id']}/finalize")
    assert finalized.status_code == 200, finalized.get_json()
    return finalized.get_json()  # type: ignore[no-any-return]


def _versions(invoice_id: str) -> list[InvoiceDocument]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(InvoiceDocument)
            .where(InvoiceDocument.invoice_id == invoice_id)
            .order_by(InvoiceDocument.version)
        )
    )


def test_finalizing_an_invoice_records_a_render_on_the_pdf_queue(admin, make_customer):
    invoice = _send_invoice(admin, make_customer)
    [job] = db.session.scalars(select(OutboxJob).where(OutboxJob.name == "pdf.render_invoice"))
    assert (job.queue, job.args) == ("pdf", {"invoice_id": invoice["id"]})


def test_the_pdf_answers_202_with_retry_after_until_it_is_rendered(admin, make_customer):
    invoice = _send_invoice(admin, make_customer)
    response = admin.get(f"/v1/invoices/{invoice['id']}/pdf")
    assert response.status_code == 202
    assert response.headers["Retry-After"] == "2"
    assert response.get_json()["render_pending"] is True


def test_the_rendered_pdf_is_served_with_its_etag_and_a_filename_with_the_number(
    admin, make_customer, run_jobs
):
    invoice = _send_invoice(admin, make_customer, name="Initech Holding AG")
    run_jobs()
    response = admin.get(f"/v1/invoices/{invoice['id']}/pdf")
    assert response.status_code == 200
    assert response.mimetype == "application/pdf"
    assert f'filename="invoice-{invoice["number"]}.pdf"' in response.headers["Content-Disposition"]
    [document] = _versions(invoice["id"])
    assert response.headers["ETag"] == f'"{document.sha256}"'
    text = pdf_text(response.data)
    for expected in (invoice["number"], "Initech Holding AG", "Platform seats", "Support plan"):
        assert expected in text
    assert "€417.81" in text  # 300.00 + 99.00 + 18.81 tax, as en_US writes euros
    again = admin.get(
        f"/v1/invoices/{invoice['id']}/pdf", headers={"If-None-Match": response.headers["ETag"]}
    )
    assert again.status_code == 304


def test_the_stored_document_carries_its_hash_template_and_renderer(admin, make_customer, run_jobs):
    import hashlib

    invoice = _send_invoice(admin, make_customer)
    run_jobs()
    [document] = _versions(invoice["id"])
    content = db.session.get(StoredBlob, document.storage_key).content
    assert document.sha256 == hashlib.sha256(content).hexdigest()
    assert document.size == len(content)
    assert document.template_version and document.renderer_version.startswith("weasyprint")
    assert (document.version, document.invoice_status, document.storage) == (1, "open", "postgres")
    shown = admin.get(f"/v1/invoices/{invoice['id']}").get_json()["document"]
    assert (shown["version"], shown["sha256"]) == (1, document.sha256)


def test_rendering_the_same_invoice_again_is_skipped(app, admin, make_customer, run_jobs):
    from billing.documents import documents

    invoice = _send_invoice(admin, make_customer)
    run_jobs()
    assert documents.render_invoice(invoice["id"]) == "unchanged"
    assert documents.render_invoice(invoice["id"]) == "unchanged"
    assert len(_versions(invoice["id"])) == 1


def test_a_paid_invoice_is_rendered_again_as_a_new_version_and_the_old_one_is_kept(
    admin, paying_customer, open_invoice, run_jobs
):
    invoice = open_invoice(paying_customer(name="Umbrella plc"))
    run_jobs()
    assert admin.get(f"/v1/invoices/{invoice['id']}").get_json()["status"] == "paid"
    versions = _versions(invoice["id"])
    statuses = [d.invoice_status for d in versions]
    # The first render may already see the invoice paid (the charge is quick); the newest
    # version always shows it paid, and every version is kept.
    assert statuses[-1] == "paid"
    assert len({d.sha256 for d in versions}) == len(versions)
    newest = admin.get(f"/v1/invoices/{invoice['id']}/pdf")
    assert "Paid" in pdf_text(newest.data)


def test_a_draft_has_no_pdf(admin, make_customer):
    customer = make_customer()
    draft = admin.post(
        "/v1/invoices",
        json={"customer": customer["id"], "lines": [{"description": "x", "unit_amount": 100}]},
    ).get_json()
    response = admin.get(f"/v1/invoices/{draft['id']}/pdf")
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "invoice_not_finalized"


def test_a_customer_key_downloads_its_own_pdf_only(admin, make_customer, customer_api, run_jobs):
    mine = _send_invoice(admin, make_customer)
    theirs = _send_invoice(admin, make_customer, email="other@example.com")
    run_jobs()
    api = customer_api(mine["customer"])
    assert api.get(f"/v1/invoices/{mine['id']}/pdf").status_code == 200
    hidden = api.get(f"/v1/invoices/{theirs['id']}/pdf")
    assert hidden.status_code == 404
    assert hidden.get_json()["error"]["code"] == "resource_missing"


def test_money_and_dates_follow_the_customers_locale(admin, make_customer, run_jobs):
    invoice = _send_invoice(admin, make_customer, locale="de_DE")
    run_jobs()
    text = pdf_text(admin.get(f"/v1/invoices/{invoice['id']}/pdf").data)
    assert "417,81 €" in text.replace("\xa0", " ")


@pytest.fixture
def s3_bucket(monkeypatch) -> Iterator[tuple[str, str]]:
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket="invoices"
    )
    try:
        yield endpoint, "invoices"
    finally:
        server.stop()


@pytest.fixture
def s3_app(service_env, s3_bucket):
    """The service with its documents in the moto bucket."""
    from billing import create_app

    endpoint, bucket = s3_bucket
    return create_app(
        {
            **service_env,
            "DOCUMENT_STORAGE": "s3",
            "S3_BUCKET": bucket,
            "S3_ENDPOINT_URL": endpoint,
            "S3_REGION": "us-east-1",
        }
    )


def test_documents_can_live_in_s3(s3_app, s3_bucket, admin, make_customer):
    endpoint, bucket = s3_bucket
    invoice = _send_invoice(admin, make_customer)
    with s3_app.app_context():
        from billing.documents import documents

        assert documents.render_invoice(invoice["id"]) == "stored"
        [document] = _versions(invoice["id"])
        served = s3_app.test_client().get(
            f"/v1/invoices/{invoice['id']}/pdf", headers=admin._headers(None)
        )
    assert document.storage == "s3"
    stored = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").get_object(
        Bucket=bucket, Key=f"invoices/{document.storage_key}"
    )
    content = stored["Body"].read()
    assert served.data == content
    assert invoice["number"] in pdf_text(content)
    assert db.session.scalar(select(func.count()).select_from(StoredBlob)) == 0


def test_an_invoice_email_attaches_the_pdf_stored_in_s3(s3_app, admin, make_customer, mailbox):
    from billing.models import EmailDelivery

    invoice = _send_invoice(admin, make_customer)
    with s3_app.app_context():
        from billing.documents import documents
        from billing.notifications import emails

        assert documents.render_invoice(invoice["id"]) == "stored"
        [delivery_id] = db.session.scalars(
            select(EmailDelivery.id).where(EmailDelivery.invoice_id == invoice["id"])
        ).all()
        assert emails.send_email(delivery_id) == "sent"
    [received] = mailbox.messages
    [attachment] = [part for part in received.message.walk() if part.get_filename()]
    assert invoice["number"] in pdf_text(attachment.get_payload(decode=True))
    assert db.session.scalar(select(func.count()).select_from(StoredBlob)) == 0


def test_a_discounted_invoice_paid_partly_from_the_balance_shows_both_on_its_pdf(
    admin, make_customer, run_jobs, tmp_path
):
    from tests.support.discounted import DISCOUNTED_LINES, give_discounts_and_balance
    from tests.support.papers import inked_share, page_images, squeezed

    customer = make_customer()
    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "collection_method": "send_invoice",
            "lines": DISCOUNTED_LINES,
        },
    ).get_json()
    invoice = admin.post(f"/v1/invoices/{draft['id']}/finalize").get_json()
    give_discounts_and_balance(invoice["id"])
    run_jobs()
    [document] = _versions(invoice["id"])
    content = db.session.get(StoredBlob, document.storage_key).content

    [page] = page_images(content, tmp_path, "invoice")
    assert 0.01 < inked_share(page) < 0.5
    flat = squeezed(pdf_text(content))
    for row in (
        "Subtotal €399.00",
        "Spring sale (20% off) -€79.80",
        "Loyalty credit (€10.00 off) -€10.00",
        "Discount -€89.80",
        "Tax €58.75",
        "Total €367.95",
        "Amount paid €0.00",
        "Applied from your credit balance €50.00",
        "Amount due €317.95",
        "Please pay €317.95",
        # The tax was computed on the discounted lines: €309.20 at 19 %.
        "19% €309.20 €58.75",
    ):
        assert squeezed(row) in flat, row
    assert "Credited" not in flat
    # The rows follow each other in that order down the totals.
    assert flat.index(squeezed("Subtotal €399.00")) < flat.index(squeezed("Discount -€89.80"))
    assert flat.index(squeezed("Discount -€89.80")) < flat.index(squeezed("Tax €58.75"))
    assert flat.index(squeezed("Total €367.95")) < flat.index(squeezed("Amount due €317.95"))


def test_a_coupon_given_through_the_api_is_a_discount_line_on_the_invoice_pdf(
    admin, make_customer, run_jobs
):
    from tests.support.papers import squeezed

    coupon = admin.post("/v1/coupons", json={"name": "Spring sale", "percent_off": 20})
    assert coupon.status_code == 200, coupon.get_json()
    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": make_customer()["id"],
            "collection_method": "send_invoice",
            "lines": [
                {"description": "Seats", "quantity": 1, "unit_amount": 10_000, "tax_rate": 19},
                {"description": "Handbook", "quantity": 1, "unit_amount": 5_000, "tax_rate": 7},
            ],
            "discounts": [{"coupon": coupon.get_json()["id"]}],
        },
    ).get_json()
    invoice = admin.post(f"/v1/invoices/{draft['id']}/finalize").get_json()
    run_jobs()
    flat = squeezed(pdf_text(admin.get(f"/v1/invoices/{invoice['id']}/pdf").data))
    for row in (
        "Subtotal €150.00",
        "Spring sale (20% off) -€30.00",
        "Tax €18.00",
        "Total €138.00",
        "Amount due €138.00",
        # Each rate's net after the discount, and the tax computed on it.
        "7% €40.00 €2.80",
        "19% €80.00 €15.20",
    ):
        assert squeezed(row) in flat, row
