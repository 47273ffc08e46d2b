import pytest

from billing.domain.emails import (
    DeliveryStatus,
    IllegalDeliveryTransition,
    SendOutcome,
    after_try,
    may_be_sent,
)

S = DeliveryStatus


def test_a_sent_email_is_never_sent_again_and_a_refused_one_may_be_replayed():
    assert [status for status in DeliveryStatus if may_be_sent(status)] == [S.PENDING, S.FAILED]
    assert not may_be_sent("bounced")  # no status the table knows


def test_a_try_leaves_the_delivery_sent_failed_or_as_it_was():
    assert after_try("pending", SendOutcome.SENT) is S.SENT
    assert after_try("pending", SendOutcome.REJECTED) is S.FAILED
    assert after_try("pending", SendOutcome.NOT_SENT) is S.PENDING
    assert after_try("failed", SendOutcome.SENT) is S.SENT
    assert after_try("failed", SendOutcome.REJECTED) is S.FAILED
    assert after_try("failed", SendOutcome.NOT_SENT) is S.FAILED


@pytest.mark.parametrize("outcome", list(SendOutcome))
def test_no_try_may_end_on_an_email_already_sent(outcome):
    with pytest.raises(IllegalDeliveryTransition):
        after_try("sent", outcome)
