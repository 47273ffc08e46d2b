"""The Stripe emulator answers search and the PaymentIntent list's filters as Stripe does,
through the stripe SDK against the real emulator process: the calls our gateway makes."""

from __future__ import annotations

import time
from typing import Any

import pytest
import stripe

from devstack.servers import LocalStripe


@pytest.fixture
def emulator(localstripe: LocalStripe, stripe_client: Any) -> Any:
    localstripe.reset()
    return stripe_client


def _customer(emulator: Any, **metadata: str) -> Any:
    return emulator.v1.customers.create(params={"name": "Acme", "metadata": metadata})


def _intent(emulator: Any, customer: Any = None, amount: int = 5000, **metadata: str) -> Any:
    params: dict[str, Any] = {"amount": amount, "currency": "eur", "metadata": metadata}
    if customer is not None:
        params["customer"] = customer.id
    return emulator.v1.payment_intents.create(params=params)


def _ids(page: Any) -> list[str]:
    return [item.id for item in page.auto_paging_iter()]


def _next_second() -> int:
    """Wait for the emulator's clock (this machine's) to start a new second; return it."""
    now = int(time.time())
    time.sleep(now + 1 - time.time() + 0.01)
    return now + 1


def test_a_payment_intent_is_found_by_a_metadata_value_in_a_search_result(emulator):
    wanted = _intent(emulator, invoice_id="inv_1", ledger_key="charge:att_1")
    _intent(emulator, invoice_id="inv_2", ledger_key="charge:att_2")

    found = emulator.v1.payment_intents.search(
        params={"query": "metadata['ledger_key']:'charge:att_1'"}
    )

    assert [i.id for i in found.data] == [wanted.id]
    assert (found.object, found.url, found.has_more, found.next_page) == (
        "search_result",
        "/v1/payment_intents/search",
        False,
        None,
    )
    assert found.data[0].metadata["invoice_id"] == "inv_1"
    # The search route sits beside the one by id, which still answers.
    assert emulator.v1.payment_intents.retrieve(wanted.id).id == wanted.id


def test_search_answers_newest_first_and_pages_by_limit_and_next_page(emulator):
    created = [_intent(emulator, invoice_id="inv_1").id for _ in range(5)]
    _intent(emulator, invoice_id="inv_other")

    first = emulator.v1.payment_intents.search(
        params={"query": "metadata['invoice_id']:'inv_1'", "limit": 2}
    )
    assert [i.id for i in first.data] == created[:-3:-1]
    assert first.has_more and first.next_page
    second = emulator.v1.payment_intents.search(
        params={"query": "metadata['invoice_id']:'inv_1'", "limit": 2, "page": first.next_page}
    )
    assert [i.id for i in second.data] == created[2:0:-1]
    assert _ids(first) == created[::-1]


def test_clauses_joined_by_and_must_all_match_and_joined_by_or_any_of_them(emulator):
    acme, other = _customer(emulator), _customer(emulator)
    mine = _intent(emulator, acme, invoice_id="inv_1")
    _intent(emulator, other, invoice_id="inv_1")
    second = _intent(emulator, acme, invoice_id="inv_2")

    def search(query: str) -> list[str]:
        return _ids(emulator.v1.payment_intents.search(params={"query": query}))

    assert search(f"metadata['invoice_id']:'inv_1' AND customer:'{acme.id}'") == [mine.id]
    assert search(f"metadata['invoice_id']:'inv_1' customer:'{acme.id}'") == [mine.id]
    assert search("metadata['invoice_id']:'inv_2' OR metadata['invoice_id']:'inv_1'") == [
        i.id for i in emulator.v1.payment_intents.list().data
    ]
    assert search(f"customer:'{acme.id}' AND -metadata['invoice_id']:'inv_1'") == [second.id]
    assert search(
        f"customer:'{acme.id}' AND amount>=5000 AND status:'requires_payment_method'"
    ) == [
        second.id,
        mine.id,
    ]


def test_an_exact_match_ignores_case_and_null_finds_an_absent_key(emulator):
    tagged = _intent(emulator, ledger_key="charge:ATT_1")
    untagged = _intent(emulator)

    def search(query: str) -> list[str]:
        return _ids(emulator.v1.payment_intents.search(params={"query": query}))

    assert search("metadata['ledger_key']:'charge:att_1'") == [tagged.id]
    assert search('metadata["ledger_key"]:"CHARGE:att_1"') == [tagged.id]
    assert search("metadata['ledger_key']:null") == [untagged.id]


