from openapi_spec_validator import validate


def test_the_openapi_document_is_valid_openapi_3(client):
    validate(client.get("/openapi.json").get_json())


def test_the_openapi_document_lists_every_route_with_its_schemas(client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    expected = {
        ("/v1/customers", "post"),
        ("/v1/customers", "get"),
        ("/v1/customers/{customer_id}", "get"),
        ("/v1/customers/{customer_id}", "patch"),
        ("/v1/customers/{customer_id}/payment_method", "post"),
        ("/v1/invoices", "post"),
        ("/v1/invoices", "get"),
        ("/v1/invoices/{invoice_id}", "get"),
        ("/v1/invoices/{invoice_id}/lines", "post"),
        ("/v1/invoices/{invoice_id}/lines/{line_id}", "delete"),
        ("/v1/invoices/{invoice_id}/finalize", "post"),
        ("/v1/invoices/{invoice_id}/void", "post"),
        ("/v1/invoices/{invoice_id}/mark_uncollectible", "post"),
        ("/v1/jobs/{job_id}", "get"),
        ("/v1/prices", "post"),
        ("/v1/prices", "get"),
        ("/v1/prices/{price_id}", "get"),
        ("/v1/subscriptions", "post"),
        ("/v1/subscriptions", "get"),
        ("/v1/subscriptions/{subscription_id}", "get"),
        ("/v1/subscriptions/{subscription_id}", "patch"),
        ("/v1/subscriptions/{subscription_id}/cancel", "post"),
    }
    assert expected <= {(path, method) for path, ops in paths.items() for method in ops}
    create = paths["/v1/customers"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CustomerCreate"
    }
    schema = document["components"]["schemas"]["CustomerCreate"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "email", "currency"}
    assert any(p["name"] == "Idempotency-Key" for p in create["parameters"])
    assert "401" in create["responses"] and "422" in create["responses"]


def test_every_reference_in_the_document_resolves(client):
    document = client.get("/openapi.json").get_json()
    schemas = document["components"]["schemas"]

    def refs(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    for ref in refs(document):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas


def test_the_docs_page_renders_the_routes(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "/v1/invoices/{invoice_id}/finalize" in page.get_data(as_text=True)


def test_the_document_is_built_once_and_then_served_from_the_app(app, client):
    import sys

    from billing.api import openapi

    builds = 0

    def count_builds(frame, event, _arg):  # the interpreter's profiler hook, not a mock
        nonlocal builds
        if event == "call" and frame.f_code is openapi.build_openapi.__code__:
            builds += 1

    sys.setprofile(count_builds)
    try:
        first = client.get("/openapi.json")
        page = client.get("/docs")
        second = client.get("/openapi.json")
    finally:
        sys.setprofile(None)

    assert builds == 1
    assert first.status_code == second.status_code == page.status_code == 200
    assert first.get_data() == second.get_data()
    assert first.content_type == "application/json"
    assert first.get_json() == app.extensions["billing.openapi"].document
    assert "/v1/invoices/{invoice_id}/pay" in page.get_data(as_text=True)
