"""Limits that hold for the whole object, not only for one request: metadata merged into
what a customer has, and lines added to an invoice one request at a time."""

from __future__ import annotations

from typing import Any


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    return response.get_json()["error"]  # type: ignore[no-any-return]


def test_metadata_merged_beyond_fifty_keys_is_refused_and_nothing_changes(admin, make_customer):
    customer = make_customer(metadata={f"key{i}": "value" for i in range(45)})
    # Within the limit on its own, and with a name change that must not happen either.
    update = {"name": "Renamed GmbH", "metadata": {f"new{i}": "value" for i in range(6)}}
    response = admin.patch(f"/v1/customers/{customer['id']}", json=update)
    error = _error(response, 400)
    assert (error["code"], error["param"]) == ("metadata_limit_exceeded", "metadata")
    current = admin.get(f"/v1/customers/{customer['id']}").get_json()
    assert current == {**customer, "sync_job": None}


def test_metadata_that_deletes_as_many_keys_as_it_adds_stays_within_the_limit(admin, make_customer):
    customer = make_customer(metadata={f"key{i}": "value" for i in range(50)})
    changes = {**{f"key{i}": "" for i in range(6)}, **{f"new{i}": "value" for i in range(6)}}
    response = admin.patch(f"/v1/customers/{customer['id']}", json={"metadata": changes})
    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["metadata"]) == 50