def test_a_quote_in_a_value_is_escaped_with_a_backslash(emulator):
    quoted = _intent(emulator, note="O'Brien's")

    found = emulator.v1.payment_intents.search(params={"query": r"metadata['note']:'O\'Brien\'s'"})

    assert [i.id for i in found.data] == [quoted.id]


def test_a_payment_intent_is_found_by_metadata_added_after_it_was_created(emulator):
    intent = _intent(emulator, invoice_id="inv_1")
    emulator.v1.payment_intents.update(intent.id, params={"metadata": {"invoice_id": "inv_2"}})

    def search(value: str) -> list[str]:
        query = f"metadata['invoice_id']:'{value}'"
        return _ids(emulator.v1.payment_intents.search(params={"query": query}))

    assert search("inv_2") == [intent.id]
    assert search("inv_1") == []  # what it no longer carries is not found


def test_an_emptied_emulator_finds_nothing(emulator, localstripe):
    _intent(emulator, invoice_id="inv_1")
    _customer(emulator, ledger_key="customer:cus_1")
    localstripe.reset()

    assert (
        emulator.v1.payment_intents.search(params={"query": "metadata['invoice_id']:'inv_1'"}).data
        == []
    )
    assert (
        emulator.v1.customers.search(
            params={"query": "metadata['ledger_key']:'customer:cus_1'"}
        ).data
        == []
    )
    assert emulator.v1.payment_intents.list().data == []


def test_a_customer_is_found_by_a_metadata_value_and_by_a_part_of_its_email(emulator):
    acme = emulator.v1.customers.create(
        params={"email": "billing@acme.test", "metadata": {"ledger_key": "customer:cus_1"}}
    )
    emulator.v1.customers.create(params={"email": "ops@other.test"})

    def search(query: str) -> list[str]:
        return _ids(emulator.v1.customers.search(params={"query": query}))

    assert search("metadata['ledger_key']:'customer:cus_1'") == [acme.id]
    assert search("email~'acme'") == [acme.id]
    assert search("metadata['ledger_key']:'customer:cus_2'") == []


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("", "Missing required param: query"),
        ("description:'x'", "unsupported search field"),
        ("metadata['a']:'1' AND metadata['b']:'2' OR metadata['c']:'3'", "AND and OR"),
        ("status:succeeded", "must be quoted"),
        ("metadata['a']~'abc'", "substring"),
        ("amount>'many'", "whole number"),
        ("metadata:'x'", "metadata['key']"),
        (" AND ".join(f"amount>{n}" for n in range(11)), "at most 10 clauses"),
    ],
)
def test_a_query_stripe_refuses_is_answered_400_naming_the_query(emulator, query, says):
    with pytest.raises(stripe.InvalidRequestError) as refused:
        emulator.v1.payment_intents.search(params={"query": query})
    assert refused.value.http_status == 400
    assert says in str(refused.value.user_message)
    assert refused.value.param == "query"


def test_the_list_filters_by_customer_newest_first(emulator):
    acme, other = _customer(emulator), _customer(emulator)
    mine = [_intent(emulator, acme).id, _intent(emulator, other).id, _intent(emulator, acme).id]

    page = emulator.v1.payment_intents.list(params={"customer": acme.id, "limit": 1})

    assert [i.id for i in page.data] == [mine[2]]
    assert page.has_more
    assert _ids(page) == [mine[2], mine[0]]
    assert emulator.v1.payment_intents.list(params={"customer": "cus_nobody"}).data == []

    def listed(customer: Any) -> list[str]:
        return _ids(emulator.v1.payment_intents.list(params={"customer": customer.id}))

    # Moved to another customer and back: listed once, under the customer it names now.
    emulator.v1.payment_intents.update(mine[0], params={"customer": other.id})
    assert (listed(acme), listed(other)) == ([mine[2]], [mine[1], mine[0]])
    emulator.v1.payment_intents.update(mine[0], params={"customer": acme.id})
    assert (listed(acme), listed(other)) == ([mine[2], mine[0]], [mine[1]])


def test_the_list_is_newest_first_with_starting_after_and_ending_before(emulator):
    created = [_intent(emulator).id for _ in range(5)]
    newest_first = created[::-1]

    after = emulator.v1.payment_intents.list(params={"limit": 2, "starting_after": newest_first[1]})
    assert [i.id for i in after.data] == newest_first[2:4]
    assert after.has_more
    before = emulator.v1.payment_intents.list(params={"limit": 2, "ending_before": newest_first[3]})
    assert [i.id for i in before.data] == newest_first[1:3]
    assert before.has_more
    # The SDK pages backwards from ending_before, oldest first.
    assert _ids(before) == newest_first[2::-1]
    assert _ids(emulator.v1.payment_intents.list(params={"limit": 2})) == newest_first


