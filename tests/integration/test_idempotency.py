from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select, update

from billing.extensions import db
from billing.models import Customer, LedgerEntry

BODY = {"name": "Acme", "email": "billing@acme.example", "currency": "eur"}


def _count_customers() -> int:
    return db.session.scalar(select(func.count()).select_from(Customer))


def test_a_replayed_post_returns_the_stored_response_and_creates_nothing_more(admin):
    first = admin.post("/v1/customers", json=BODY, headers={"Idempotency-Key": "k-1"})
    again = admin.post("/v1/customers", json=BODY, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 200
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert _count_customers() == 1


def test_the_same_key_with_another_body_is_refused_and_changes_nothing(admin):
    admin.post("/v1/customers", json=BODY, headers={"Idempotency-Key": "k-2"})
    other = admin.post(
        "/v1/customers", json={**BODY, "name": "Other"}, headers={"Idempotency-Key": "k-2"}
    )
    assert other.status_code == 422
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert _count_customers() == 1


def test_the_same_key_on_another_endpoint_is_refused(admin, make_customer):
    customer = make_customer()
    admin.post("/v1/customers", json=BODY, headers={"Idempotency-Key": "k-3"})
    other = admin.post(
        "/v1/invoices", json={"customer": customer["id"]}, headers={"Idempotency-Key": "k-3"}
    )
    assert other.status_code == 422


def test_a_key_held_by_a_running_request_answers_409(admin):
    # A request that claimed the key and has not finished yet: its lease is still live.
    from datetime import timedelta

    from billing.access.api_keys import authenticate
    from billing.platform import ledger

    principal = authenticate(admin.secret)
    assert principal is not None
    fingerprint_source = admin.post(
        "/v1/customers", json=BODY, headers={"Idempotency-Key": "probe"}
    )
    assert fingerprint_source.status_code == 200
    probe = db.session.scalars(select(LedgerEntry).where(LedgerEntry.key == "probe")).one()
    ledger.claim(
        f"api:{principal.api_key_id}",
        "k-running",
        probe.fingerprint,
        lease=timedelta(minutes=1),
    )
    response = admin.post("/v1/customers", json=BODY, headers={"Idempotency-Key": "k-running"})
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "idempotency_key_in_use"


def test_a_key_whose_request_died_can_be_taken_over_after_its_lease(admin):
    from datetime import timedelta

    from billing.access.api_keys import authenticate
    from billing.platform import ledger

    principal = authenticate(admin.secret)
    admin.post("/v1/customers", json=BODY, headers={"Idempotency-Key": "probe"})
    probe = db.session.scalars(select(LedgerEntry).where(LedgerEntry.key == "probe")).one()
    claimed = ledger.claim(
        f"api:{principal.api_key_id}", "k-dead", probe.fingerprint, lease=timedelta(minutes=1)
    )
    db.session.execute(
        update(LedgerEntry)
        .where(LedgerEntry.id == claimed.entry_id)
        .values(locked_until=func.now() - timedelta(seconds=1))
    )
    db.session.commit()
    response = admin.post("/v1/customers", json=BODY, headers={"Idempotency-Key": "k-dead"})
    assert response.status_code == 200
    assert _count_customers() == 2  # the probe and this one; the dead request created nothing


def test_concurrent_posts_with_one_key_create_one_customer(app, admin):
    def post(_: int) -> tuple[int, str | None]:
        with app.app_context():
            client = app.test_client()
            response = client.post(
                "/v1/customers",
                json=BODY,
                headers={"Authorization": f"Bearer {admin.secret}", "Idempotency-Key": "k-race"},
            )
            body = response.get_json()
            return response.status_code, body.get("id") or body["error"]["code"]

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(post, range(30)))
    created_ids = {value for status, value in results if status == 200}
    assert len(created_ids) == 1
    assert {value for status, value in results if status == 409} <= {"idempotency_key_in_use"}
    assert {status for status, _ in results} <= {200, 409}
    assert _count_customers() == 1


