"""Metadata merges as Stripe's does, and the merged result keeps within Stripe's limits."""

from __future__ import annotations

import pytest

from billing.domain import metadata


def test_an_update_merges_keys_and_an_empty_value_deletes_one():
    merged = metadata.merge({"plan": "team", "region": "eu"}, {"region": "", "seats": "12"})
    assert merged == {"plan": "team", "seats": "12"}


def test_a_merge_that_ends_at_fifty_keys_is_fine_even_from_a_large_update():
    current = {f"k{i}": "v" for i in range(45)}
    changes = {**{f"k{i}": "" for i in range(5)}, **{f"n{i}": "v" for i in range(10)}}
    assert len(metadata.merge(current, changes)) == 50


def test_a_merge_beyond_fifty_keys_is_refused_though_each_part_is_within_the_limit():
    current = {f"k{i}": "v" for i in range(45)}
    with pytest.raises(metadata.MetadataTooLarge) as refused:
        metadata.merge(current, {f"n{i}": "v" for i in range(6)})
    assert refused.value.param == "metadata"
    assert "51" in str(refused.value)


@pytest.mark.parametrize(
    ("current", "param"),
    [({"k" * 41: "v"}, "metadata." + "k" * 41), ({"note": "x" * 501}, "metadata.note")],
)
def test_keys_over_forty_and_values_over_five_hundred_characters_are_refused(current, param):
    with pytest.raises(metadata.MetadataTooLarge) as refused:
        metadata.merge(current, {"plan": "team"})
    assert refused.value.param == param
