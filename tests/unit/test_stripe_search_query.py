"""The emulator's reading of Stripe's search query language, without a server."""

import pytest

from devstack.localstripe_shim import (
    PAYMENT_INTENT_FIELDS,
    Clause,
    ShimError,
    Timeline,
    parse_query,
)


def _parse(text):
    return parse_query(text, PAYMENT_INTENT_FIELDS, "payment_intents")


def test_clauses_separated_by_spaces_or_a_lowercase_and_must_all_match():
    for text in (
        "metadata['a']:'1' status:'succeeded'",
        "metadata['a']:'1'   and   status:'succeeded'",
    ):
        query = _parse(text)
        assert not query.any_of
        assert query.clauses == (
            Clause("metadata", "a", ":", "1"),
            Clause("status", None, ":", "succeeded"),
        )


def test_or_joins_clauses_any_of_which_may_match():
    query = _parse("currency:'eur' or currency:'isk'")
    assert query.any_of
    assert [clause.value for clause in query.clauses] == ["eur", "isk"]


def test_quotes_and_backslashes_are_escaped_in_keys_and_values():
    [clause] = _parse(r"""metadata["it\"s"]:'a\\b\'c'""").clauses
    assert (clause.key, clause.value) == ('it"s', "a\\b'c")


def test_a_number_a_negation_and_null_are_read_as_such():
    query = _parse("-amount>=1000 AND metadata['k']:null AND created<1700000000")
    assert query.clauses == (
        Clause("amount", None, ">=", 1000, negated=True),
        Clause("metadata", "k", ":", None),
        Clause("created", None, "<", 1700000000),
    )


@pytest.mark.parametrize(
    "text", ["status:'a' AND", "status:'a' & status:'b'", "status:'unterminated", "(status:'a')"]
)
def test_a_query_that_does_not_parse_is_refused(text):
    with pytest.raises(ShimError, match="not valid at character"):
        _parse(text)


def test_a_timeline_cuts_by_created_and_by_a_cursor_on_either_side():
    timeline = Timeline()
    for order, created in enumerate([100, 100, 101, 102, 102, 103]):
        timeline.add((created, order), f"pi_{order}")

    def newest_first(*args, **kwargs):
        return list(timeline.newest_first(*timeline.span(*args, **kwargs)))

    assert newest_first(101, 103) == ["pi_4", "pi_3", "pi_2"]
    assert newest_first(None, 101) == ["pi_1", "pi_0"]
    assert newest_first(older_than=(102, 3)) == ["pi_2", "pi_1", "pi_0"]
    assert newest_first(100, 103, newer_than=(100, 0)) == ["pi_4", "pi_3", "pi_2", "pi_1"]
    assert newest_first(104) == []