def test_the_list_filters_by_created_with_each_bound_and_an_exact_second(emulator):
    first_second = _next_second()
    early = [_intent(emulator).id for _ in range(2)]
    middle_second = _next_second()
    middle = [_intent(emulator).id for _ in range(3)]
    _next_second()
    late = [_intent(emulator).id for _ in range(2)]
    assert {emulator.v1.payment_intents.retrieve(i).created for i in middle} == {middle_second}

    def listed(created: Any) -> list[str]:
        page = emulator.v1.payment_intents.list(params={"created": created, "limit": 2})
        return _ids(page)

    assert listed({"gte": middle_second}) == (middle + late)[::-1]
    assert listed({"gt": middle_second}) == late[::-1]
    assert listed({"lt": middle_second}) == early[::-1]
    assert listed({"lte": middle_second}) == (early + middle)[::-1]
    assert listed({"gte": middle_second, "lt": middle_second + 1}) == middle[::-1]
    assert listed({"gt": first_second - 1, "lte": middle_second}) == (early + middle)[::-1]
    assert listed(middle_second) == middle[::-1]
    assert listed({"gte": middle_second + 3600}) == []


def test_the_created_filter_pages_with_starting_after_and_expands_the_charge_and_its_refunds(
    emulator,
):
    customer = _customer(emulator)
    card = emulator.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    emulator.v1.payment_methods.attach(card.id, params={"customer": customer.id})
    since = _next_second()
    paid = [
        emulator.v1.payment_intents.create(
            params={
                "amount": 700 + n,
                "currency": "eur",
                "customer": customer.id,
                "payment_method": card.id,
                "confirm": True,
                "off_session": True,
            }
        ).id
        for n in range(3)
    ]
    page = emulator.v1.payment_intents.list(
        params={
            "created": {"gte": since},
            "customer": customer.id,
            "limit": 1,
            "starting_after": paid[2],
            "expand": ["data.latest_charge"],
        }
    )
    assert [i.id for i in page.data] == [paid[1]]
    assert page.data[0].latest_charge.amount == 701
    assert _ids(page) == [paid[1], paid[0]]
    # A charge's refunds, as the reconciler reads them on the expanded charge.
    for amount in (300, 401):
        emulator.v1.refunds.create(params={"payment_intent": paid[1], "amount": amount})
    page = emulator.v1.payment_intents.list(
        params={"created": {"gte": since}, "expand": ["data.latest_charge"]}
    )
    charges = {intent.id: intent.latest_charge for intent in page.data}
    assert (charges[paid[1]].amount_refunded, charges[paid[1]].refunded) == (701, True)
    assert sorted(r.amount for r in charges[paid[1]].refunds.data) == [300, 401]
    assert (charges[paid[0]].amount_refunded, charges[paid[0]].refunded) == (0, False)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"created": {"after": 1}}, "created"),
        ({"created": {"gte": "yesterday"}}, "created[gte]"),
        ({"limit": 101}, "limit"),
        ({"starting_after": "pi_unknown"}, "starting_after"),
        ({"color": "blue"}, "color"),
    ],
)
def test_a_list_parameter_stripe_refuses_is_answered_400_naming_it(emulator, params, param):
    _intent(emulator)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        emulator.v1.payment_intents.list(params=params)
    assert refused.value.http_status == 400
    assert refused.value.param == param


def test_the_gateway_searches_an_exact_key_even_with_a_quote_for_one_customer_only(
    emulator, localstripe
):
    from billing.adapters.stripe_gateway import StripeSdkGateway

    gateway = StripeSdkGateway("sk_test_local", localstripe.url)
    acme, other = _customer(emulator), _customer(emulator)
    mine = _intent(emulator, acme, ledger_key="charge:it's")
    _intent(emulator, other, ledger_key="charge:it's")
    _intent(emulator, acme, ledger_key="CHARGE:IT'S")  # Stripe's match ignores case; ours not

    found = gateway.find_payment_intents_by_metadata(
        "ledger_key", "charge:it's", stripe_customer_id=acme.id
    )

    assert [intent.id for intent in found] == [mine.id]
    assert len(gateway.find_payment_intents_by_metadata("ledger_key", "charge:it's")) == 2