def test_a_refused_request_does_not_burn_its_key(admin):
    bad = admin.post(
        "/v1/customers", json={**BODY, "currency": "xyz"}, headers={"Idempotency-Key": "k-4"}
    )
    assert bad.status_code == 400
    fixed = admin.post("/v1/customers", json=BODY, headers={"Idempotency-Key": "k-4"})
    assert fixed.status_code == 200


def test_a_use_case_error_is_stored_and_replayed_like_stripe_does(admin, make_customer):
    customer = make_customer()
    draft = admin.post("/v1/invoices", json={"customer": customer["id"]}).get_json()
    first = admin.post(f"/v1/invoices/{draft['id']}/void", headers={"Idempotency-Key": "k-5"})
    again = admin.post(f"/v1/invoices/{draft['id']}/void", headers={"Idempotency-Key": "k-5"})
    assert first.status_code == again.status_code == 409
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"


def test_keys_are_scoped_to_the_api_key_that_used_them(admin):
    from billing.access.api_keys import create_api_key

    _, other_secret = create_api_key("another client")
    headers = {"Idempotency-Key": "shared"}
    mine = admin.post("/v1/customers", json=BODY, headers=headers).get_json()
    theirs = admin.client.post(
        "/v1/customers",
        json={**BODY, "name": "Other client"},
        headers={**headers, "Authorization": f"Bearer {other_secret}"},
    )
    assert theirs.status_code == 200
    assert theirs.get_json()["id"] != mine["id"]
    assert _count_customers() == 2


def test_expired_keys_are_purged_and_fresh_ones_kept(admin):
    from datetime import timedelta

    from billing.platform import ledger

    admin.post("/v1/customers", json=BODY, headers={"Idempotency-Key": "old"})
    admin.post("/v1/customers", json={**BODY, "name": "B"}, headers={"Idempotency-Key": "new"})
    db.session.execute(
        update(LedgerEntry)
        .where(LedgerEntry.key == "old")
        .values(expires_at=func.now() - timedelta(seconds=1))
    )
    db.session.commit()
    assert ledger.purge_expired() == 1
    keys = set(db.session.scalars(select(LedgerEntry.key).where(LedgerEntry.scope.like("api:%"))))
    assert keys == {"new"}


def test_idempotency_keys_are_kept_at_least_a_day(admin):
    admin.post("/v1/customers", json=BODY, headers={"Idempotency-Key": "kept"})
    kept_for = db.session.scalar(
        select(LedgerEntry.expires_at - LedgerEntry.created_at).where(LedgerEntry.key == "kept")
    )
    assert kept_for.total_seconds() >= 24 * 3600


LINE = {"description": "Seat", "unit_amount": 1000}


def test_invoices_and_lines_are_created_idempotently(admin, make_customer):
    customer = make_customer()
    body = {"customer": customer["id"], "lines": [LINE]}
    first = admin.post("/v1/invoices", json=body, headers={"Idempotency-Key": "inv-1"})
    assert first.status_code == 200, first.get_json()
    assert first.get_json()["lines"]["data"][0]["id"].startswith("il_")
    again = admin.post("/v1/invoices", json=body, headers={"Idempotency-Key": "inv-1"})
    assert again.get_json() == first.get_json()
    invoice_id = first.get_json()["id"]
    line = admin.post(
        f"/v1/invoices/{invoice_id}/lines", json=LINE, headers={"Idempotency-Key": "line-1"}
    )
    assert line.status_code == 200
    admin.post(f"/v1/invoices/{invoice_id}/lines", json=LINE, headers={"Idempotency-Key": "line-1"})
    assert len(admin.get(f"/v1/invoices/{invoice_id}").get_json()["lines"]["data"]) == 2


def test_state_changes_under_a_key_answer_their_timestamps(admin, make_customer):
    customer = make_customer()
    invoice = admin.post("/v1/invoices", json={"customer": customer["id"], "lines": [LINE]})
    invoice_id = invoice.get_json()["id"]
    admin.post(f"/v1/invoices/{invoice_id}/finalize", headers={"Idempotency-Key": "f-1"})
    voided = admin.post(f"/v1/invoices/{invoice_id}/void", headers={"Idempotency-Key": "v-1"})
    assert voided.status_code == 200
    assert isinstance(voided.get_json()["voided_at"], int)
