import re
from datetime import UTC, date, datetime, timedelta

import pytest

LINES = [
    {"description": "Seats", "quantity": 3, "unit_amount": 1000, "tax_rate": 19},
    {"description": "Support", "quantity": 1, "unit_amount": 250, "tax_rate": "7.7"},
]


@pytest.fixture
def customer(make_customer):
    return make_customer()


@pytest.fixture
def draft(admin, customer):
    response = admin.post("/v1/invoices", json={"customer": customer["id"], "lines": LINES})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_a_draft_invoice_carries_its_lines_and_totals_in_minor_units(draft, customer):
    assert draft["status"] == "draft"
    assert draft["number"] is None
    assert draft["currency"] == "eur"
    assert draft["collection_method"] == "charge_automatically"
    assert [line["amount"] for line in draft["lines"]["data"]] == [3000, 250]
    # 19% of 3000 = 570; 7.7% of 250 = 19.25 -> 19
    assert [line["tax"] for line in draft["lines"]["data"]] == [570, 19]
    assert (draft["subtotal"], draft["tax"], draft["total"]) == (3250, 589, 3839)
    assert draft["amount_paid"] == 0
    assert draft["amount_due"] == 3839
    assert {t["tax_rate"]: t["amount"] for t in draft["total_tax_amounts"]} == {
        "19": 570,
        "7.7": 19,
    }


def test_a_zero_decimal_currency_is_billed_in_whole_units(admin, make_customer):
    customer = make_customer(currency="jpy")
    invoice = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "lines": [{"description": "Plan", "unit_amount": 1234, "tax_rate": 10}],
        },
    ).get_json()
    assert invoice["currency"] == "jpy"
    assert (invoice["subtotal"], invoice["tax"], invoice["total"]) == (1234, 123, 1357)


def test_lines_can_be_added_and_removed_while_draft(admin, draft):
    added = admin.post(
        f"/v1/invoices/{draft['id']}/lines",
        json={"description": "Extra", "quantity": 2, "unit_amount": 500},
    ).get_json()
    assert added["subtotal"] == 4250
    line_id = added["lines"]["data"][0]["id"]
    removed = admin.delete(f"/v1/invoices/{draft['id']}/lines/{line_id}").get_json()
    assert removed["subtotal"] == 1250
    assert len(removed["lines"]["data"]) == 2


def test_finalizing_numbers_the_invoice_and_opens_it(admin, draft):
    response = admin.post(f"/v1/invoices/{draft['id']}/finalize")
    assert response.status_code == 200
    invoice = response.get_json()
    assert invoice["status"] == "open"
    year = datetime.now(UTC).year
    assert re.fullmatch(rf"INV-{year}-\d{{6}}", invoice["number"])
    assert invoice["finalized_at"] is not None
    assert invoice["due_date"] is None  # charged automatically


def test_numbers_follow_each_other_without_gaps(admin, customer):
    numbers = []
    for _ in range(3):
        invoice = admin.post("/v1/invoices", json={"customer": customer["id"], "lines": LINES})
        numbers.append(
            admin.post(f"/v1/invoices/{invoice.get_json()['id']}/finalize").get_json()["number"]
        )
    sequence = [int(n.rsplit("-", 1)[1]) for n in numbers]
    assert sequence == [sequence[0], sequence[0] + 1, sequence[0] + 2]


def test_a_failed_finalization_gives_its_number_back(admin, customer):
    empty = admin.post("/v1/invoices", json={"customer": customer["id"]}).get_json()
    refused = admin.post(f"/v1/invoices/{empty['id']}/finalize")
    assert refused.status_code == 422
    first = admin.post("/v1/invoices", json={"customer": customer["id"], "lines": LINES})
    number = admin.post(f"/v1/invoices/{first.get_json()['id']}/finalize").get_json()["number"]
    assert number.endswith("-000001")


def test_a_send_invoice_invoice_gets_a_due_date_at_finalization(admin, customer):
    invoice = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "collection_method": "send_invoice",
            "days_until_due": 14,
            "lines": LINES,
        },
    ).get_json()
    finalized = admin.post(f"/v1/invoices/{invoice['id']}/finalize").get_json()
    expected = (datetime.now(UTC) + timedelta(days=14)).date()
    assert date.fromisoformat(finalized["due_date"]) == expected


