"""Hosted invoice links: signed, rotatable, expiring, and telling a guesser nothing."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.hosted import links
from billing.hosted.links import BadLink, LinkKey

NEW = LinkKey("k2", b"n" * 40)
OLD = LinkKey("k1", b"o" * 40)
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@given(st.text(min_size=1, max_size=32))
def test_a_link_names_the_invoice_it_was_signed_for(number):
    assert links.verify(links.sign(number, [NEW]), [NEW]).invoice_number == number


def test_the_first_key_signs_and_every_key_verifies_until_it_is_dropped():
    before_rotation = links.sign("INV-2026-000001", [OLD])
    assert links.verify(before_rotation, [NEW, OLD]).invoice_number == "INV-2026-000001"
    assert links.sign("INV-2026-000001", [NEW, OLD]).startswith("k2.")
    with pytest.raises(BadLink):
        links.verify(before_rotation, [NEW])


def test_a_changed_character_anywhere_breaks_the_link():
    token = links.sign("INV-2026-000001", [NEW])
    for position in range(len(token)):
        changed = "A" if token[position] != "A" else "B"
        tampered = token[:position] + changed + token[position + 1 :]
        with pytest.raises(BadLink):
            links.verify(tampered, [NEW])


def test_one_invoice_s_signature_does_not_open_another():
    first = links.sign("INV-2026-000001", [NEW]).split(".")
    second = links.sign("INV-2026-000002", [NEW]).split(".")
    with pytest.raises(BadLink):
        links.verify(".".join([first[0], second[1], first[2]]), [NEW])


@pytest.mark.parametrize("token", ["", "k2", "k2..", "nope.abc.def", "k2.!!!.???", "k2.e30.x"])
def test_garbage_is_a_bad_link(token):
    with pytest.raises(BadLink):
        links.verify(token, [NEW])


def test_a_link_lives_while_its_invoice_is_open_and_a_month_after_it_closes():
    claim = links.verify(links.sign("INV-1", [NEW]), [NEW])
    assert not links.expired(claim, None, NOW, 30)
    assert not links.expired(claim, NOW - timedelta(days=29), NOW, 30)
    assert links.expired(claim, NOW - timedelta(days=30), NOW, 30)


def test_a_link_asked_for_again_lasts_a_month_from_then():
    closed = NOW - timedelta(days=90)
    expiry = links.fresh_expiry(closed, NOW, 30)
    claim = links.verify(links.sign("INV-1", [NEW], expires_at=expiry), [NEW])
    assert not links.expired(claim, closed, NOW + timedelta(days=29), 30)
    assert links.expired(claim, closed, NOW + timedelta(days=30), 30)
    assert links.fresh_expiry(None, NOW, 30) is None
