from datetime import date

import pytest

from billing.invoicing.rules import InvoiceStatus
from billing.notifications.compose import TEMPLATES, compose
from billing.notifications.kinds import KINDS, Attachment, Facts, resend_refusal
from billing.notifications.rules import (
    DeliveryStatus,
    IllegalDeliveryTransition,
    SendOutcome,
    after_try,
    may_be_sent,
)

S = DeliveryStatus


def test_a_sent_email_is_never_sent_again_and_a_refused_one_may_be_replayed():
    assert [status for status in DeliveryStatus if may_be_sent(status)] == [S.PENDING, S.FAILED]
    assert not may_be_sent("bounced")  # no status the table knows


def test_a_try_leaves_the_delivery_sent_failed_or_as_it_was():
    assert after_try("pending", SendOutcome.SENT) is S.SENT
    assert after_try("pending", SendOutcome.REJECTED) is S.FAILED
    assert after_try("pending", SendOutcome.NOT_SENT) is S.PENDING
    assert after_try("failed", SendOutcome.SENT) is S.SENT
    assert after_try("failed", SendOutcome.REJECTED) is S.FAILED
    assert after_try("failed", SendOutcome.NOT_SENT) is S.FAILED


@pytest.mark.parametrize("outcome", list(SendOutcome))
def test_no_try_may_end_on_an_email_already_sent(outcome):
    with pytest.raises(IllegalDeliveryTransition):
        after_try("sent", outcome)


def test_every_declared_kind_has_its_three_templates_and_every_folder_is_a_kind():
    for kind in KINDS.values():
        for name in ("subject.txt", "body.txt", "body.html"):
            assert (TEMPLATES / kind.template / name).is_file(), (kind.name, name)
    folders = {path.name for path in TEMPLATES.iterdir() if not path.name.startswith("_")}
    assert folders == {kind.template for kind in KINDS.values()}


def test_only_the_issued_emails_attach_a_pdf_the_invoice_s_or_the_credit_note_s():
    attached = {k.name: k.attaches for k in KINDS.values() if k.attaches is not None}
    assert attached == {
        "invoice_issued": Attachment.INVOICE_PDF,
        "credit_note_issued": Attachment.CREDIT_NOTE_PDF,
    }


def test_a_resend_is_refused_outside_the_invoice_states_its_kind_declares():
    receipt = KINDS["payment_receipt"]
    assert resend_refusal(receipt, InvoiceStatus.PAID) is None
    assert resend_refusal(receipt, InvoiceStatus.OPEN) == (
        "a payment_receipt email is not sent for a open invoice (only paid)"
    )
    issued = KINDS["invoice_issued"]
    assert resend_refusal(issued, InvoiceStatus.VOID) == (
        "a invoice_issued email is not sent for a void invoice (only open, paid, uncollectible)"
    )


def test_asking_again_to_confirm_a_payment_needs_the_payment_still_waiting_for_it():
    refuse = KINDS["authentication_required"].refuse_resend
    assert refuse is not None
    assert refuse({"status": "requires_action"}) is None
    assert (
        refuse({"status": "succeeded"})
        == "the payment it asks the customer to confirm is now succeeded"
    )
    assert refuse(None) == "the payment it asks the customer to confirm is now gone"


def _facts(occasion=None, context=None, due_date=None):
    return Facts(
        occasion=occasion,
        context=context or {},
        due_date=due_date,
        portal_url="https://portal.example",
        invoice_url=None,
        money=lambda amount: f"EUR {amount / 100:.2f}",
        date=lambda value: value.isoformat() if value else "",
    )


def test_a_failed_payment_shows_the_attempt_s_amount_its_reason_and_the_next_retry():
    view = KINDS["payment_failed"].view(
        _facts(
            {"amount": 4200, "decline_code": "insufficient_funds", "next_action": None},
            {"next_retry_date": "2026-03-04"},
        )
    )
    assert view["amount_due"] == "EUR 42.00"
    assert view["next_retry_date"] == "2026-03-04"
    assert view["action_url"] == "https://portal.example"
    assert view["reason"] and view["what_to_do"]


def test_a_payment_to_confirm_links_to_stripe_s_page_else_the_portal():
    redirect = {"redirect_to_url": {"url": "https://hooks.stripe.example/3ds"}}
    attempt = {"amount": 900, "decline_code": None, "next_action": redirect}
    view = KINDS["authentication_required"].view(_facts(attempt))
    assert view["action_url"] == "https://hooks.stripe.example/3ds"
    gone = KINDS["authentication_required"].view(_facts(None))
    assert gone["action_url"] == "https://portal.example" and "amount_due" not in gone


def test_a_refund_shows_its_amount_and_a_reminder_its_days_overdue():
    assert KINDS["refund_issued"].view(_facts({"amount": 1250})) == {"refund_amount": "EUR 12.50"}
    reminder = KINDS["payment_reminder"].view(
        _facts(context={"as_of": "2026-03-10"}, due_date=date(2026, 3, 1))
    )
    assert reminder == {"days_overdue": 9}
    assert KINDS["final_notice"].view(_facts()) == {}


def test_a_credit_note_email_shows_its_number_total_and_settlement_in_words():
    note = {
        "number": "CN-2026-000007",
        "status": "issued",
        "reason": "product_unsatisfactory",
        "total": 11900,
        "issued_at": date(2026, 3, 20),
        "amount_due_reduction": 0,
        "refund_amount": 9900,
        "credit_balance_amount": 0,
        "out_of_band_amount": 2000,
    }
    view = KINDS["credit_note_issued"].view(_facts(note))
    assert view["credit_note_number"] == "CN-2026-000007"
    assert view["credit_note_total"] == "EUR 119.00"
    assert view["credit_note_reason"] == "Product unsatisfactory"
    assert view["settlement"] == [
        {"words": "Refunded to the original payment method", "amount": "EUR 99.00"},
        {"words": "Settled separately", "amount": "EUR 20.00"},
    ]


def test_a_credit_note_email_is_sent_again_only_while_the_credit_note_stands():
    refuse = KINDS["credit_note_issued"].refuse_resend
    assert refuse is not None
    assert refuse({"status": "issued"}) is None
    assert refuse({"status": "void"}) == "the credit note is void"
    assert refuse(None) == "the credit note is gone"


def test_a_trial_s_end_email_is_about_its_subscription_and_never_resent_for_an_invoice():
    trial = KINDS["trial_will_end"]
    assert trial.attaches is None and trial.occasion is None
    assert all(resend_refusal(trial, status) for status in InvoiceStatus)


def test_a_trial_s_end_email_names_the_day_the_plan_and_what_will_be_charged():
    view = {
        "seller_name": "Example SaaS Ltd",
        "seller_email": None,
        "portal_url": None,
        "customer_name": "Acme GmbH",
        "product": "Team plan",
        "quantity": 3,
        "unit_amount": "12,50 €",
        "period_amount": "37,50 €",
        "interval": "month",
        "trial_end_date": "14. Februar 2026",
    }
    email = compose("trial_will_end", view)
    assert email.subject == "Your trial of Team plan ends on 14. Februar 2026"
    for body in (email.text, email.html):
        assert "37,50 €" in body and "3 x 12,50 €" in body and "14. Februar 2026" in body
    assert "Invoice" not in email.html
