import hashlib
import hmac
import time

import pytest
import stripe

from billing.webhooks.signatures import new_secret, signature_header, verify

BODY = b'{"id":"evt_1","type":"invoice.paid"}'
NOW = 1_767_225_600
OLD, NEW = "whsec_old-secret", "whsec_new-secret"


def test_a_body_signed_with_a_secret_verifies_with_that_secret():
    header = signature_header(BODY, [NEW], NOW)
    assert verify(BODY, header, NEW, now=NOW)


def test_the_header_is_the_timestamp_then_one_hmac_of_timestamp_dot_body_per_secret():
    expected = hmac.new(NEW.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert signature_header(BODY, [NEW], NOW) == f"t={NOW},v1={expected}"


def test_stripes_own_library_accepts_the_header():
    header = signature_header(BODY, [NEW], NOW)
    stripe.WebhookSignature.verify_header(BODY.decode(), header, NEW, tolerance=None)


def test_during_a_secret_roll_both_the_old_and_the_new_secret_verify():
    header = signature_header(BODY, [OLD, NEW], NOW)
    assert header.count("v1=") == 2
    assert verify(BODY, header, OLD, now=NOW)
    assert verify(BODY, header, NEW, now=NOW)


def test_a_tampered_body_does_not_verify():
    header = signature_header(BODY, [NEW], NOW)
    assert not verify(BODY.replace(b"paid", b"void"), header, NEW, now=NOW)


def test_a_wrong_secret_does_not_verify():
    header = signature_header(BODY, [OLD], NOW)
    assert not verify(BODY, header, NEW, now=NOW)


def test_a_timestamp_changed_after_signing_does_not_verify():
    header = signature_header(BODY, [NEW], NOW)
    replayed = header.replace(f"t={NOW}", f"t={NOW + 60}")
    assert not verify(BODY, replayed, NEW, now=NOW + 60)


def test_a_signature_older_than_the_tolerance_does_not_verify():
    header = signature_header(BODY, [NEW], NOW)
    assert verify(BODY, header, NEW, now=NOW + 300)
    assert not verify(BODY, header, NEW, now=NOW + 301)
    assert not verify(BODY, header, NEW, now=NOW + 60, tolerance_seconds=30)


def test_a_signature_from_too_far_in_the_future_does_not_verify():
    header = signature_header(BODY, [NEW], NOW + 301)
    assert not verify(BODY, header, NEW, now=NOW)


def test_without_a_given_time_the_clock_is_used():
    assert verify(BODY, signature_header(BODY, [NEW], int(time.time())), NEW)
    assert not verify(BODY, signature_header(BODY, [NEW], NOW - 3600), NEW)


def test_signatures_of_other_schemes_are_skipped():
    header = signature_header(BODY, [NEW], NOW)
    assert verify(BODY, f"{header},v0=abc", NEW, now=NOW)
    assert verify(BODY, header.replace(",v1=", ",v0=abc,v1="), NEW, now=NOW)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "t=,v1=",
        "v1=" + "0" * 64,
        f"t={NOW}",
        f"t={NOW},v0=" + "0" * 64,
        f"t=-{NOW},v1=" + "0" * 64,
        f"t=+{NOW},v1=" + "0" * 64,
        "t=1_767_225_600,v1=" + "0" * 64,
        "t=١٧٦٧٢٢٥٦٠٠,v1=" + "0" * 64,
        f"t={NOW},t={NOW},v1=" + "0" * 64,
        f"t={NOW},v1=nothex",
        f"t={NOW},v1=" + "é" * 64,
        f"t={NOW},,v1=" + "0" * 64,
    ],
)
def test_a_malformed_header_does_not_verify(header):
    assert not verify(BODY, header, NEW, now=NOW)


def test_a_malformed_header_does_not_verify_even_beside_a_good_signature():
    header = signature_header(BODY, [NEW], NOW)
    assert not verify(BODY, f"{header},v1=zz", NEW, now=NOW)


def test_an_empty_secret_verifies_nothing():
    header = f"t={NOW},v1=" + hmac.new(b"", f"{NOW}.".encode() + BODY, "sha256").hexdigest()
    assert not verify(BODY, header, "", now=NOW)


def test_signing_needs_at_least_one_non_empty_secret():
    with pytest.raises(ValueError):
        signature_header(BODY, [], NOW)
    with pytest.raises(ValueError):
        signature_header(BODY, [NEW, ""], NOW)


def test_one_secret_given_as_a_bare_string_is_refused():
    with pytest.raises(TypeError):
        signature_header(BODY, NEW, NOW)


def test_a_new_secret_is_marked_and_random():
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_") and len(first) > len("whsec_") + 40
    assert first != second
