"""Tax rates as objects, the rules choosing them on one-off and subscription lines, typed
tax ids, and the VIES evidence of reverse-charged invoices, through the API."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from billing.extensions import db
from billing.models import Customer, Invoice, InvoiceLine
from tests.support.fake_vies import FakeVies

PARIS = {"line1": "1 rue de la Paix", "city": "Paris", "postal_code": "75002", "country": "FR"}
BERLIN = {"line1": "Hauptstr. 5", "city": "Berlin", "postal_code": "10115", "country": "DE"}
NEW_YORK = {"line1": "1 Broadway", "city": "New York", "state": "NY", "country": "US"}
FRENCH_VAT = "FR40303265045"


@pytest.fixture
def vies():
    server = FakeVies()
    yield server
    server.stop()


@pytest.fixture
def service_env(service_env, vies):
    return {**service_env, "SELLER_COUNTRY": "DE", "VIES_URL": vies.url}


@pytest.fixture
def rates(admin):
    def make(**fields):
        body = {"display_name": "VAT", "percentage": 19, "country": "DE", **fields}
        response = admin.post("/v1/tax_rates", json=body)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    return make


@pytest.fixture
def german_vat(rates):
    return rates()


def _invoice(admin, customer, **line):
    body = {"description": "Consulting", "unit_amount": 10_000, **line}
    response = admin.post("/v1/invoices", json={"customer": customer["id"], "lines": [body]})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _line(invoice):
    [line] = invoice["lines"]["data"]
    return line


def test_a_tax_rate_is_created_listed_read_and_archived_by_an_admin(admin, rates):
    rate = rates(percentage="7", tax_category="reduced", display_name="VAT (reduced)")
    assert rate["object"] == "tax_rate"
    assert (rate["percentage"], rate["country"], rate["active"]) == ("7", "DE", True)
    assert admin.get(f"/v1/tax_rates/{rate['id']}").get_json() == rate
    assert [r["id"] for r in admin.get("/v1/tax_rates").get_json()["data"]] == [rate["id"]]
    archived = admin.post(f"/v1/tax_rates/{rate['id']}", json={"active": False}).get_json()
    assert archived["active"] is False
    assert admin.get("/v1/tax_rates?active=true").get_json()["data"] == []


def test_only_an_admin_key_may_create_or_archive_a_tax_rate(
    admin, german_vat, make_customer, customer_api
):
    api = customer_api(make_customer()["id"])
    created = api.post(
        "/v1/tax_rates", json={"display_name": "VAT", "percentage": 1, "country": "DE"}
    )
    assert created.status_code == 403
    archived = api.post(f"/v1/tax_rates/{german_vat['id']}", json={"active": False})
    assert archived.status_code == 403
    assert admin.get(f"/v1/tax_rates/{german_vat['id']}").get_json()["active"] is True


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"country": "XX"}, 400, "country_unknown"),
        ({"country": "ZZ"}, 400, "country_unknown"),
        ({"country": "DEU"}, 400, "parameter_invalid"),
        ({"percentage": 101}, 400, "parameter_invalid"),
        ({"percentage": -1}, 400, "parameter_invalid"),
    ],
)
def test_a_bad_tax_rate_is_refused_with_a_stable_code_and_nothing_made(admin, fields, status, code):
    body = {"display_name": "VAT", "percentage": 19, "country": "DE", **fields}
    response = admin.post("/v1/tax_rates", json=body)
    assert response.status_code == status, response.get_json()
    assert response.get_json()["error"]["code"] == code
    assert admin.get("/v1/tax_rates").get_json()["data"] == []


def test_an_inclusive_rate_is_taken_by_the_lines_that_name_it_never_by_the_rules(
    admin, make_customer, rates
):
    inclusive = rates(inclusive=True)
    assert inclusive["inclusive"] is True
    customer = make_customer(address=BERLIN, tax_status="individual")
    # No exclusive rate for Germany: the rules leave the inclusive one alone.
    ruled = _line(_invoice(admin, customer))
    assert (ruled["tax_rate"], ruled["tax_rate_id"], ruled["tax_inclusive"]) == ("0", None, False)
    invoice = _invoice(admin, customer, unit_amount=11_900, tax_rate_id=inclusive["id"])
    line = _line(invoice)
    assert (line["amount"], line["tax"], line["tax_inclusive"]) == (10_000, 1900, True)
    assert (line["tax_rate"], line["tax_rate_id"], line["tax_reason"]) == (
        "19",
        inclusive["id"],
        "manual",
    )
    assert (invoice["subtotal"], invoice["tax"], invoice["total"]) == (10_000, 1900, 11_900)
    # A line added later is taxed with the others: its rate's tax is rounded once.
    added = admin.post(
        f"/v1/invoices/{invoice['id']}/lines",
        json={"description": "Extra", "unit_amount": 1, "tax_rate_id": inclusive["id"]},
    )
    assert added.status_code == 200, added.get_json()
    after = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert (after["subtotal"], after["tax"], after["total"]) == (10_001, 1900, 11_901)
    rows = db.session.scalars(
        select(InvoiceLine).where(InvoiceLine.invoice_id == invoice["id"]).order_by(InvoiceLine.id)
    ).all()
    assert [(r.unit_amount, r.amount, r.tax, r.tax_inclusive) for r in rows] == [
        (11_900, 10_000, 1900, True),
        (1, 1, 0, True),
    ]


def test_a_domestic_line_without_a_rate_takes_the_seller_s_standard_rate(
    admin, make_customer, german_vat
):
    customer = make_customer(address=BERLIN, tax_status="individual")
    invoice = _invoice(admin, customer)
    line = _line(invoice)
    assert (line["tax_rate"], line["tax_rate_id"], line["tax_reason"]) == (
        "19",
        german_vat["id"],
        "standard",
    )
    assert (invoice["tax"], invoice["total"]) == (1900, 11_900)


def test_a_customer_without_an_address_is_taxed_as_at_home(admin, make_customer, german_vat):
    line = _line(_invoice(admin, make_customer()))
    assert (line["tax_rate"], line["tax_reason"]) == ("19", "standard")


def test_a_line_with_its_own_rate_keeps_it_and_is_marked_manual(admin, make_customer, german_vat):
    line = _line(_invoice(admin, make_customer(address=BERLIN), tax_rate="7.7"))
    assert (line["tax_rate"], line["tax_rate_id"], line["tax_reason"]) == ("7.7", None, "manual")


def test_an_exempt_customer_and_an_exempt_product_are_taxed_at_zero_as_exempt(
    admin, make_customer, german_vat
):
    exempt = make_customer(address=BERLIN, tax_status="exempt")
    assert _line(_invoice(admin, exempt))["tax_reason"] == "exempt"
    product = _line(_invoice(admin, make_customer(address=BERLIN), tax_category="exempt"))
    assert (product["tax_rate"], product["tax_reason"]) == ("0", "exempt")


def test_a_customer_outside_the_eu_is_billed_a_zero_rated_export(admin, make_customer, german_vat):
    line = _line(_invoice(admin, make_customer(address=NEW_YORK)))
    assert (line["tax_rate"], line["tax_rate_id"], line["tax_reason"]) == (
        "0",
        None,
        "zero_rated_export",
    )


def test_an_eu_consumer_abroad_pays_their_country_s_rate_when_the_seller_has_one(
    admin, make_customer, german_vat, rates
):
    consumer = make_customer(address=PARIS, tax_status="individual")
    assert _line(_invoice(admin, consumer))["tax_rate"] == "19"  # no French rate yet
    french = rates(country="FR", percentage=20)
    line = _line(_invoice(admin, consumer))
    assert (line["tax_rate"], line["tax_rate_id"]) == ("20", french["id"])


def test_an_eu_business_abroad_with_a_vat_id_is_reverse_charged_and_vies_confirms_it(
    admin, make_customer, german_vat, vies, run_jobs
):
    customer = make_customer(
        address=PARIS, tax_id="FR 40 303 265 045", tax_id_type="eu_vat", tax_status="business"
    )
    assert customer["tax_id"] == FRENCH_VAT
    invoice = _invoice(admin, customer, tax_category="reduced")
    line = _line(invoice)
    assert (line["tax_rate"], line["tax_reason"], invoice["tax"]) == ("0", "reverse_charge", 0)
    finalized = admin.post(
        f"/v1/invoices/{invoice['id']}/finalize", headers={"Idempotency-Key": "fin-1"}
    )
    assert finalized.status_code == 200, finalized.get_json()
    run_jobs()
    assert vies.asked == [{"countryCode": "FR", "vatNumber": "40303265045"}]
    evidence = db.session.get(Invoice, invoice["id"]).tax_evidence
    assert evidence["status"] == "valid"
    assert (evidence["name"], evidence["requestDate"]) == (
        "CLIENT SARL",
        "2026-03-05T10:00:00.000Z",
    )
    # Shown with the invoice, for whoever must prove the reverse charge was due.
    assert admin.get(f"/v1/invoices/{invoice['id']}").get_json()["tax_evidence"] == evidence


def test_vies_down_leaves_the_invoice_finalized_with_its_unavailability_as_evidence(
    admin, make_customer, german_vat, vies, run_jobs
):
    vies.down = True
    customer = make_customer(address=PARIS, tax_id=FRENCH_VAT, tax_id_type="eu_vat")
    invoice = _invoice(admin, customer)
    finalized = admin.post(f"/v1/invoices/{invoice['id']}/finalize")
    assert finalized.status_code == 200, finalized.get_json()
    assert finalized.get_json()["status"] in ("open", "paid")
    run_jobs(max_rounds=1)
    db.session.expire_all()
    assert db.session.get(Invoice, invoice["id"]).tax_evidence["status"] == "unavailable"


def test_an_archived_rate_is_chosen_no_more_and_stays_on_the_lines_that_used_it(
    admin, make_customer, german_vat
):
    customer = make_customer(address=BERLIN)
    before = _line(_invoice(admin, customer))
    admin.post(f"/v1/tax_rates/{german_vat['id']}", json={"active": False})
    refused = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "lines": [
                {"description": "Seats", "unit_amount": 100, "tax_rate_id": german_vat["id"]}
            ],
        },
    )
    assert refused.status_code == 409
    assert refused.get_json()["error"] == {
        "code": "tax_rate_archived",
        "message": f"tax rate '{german_vat['id']}' is archived",
        "param": "lines.0.tax_rate_id",
    }
    assert db.session.scalar(select(db.func.count()).select_from(Invoice)) == 1
    kept = db.session.get(InvoiceLine, before["id"])
    assert (kept.tax_rate_id, kept.tax_rate) == (german_vat["id"], 19)
    # Without a rate of its own, a new line finds no active German rate: 0%, standard.
    assert _line(_invoice(admin, customer))["tax_rate"] == "0"


@pytest.mark.parametrize(
    ("kind", "given", "stored"),
    [
        ("eu_vat", "de 136 695 976", "DE136695976"),
        ("gb_vat", "GB 980 7806 84", "GB980780684"),
        ("ch_vat", "CHE-107.787.577 MWST", "CHE107787577MWST"),
        ("us_ein", "04-2103594", "042103594"),
        ("au_abn", "83 914 571 673", "83914571673"),
        ("no_vat", "NO 995 525 828 MVA", "NO995525828MVA"),
        ("in_gst", "27AAPFU0939F1ZV", "27AAPFU0939F1ZV"),
    ],
)
def test_a_typed_tax_id_is_stored_compact(make_customer, kind, given, stored):
    customer = make_customer(tax_id=given, tax_id_type=kind)
    assert (customer["tax_id"], customer["tax_id_type"]) == (stored, kind)


def test_a_bad_tax_id_is_refused_and_nothing_changes(admin, make_customer):
    refused = admin.post(
        "/v1/customers",
        json={
            "name": "Bad",
            "email": "bad@example.com",
            "currency": "eur",
            "tax_id": "DE136695977",
            "tax_id_type": "eu_vat",
        },
    )
    assert refused.status_code == 400
    assert refused.get_json()["error"]["code"] == "tax_id_invalid"
    assert db.session.scalar(select(db.func.count()).select_from(Customer)) == 0
    customer = make_customer(tax_id=FRENCH_VAT, tax_id_type="eu_vat")
    patched = admin.patch(
        f"/v1/customers/{customer['id']}",
        json={"name": "Renamed", "tax_id": "FR40303265046"},
    )
    assert patched.status_code == 400
    assert patched.get_json()["error"] == {
        "code": "tax_id_invalid",
        "message": patched.get_json()["error"]["message"],
        "param": "tax_id",
    }
    unchanged = admin.get(f"/v1/customers/{customer['id']}").get_json()
    assert (unchanged["name"], unchanged["tax_id"]) == ("Acme GmbH", FRENCH_VAT)


def test_a_subscription_s_invoices_are_taxed_by_the_same_rules(admin, make_customer, german_vat):
    customer = make_customer(address=BERLIN, tax_status="individual")
    price = admin.post(
        "/v1/prices",
        json={"product": "Team plan", "unit_amount": 1000, "currency": "eur", "interval": "month"},
    ).get_json()
    assert price["tax_category"] == "standard"
    subscription = admin.post(
        "/v1/subscriptions",
        json={
            "customer": customer["id"],
            "price": price["id"],
            "collection_method": "send_invoice",
        },
    ).get_json()
    invoice = admin.get(f"/v1/invoices/{subscription['latest_invoice']}").get_json()
    line = _line(invoice)
    assert (line["tax_rate"], line["tax_rate_id"], line["tax_reason"]) == (
        "19",
        german_vat["id"],
        "standard",
    )
    assert (invoice["subtotal"], invoice["tax"], invoice["total"]) == (1000, 190, 1190)
