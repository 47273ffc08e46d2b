from datetime import date, timedelta

from billing.dunning.rules import (
    DunningFacts,
    DunningPolicy,
    RecordedStep,
    StepAction,
    StepStatus,
    next_retry_date,
    schedule,
)

POLICY = DunningPolicy(retry_days=(3, 5, 7), reminder_days=(-3, 0, 3, 7))
START = date(2026, 3, 1)


def _auto(**overrides):
    fields = {"collection_method": "charge_automatically", "status": "open", "started_on": START}
    return DunningFacts(**{**fields, **overrides})


def _by_key(steps):
    return {step.key: step for step in steps}


def test_an_automatic_invoice_is_retried_on_each_retry_day_then_given_up_a_day_later():
    steps = schedule(_auto(), POLICY, START)
    assert [(s.key, s.on, s.action) for s in steps] == [
        ("retry:3", START + timedelta(days=3), StepAction.RETRY_CHARGE),
        ("retry:5", START + timedelta(days=5), StepAction.RETRY_CHARGE),
        ("retry:7", START + timedelta(days=7), StepAction.RETRY_CHARGE),
        ("mark_uncollectible", START + timedelta(days=8), StepAction.MARK_UNCOLLECTIBLE),
        ("final_notice", START + timedelta(days=8), StepAction.FINAL_NOTICE),
    ]
    assert all(s.status is StepStatus.PLANNED and not s.due for s in steps)


def test_an_invoice_without_a_failed_charge_has_no_dunning():
    facts = DunningFacts(collection_method="charge_automatically", status="open")
    assert schedule(facts, POLICY, START) == []


def test_a_retry_is_due_on_its_day_and_waits_for_a_charge_in_flight():
    day3 = START + timedelta(days=3)
    assert _by_key(schedule(_auto(), POLICY, day3))["retry:3"].due
    waiting = _by_key(schedule(_auto(attempt_in_flight=True), POLICY, day3))["retry:3"]
    assert waiting.status is StepStatus.PLANNED and not waiting.due


def test_recorded_steps_show_as_done_and_are_not_due_again():
    day3 = START + timedelta(days=3)
    recorded = {"retry:3": RecordedStep(StepStatus.DONE, day3, "retry 1 of 3")}
    steps = _by_key(schedule(_auto(recorded=recorded), POLICY, day3))
    assert steps["retry:3"].status is StepStatus.DONE and not steps["retry:3"].due


def test_missed_nights_take_only_the_latest_retry_and_skip_the_others():
    day6 = START + timedelta(days=6)
    steps = _by_key(schedule(_auto(), POLICY, day6))
    assert steps["retry:3"].status is StepStatus.SKIPPED and steps["retry:3"].due
    assert steps["retry:5"].status is StepStatus.PLANNED and steps["retry:5"].due
    assert not steps["retry:7"].due


def test_the_final_steps_wait_while_a_retry_is_taken_the_same_night():
    day9 = START + timedelta(days=9)
    steps = _by_key(schedule(_auto(), POLICY, day9))
    assert steps["retry:7"].due
    assert not steps["mark_uncollectible"].due and not steps["final_notice"].due
    done = {
        key: RecordedStep(StepStatus.DONE, day9, "") for key in ("retry:3", "retry:5", "retry:7")
    }
    steps = _by_key(schedule(_auto(recorded=done), POLICY, day9))
    assert steps["mark_uncollectible"].due and steps["final_notice"].due


def test_a_hard_decline_on_the_card_still_on_file_skips_the_retries():
    facts = _auto(last_decline_code="expired_card", declined_method_still_on_file=True)
    steps = _by_key(schedule(facts, POLICY, START + timedelta(days=3)))
    assert steps["retry:3"].status is StepStatus.SKIPPED and steps["retry:3"].due
    assert "new payment method" in steps["retry:3"].reason
    assert steps["retry:5"].status is StepStatus.SKIPPED and not steps["retry:5"].due
    assert steps["final_notice"].status is StepStatus.PLANNED
    assert next_retry_date(facts, POLICY, START) is None


def test_a_hard_decline_on_a_replaced_card_does_not_hold_the_retries():
    facts = _auto(last_decline_code="expired_card", declined_method_still_on_file=False)
    assert _by_key(schedule(facts, POLICY, START + timedelta(days=3)))["retry:3"].due


def test_a_soft_decline_is_retried():
    facts = _auto(last_decline_code="insufficient_funds", declined_method_still_on_file=True)
    assert next_retry_date(facts, POLICY, START) == START + timedelta(days=3)
    assert next_retry_date(facts, POLICY, START + timedelta(days=3)) == START + timedelta(days=5)
    assert next_retry_date(facts, POLICY, START + timedelta(days=7)) is None


def test_a_sent_invoice_is_reminded_around_its_due_date_then_given_up():
    due = date(2026, 4, 30)
    facts = DunningFacts(collection_method="send_invoice", status="open", due_date=due)
    steps = schedule(facts, POLICY, due - timedelta(days=10))
    assert [(s.key, s.on) for s in steps] == [
        ("reminder:-3", due - timedelta(days=3)),
        ("reminder:+0", due),
        ("reminder:+3", due + timedelta(days=3)),
        ("reminder:+7", due + timedelta(days=7)),
        ("mark_uncollectible", due + timedelta(days=8)),
        ("final_notice", due + timedelta(days=8)),
    ]
    assert "before the due date" in steps[0].reason
    today = _by_key(schedule(facts, POLICY, due))
    assert today["reminder:-3"].status is StepStatus.SKIPPED
    assert today["reminder:+0"].due and today["reminder:+0"].status is StepStatus.PLANNED


def test_a_paid_invoice_skips_whatever_was_left():
    facts = _auto(status="paid")
    assert all(s.status is StepStatus.SKIPPED and not s.due for s in schedule(facts, POLICY, START))


def test_a_step_recorded_outside_the_schedule_is_shown():
    recorded = {
        "new_payment_method:pm_1": RecordedStep(
            StepStatus.DONE, START + timedelta(days=1), "new card", StepAction.RETRY_CHARGE
        )
    }
    steps = schedule(_auto(recorded=recorded), POLICY, START + timedelta(days=1))
    assert steps[0].key == "new_payment_method:pm_1" and steps[0].status is StepStatus.DONE
