def test_creating_a_customer_stores_it_and_names_the_job_that_syncs_it_to_stripe(admin):
    response = admin.post(
        "/v1/customers",
        json={
            "name": "Acme GmbH",
            "email": "billing@acme.example",
            "currency": "EUR",
            "address": {"line1": "Hauptstr. 1", "city": "Berlin", "country": "DE"},
            "tax_id": "DE123456789",
            "metadata": {"crm_id": "42"},
        },
    )
    assert response.status_code == 200
    customer = response.get_json()
    assert customer["id"].startswith("cus_")
    assert customer["currency"] == "eur"
    assert customer["address"]["city"] == "Berlin"
    assert customer["metadata"] == {"crm_id": "42"}
    assert customer["stripe_customer_id"] is None
    job = admin.get(f"/v1/jobs/{customer['sync_job']}").get_json()
    assert job["name"] == "billing.sync_customer"
    assert job["queue"] == "billing"
    assert job["args"] == {"customer_id": customer["id"]}
    assert job["state"] in ("pending", "sent")


def test_a_customer_can_be_read_back_and_listed(admin, make_customer):
    first = make_customer(name="First")
    second = make_customer(name="Second")
    assert admin.get(f"/v1/customers/{first['id']}").get_json()["name"] == "First"
    listed = admin.get("/v1/customers?limit=1").get_json()
    assert [c["id"] for c in listed["data"]] == [second["id"]]
    assert listed["has_more"] is True
    rest = admin.get(f"/v1/customers?limit=1&starting_after={second['id']}").get_json()
    assert [c["id"] for c in rest["data"]] == [first["id"]]
    assert rest["has_more"] is False


def test_patching_a_customer_changes_only_the_given_fields_and_merges_metadata(
    admin, make_customer
):
    customer = make_customer(metadata={"a": "1", "b": "2"})
    response = admin.patch(
        f"/v1/customers/{customer['id']}",
        json={"email": "ap@acme.example", "metadata": {"b": "", "c": "3"}},
    )
    assert response.status_code == 200
    patched = response.get_json()
    assert patched["email"] == "ap@acme.example"
    assert patched["name"] == customer["name"]
    assert patched["metadata"] == {"a": "1", "c": "3"}


def test_a_customer_key_sees_only_its_own_customer(admin, make_customer, customer_api):
    mine = make_customer(name="Mine")
    theirs = make_customer(name="Theirs")
    api = customer_api(mine["id"])
    assert api.get(f"/v1/customers/{mine['id']}").status_code == 200
    response = api.get(f"/v1/customers/{theirs['id']}")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "resource_missing"
    assert [c["id"] for c in api.get("/v1/customers").get_json()["data"]] == [mine["id"]]
    assert api.patch(f"/v1/customers/{theirs['id']}", json={"name": "x"}).status_code == 404
    assert admin.get(f"/v1/customers/{theirs['id']}").get_json()["name"] == "Theirs"


def test_a_customer_key_cannot_create_customers(make_customer, customer_api):
    api = customer_api(make_customer()["id"])
    response = api.post("/v1/customers", json={"name": "x", "email": "a@b.co", "currency": "eur"})
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "permission_denied"


def test_requests_without_a_valid_key_are_refused(client, admin):
    assert client.get("/v1/customers").get_json()["error"]["code"] == "authentication_required"
    response = client.get("/v1/customers", headers={"Authorization": "Bearer sk_bill_nope"})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_api_key"


def test_a_revoked_key_stops_working(app, client):
    from billing.access.api_keys import create_api_key, revoke_api_key

    key, secret = create_api_key("short-lived")
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/customers", headers=headers).status_code == 200
    revoke_api_key(key.id)
    assert client.get("/v1/customers", headers=headers).status_code == 401


def test_a_customer_key_sees_its_own_jobs_and_no_one_elses(make_customer, customer_api):
    mine, theirs = make_customer(), make_customer()
    api = customer_api(mine["id"])
    assert api.get(f"/v1/jobs/{mine['sync_job']}").get_json()["args"] == {"customer_id": mine["id"]}
    assert api.get(f"/v1/jobs/{theirs['sync_job']}").status_code == 404