def test_lines_of_a_finalized_invoice_cannot_change(admin, draft):
    admin.post(f"/v1/invoices/{draft['id']}/finalize")
    response = admin.post(
        f"/v1/invoices/{draft['id']}/lines", json={"description": "Late", "unit_amount": 1}
    )
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "invoice_not_editable"
    line_id = draft["lines"]["data"][0]["id"]
    assert admin.delete(f"/v1/invoices/{draft['id']}/lines/{line_id}").status_code == 409
    assert admin.get(f"/v1/invoices/{draft['id']}").get_json()["total"] == draft["total"]


@pytest.mark.parametrize("action", ["void", "mark_uncollectible"])
def test_a_draft_cannot_be_voided_or_written_off(admin, draft, action):
    response = admin.post(f"/v1/invoices/{draft['id']}/{action}")
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "invalid_state_transition"
    assert admin.get(f"/v1/invoices/{draft['id']}").get_json()["status"] == "draft"


def test_an_uncollectible_invoice_can_still_be_voided_but_a_void_one_is_final(admin, draft):
    admin.post(f"/v1/invoices/{draft['id']}/finalize")
    uncollectible = admin.post(f"/v1/invoices/{draft['id']}/mark_uncollectible").get_json()
    assert uncollectible["status"] == "uncollectible"
    assert uncollectible["marked_uncollectible_at"] is not None
    void = admin.post(f"/v1/invoices/{draft['id']}/void").get_json()
    assert void["status"] == "void"
    again = admin.post(f"/v1/invoices/{draft['id']}/finalize")
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "invalid_state_transition"


def test_finalizing_twice_is_refused_and_keeps_the_first_number(admin, draft):
    first = admin.post(f"/v1/invoices/{draft['id']}/finalize").get_json()
    second = admin.post(f"/v1/invoices/{draft['id']}/finalize")
    assert second.status_code == 409
    assert admin.get(f"/v1/invoices/{draft['id']}").get_json()["number"] == first["number"]


def test_invoices_are_listed_by_customer_and_status_with_a_cursor(admin, make_customer):
    one, two = make_customer(), make_customer()
    ids = []
    for customer in (one, two, one):
        invoice = admin.post("/v1/invoices", json={"customer": customer["id"], "lines": LINES})
        ids.append(invoice.get_json()["id"])
    admin.post(f"/v1/invoices/{ids[2]}/finalize")
    mine = admin.get(f"/v1/invoices?customer={one['id']}").get_json()
    assert [i["id"] for i in mine["data"]] == [ids[2], ids[0]]
    open_ = admin.get("/v1/invoices?status=open").get_json()
    assert [i["id"] for i in open_["data"]] == [ids[2]]
    page = admin.get("/v1/invoices?limit=2").get_json()
    assert page["has_more"] is True
    rest = admin.get(f"/v1/invoices?limit=2&starting_after={page['data'][-1]['id']}").get_json()
    assert [i["id"] for i in page["data"] + rest["data"]] == list(reversed(ids))
    assert rest["has_more"] is False


def test_a_customer_key_sees_only_its_own_invoices(admin, make_customer, customer_api):
    mine, theirs = make_customer(), make_customer()
    my_invoice = admin.post("/v1/invoices", json={"customer": mine["id"], "lines": LINES})
    their_invoice = admin.post("/v1/invoices", json={"customer": theirs["id"], "lines": LINES})
    api = customer_api(mine["id"])
    assert api.get(f"/v1/invoices/{my_invoice.get_json()['id']}").status_code == 200
    assert api.get(f"/v1/invoices/{their_invoice.get_json()['id']}").status_code == 404
    listed = api.get(f"/v1/invoices?customer={theirs['id']}").get_json()
    assert listed["data"] == []
    assert api.post(f"/v1/invoices/{their_invoice.get_json()['id']}/finalize").status_code in (
        403,
        404,
    )
    assert admin.get(f"/v1/invoices/{their_invoice.get_json()['id']}").get_json()["status"] == (
        "draft"
    )


def test_an_invoice_for_an_unknown_customer_is_refused(admin):
    response = admin.post("/v1/invoices", json={"customer": "cus_nope", "lines": LINES})
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "resource_missing"


def test_an_invoice_in_another_currency_than_its_customer_is_refused(admin, customer):
    response = admin.post(
        "/v1/invoices", json={"customer": customer["id"], "currency": "usd", "lines": LINES}
    )
    assert response.status_code == 422
    assert response.get_json()["error"]["param"] == "currency"
