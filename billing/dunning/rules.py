"""The dunning schedule: what happens to an unpaid invoice, and when.

One pure function, `schedule`, answers it for both the nightly job (which performs the
steps due today) and the preview API (which shows every step with its date), so the two
can never disagree.

- `charge_automatically`: after the first failed charge, a retry on each of the policy's
  retry days (counted from that first failure). A hard decline (`is_hard_decline`) on the
  payment method still on file holds every retry until the customer sets another one.
- `send_invoice`: a reminder on each of the policy's reminder days (relative to the due
  date).
- Then, one day after the last retry or reminder, the invoice is marked uncollectible
  and the customer gets the final notice.

When several steps of one kind are due at once (the job did not run for some nights, or
the invoice was issued after its first reminder date), only the latest is performed: the
customer gets one reminder, not three, and one retry. The others are recorded as skipped.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta

from billing.charging.declines import is_hard_decline

# A day between the last retry and the final step, so the last retry's outcome (or a
# payment made after the last reminder) is known before the invoice is given up.
FINAL_GRACE = timedelta(days=1)

AUTOMATIC = "charge_automatically"
SEND_INVOICE = "send_invoice"


class StepAction(enum.StrEnum):
    RETRY_CHARGE = "retry_charge"
    SEND_REMINDER = "send_reminder"
    FINAL_NOTICE = "final_notice"
    MARK_UNCOLLECTIBLE = "mark_uncollectible"


class StepStatus(enum.StrEnum):
    DONE = "done"
    PLANNED = "planned"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class DunningPolicy:
    retry_days: tuple[int, ...] = (3, 5, 7)
    reminder_days: tuple[int, ...] = (-3, 0, 3, 7)


@dataclass(frozen=True)
class RecordedStep:
    """A step the nightly job has already taken (performed or skipped), from the database."""

    status: StepStatus
    on: date
    reason: str
    action: StepAction | None = None


@dataclass(frozen=True)
class DunningFacts:
    collection_method: str
    status: str
    due_date: date | None = None
    # The day the first automatic charge failed: the retries count from it.
    started_on: date | None = None
    # The decline code of the latest failed attempt, and whether that attempt used the
    # payment method still on file (a hard decline then holds every retry).
    last_decline_code: str | None = None
    declined_method_still_on_file: bool = False
    attempt_in_flight: bool = False
    recorded: Mapping[str, RecordedStep] = field(default_factory=dict)

    def first_step_past_due(self, step: DunningStep) -> bool:
        """Taking `step` is when the invoice is first seen overdue: no step taken so far
        fell after its due date, and this one does."""
        due = self.due_date
        return (
            due is not None
            and step.on > due
            and not any(recorded.on > due for recorded in self.recorded.values())
        )

    @property
    def hard_decline(self) -> str | None:
        if self.declined_method_still_on_file and is_hard_decline(self.last_decline_code):
            return self.last_decline_code
        return None


@dataclass(frozen=True)
class DunningStep:
    key: str  # stable name of the step within its invoice: "retry:3", "reminder:-3", ...
    on: date
    action: StepAction
    reason: str
    status: StepStatus
    # The nightly job acts on it today: performs it (planned) or records it (skipped).
    due: bool = False


def retry_key(day: int) -> str:
    return f"retry:{day}"


def reminder_key(day: int) -> str:
    return f"reminder:{day:+d}"


def _when(day: int) -> str:
    if day == 0:
        return "on the due date"
    unit = "day" if abs(day) == 1 else "days"
    return f"{abs(day)} {unit} {'before' if day < 0 else 'after'} the due date"


def _raw_steps(
    facts: DunningFacts, policy: DunningPolicy
) -> list[tuple[str, date, StepAction, str]]:
    steps: list[tuple[str, date, StepAction, str]] = []
    if facts.collection_method == AUTOMATIC:
        if facts.started_on is None:
            return []
        anchor = facts.started_on
        days = sorted(policy.retry_days)
        for number, day in enumerate(days, 1):
            steps.append(
                (
                    retry_key(day),
                    anchor + timedelta(days=day),
                    StepAction.RETRY_CHARGE,
                    f"retry {number} of {len(days)}: {day} days after the first failed charge",
                )
            )
        last = anchor + timedelta(days=days[-1] if days else 0)
        given_up = "the last retry failed" if days else "the charge failed"
    else:
        if facts.due_date is None:
            return []
        days = sorted(policy.reminder_days)
        for day in days:
            steps.append(
                (
                    reminder_key(day),
                    facts.due_date + timedelta(days=day),
                    StepAction.SEND_REMINDER,
                    f"payment reminder {_when(day)}",
                )
            )
        last = facts.due_date + timedelta(days=max([0, *days]))
        given_up = "still unpaid after the last reminder" if days else "unpaid after the due date"
    final = last + FINAL_GRACE
    steps.append(
        ("mark_uncollectible", final, StepAction.MARK_UNCOLLECTIBLE, f"{given_up}: give up")
    )
    steps.append(("final_notice", final, StepAction.FINAL_NOTICE, f"{given_up}: tell the customer"))
    return steps


def schedule(facts: DunningFacts, policy: DunningPolicy, today: date) -> list[DunningStep]:
    """Every step of the invoice's dunning, in date order, with what is due today."""
    raw = _raw_steps(facts, policy)
    known = {key for key, *_ in raw}
    steps: list[DunningStep] = []
    open_ = facts.status == "open"
    hard = facts.hard_decline
    # The latest step of each kind due today and not yet taken: the one to perform.
    latest_due: dict[StepAction, str] = {}
    for key, on, action, _ in raw:
        if key not in facts.recorded and on <= today:
            latest_due[action] = key
    performing_earlier_step = False
    for key, on, action, reason in raw:
        recorded = facts.recorded.get(key)
        if recorded is not None:
            steps.append(DunningStep(key, recorded.on, action, recorded.reason, recorded.status))
            continue
        is_due = on <= today
        if not open_:
            steps.append(
                DunningStep(key, on, action, f"the invoice is {facts.status}", StepStatus.SKIPPED)
            )
            continue
        if action in (StepAction.RETRY_CHARGE, StepAction.SEND_REMINDER):
            if is_due and latest_due.get(action) != key:
                steps.append(
                    DunningStep(
                        key, on, action, "missed: a later step is due", StepStatus.SKIPPED, True
                    )
                )
                continue
            if action is StepAction.RETRY_CHARGE and hard is not None:
                steps.append(
                    DunningStep(
                        key,
                        on,
                        action,
                        f"hard decline ({hard}): no retry until a new payment method is set",
                        StepStatus.SKIPPED,
                        is_due,
                    )
                )
                continue
            # A charge still in flight settles first: the step waits for the next night.
            due = is_due and not facts.attempt_in_flight
            performing_earlier_step = performing_earlier_step or due
            steps.append(DunningStep(key, on, action, reason, StepStatus.PLANNED, due))
            continue
        # The final steps wait for every earlier step and any charge still in flight.
        due = is_due and not facts.attempt_in_flight and not performing_earlier_step
        steps.append(DunningStep(key, on, action, reason, StepStatus.PLANNED, due))
    # Steps recorded outside the schedule (a retry after a new payment method).
    for key, recorded in facts.recorded.items():
        if key not in known and recorded.action is not None:
            steps.append(
                DunningStep(key, recorded.on, recorded.action, recorded.reason, recorded.status)
            )
    steps.sort(key=lambda step: step.on)
    return steps


def next_retry_date(facts: DunningFacts, policy: DunningPolicy, today: date) -> date | None:
    """When the next scheduled retry will run, as a payment-failed email promises it: None
    when none is left, or a hard decline holds them."""
    for step in schedule(facts, policy, today):
        if (
            step.action is StepAction.RETRY_CHARGE
            and step.status is StepStatus.PLANNED
            and step.on > today
        ):
            return step.on
    return None
