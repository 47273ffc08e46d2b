"""Every state machine, walked whole: each pair its table lists is accepted, every other
pair of its states is refused with its own error, a subclass of IllegalTransition."""

import ast
from itertools import product
from pathlib import Path

import pytest

import billing.domain
from billing.charging import rules as charges
from billing.charging.rules import ChargeStatus
from billing.domain import jobs, ledger
from billing.domain.jobs import JobState
from billing.domain.ledger import LedgerState
from billing.domain.states import IllegalTransition, StateMachine
from billing.invoicing import rules as invoices
from billing.invoicing.rules import InvoiceStatus
from billing.notifications import rules as emails
from billing.notifications.rules import DeliveryStatus
from billing.refunds import rules as refunds
from billing.refunds.rules import RefundStatus
from billing.stripe_events import rules as webhooks
from billing.stripe_events.rules import EventStatus
from billing.subscriptions import rules as subscriptions
from billing.subscriptions.rules import SubscriptionStatus

MACHINES = {
    "invoice": invoices.MACHINE,
    "charge": charges.MACHINE,
    "refund": refunds.MACHINE,
    "job": jobs.MACHINE,
    "ledger": ledger.MACHINE,
    "webhook": webhooks.MACHINE,
    "email": emails.MACHINE,
    "subscription": subscriptions.MACHINE,
}
REQUIRE = {
    "invoice": invoices.require_transition,
    "charge": charges.require_transition,
    "refund": refunds.require_transition,
    "job": jobs.require_transition,
    "ledger": ledger.require_transition,
    "webhook": webhooks.require_transition,
    "email": emails.require_transition,
    "subscription": subscriptions.require_transition,
}


def _pairs(allowed: bool) -> list:
    return [
        pytest.param(name, current, target, id=f"{name}:{current}->{target}")
        for name, machine in MACHINES.items()
        for current, target in product(machine.states, repeat=2)
        if ((current, target) in machine.pairs()) is allowed
    ]


@pytest.mark.parametrize(("name", "current", "target"), _pairs(allowed=True))
def test_every_change_in_a_table_is_accepted(name, current, target):
    # As the database holds it (a plain string) and as a member.
    assert REQUIRE[name](current.value, target) is target
    assert REQUIRE[name](current, target) is target
    assert MACHINES[name].allows(current, target)


@pytest.mark.parametrize(("name", "current", "target"), _pairs(allowed=False))
def test_every_change_not_in_a_table_is_refused(name, current, target):
    machine = MACHINES[name]
    with pytest.raises(machine.error) as refused:
        REQUIRE[name](current.value, target)
    assert isinstance(refused.value, IllegalTransition)
    assert (refused.value.current, refused.value.target) == (current, target)
    assert not machine.allows(current, target)


def test_each_machine_has_an_error_class_of_its_own():
    errors = [machine.error for machine in MACHINES.values()]
    assert len(set(errors)) == len(errors)
    assert all(issubclass(error, IllegalTransition) for error in errors)
    assert issubclass(invoices.InvalidStateTransition, IllegalTransition)


@pytest.mark.parametrize("name", MACHINES)
def test_a_status_no_table_knows_is_refused(name):
    machine = MACHINES[name]
    with pytest.raises(machine.error):
        REQUIRE[name]("bogus", next(iter(machine.states)))


def test_a_table_must_say_where_every_state_goes():
    with pytest.raises(ValueError, match="no row"):
        StateMachine(
            RefundStatus, {RefundStatus.PENDING: {RefundStatus.STARTED}}, IllegalTransition
        )


def test_the_refusal_names_the_machine_and_both_states():
    with pytest.raises(
        charges.IllegalChargeTransition,
        match="a charge attempt in status 'succeeded' cannot become 'failed'",
    ):
        charges.require_transition("succeeded", ChargeStatus.FAILED)


# The values are the strings the database already holds: no migration, and a member
# compares equal to what a row reads back.
@pytest.mark.parametrize(
    ("states", "values"),
    [
        (InvoiceStatus, ["draft", "open", "paid", "void", "uncollectible"]),
        (
            ChargeStatus,
            [
                "pending",
                "started",
                "unknown",
                "requires_action",
                "succeeded",
                "failed",
                "canceled",
            ],
        ),
        (RefundStatus, ["pending", "started", "unknown", "succeeded", "failed"]),
        (JobState, ["pending", "sent", "running", "succeeded", "failed", "dead_lettered"]),
        (LedgerState, ["started", "succeeded", "failed", "unknown"]),
        (EventStatus, ["received", "processed", "ignored", "failed"]),
        (DeliveryStatus, ["pending", "sent", "failed"]),
        (SubscriptionStatus, ["active", "canceled", "trialing"]),
    ],
)
def test_states_are_the_strings_the_database_holds(states, values):
    assert [state.value for state in states] == values
    assert all(state == value for state, value in zip(states, values, strict=True))


# --- what the code relies on, read off the tables ---------------------------------------


def test_a_payment_settles_exactly_the_invoices_that_may_become_paid():
    assert set(invoices.PAYABLE) == invoices.MACHINE.sources(InvoiceStatus.PAID)


def test_charge_attempts():
    machine = charges.MACHINE
    assert machine.terminal == {ChargeStatus.SUCCEEDED}
    # Stripe's word about an attempt in flight is adopted whatever we recorded last.
    for status in charges.IN_FLIGHT:
        assert {ChargeStatus.SUCCEEDED, ChargeStatus.FAILED} <= machine.targets(status)
    # Money that arrives after a decline or a cancellation is recorded.
    assert machine.sources(ChargeStatus.SUCCEEDED) == set(ChargeStatus) - {ChargeStatus.SUCCEEDED}
    # Only an attempt never sent, or one whose send Stripe never got, is called off.
    assert machine.sources(ChargeStatus.CANCELED) == {
        ChargeStatus.PENDING,
        ChargeStatus.STARTED,
        ChargeStatus.UNKNOWN,
    }
    # Only a claim starts an attempt, and nothing goes back to pending.
    assert machine.sources(ChargeStatus.STARTED) == {ChargeStatus.PENDING}
    assert machine.sources(ChargeStatus.PENDING) == set()
    assert set(charges.ANSWERED) == set(ChargeStatus) - {
        ChargeStatus.PENDING,
        ChargeStatus.STARTED,
        ChargeStatus.UNKNOWN,
    }


def test_refunds():
    machine = refunds.MACHINE
    assert set(refunds.FINAL) == machine.terminal
    assert set(refunds.IN_PROGRESS) == set(RefundStatus) - machine.terminal
    # Stripe is only ever asked by a started run: an unknown refund is started again first.
    assert machine.sources(RefundStatus.SUCCEEDED) == {RefundStatus.STARTED}
    assert machine.sources(RefundStatus.UNKNOWN) == {RefundStatus.STARTED}


def test_outbox_jobs():
    machine = jobs.MACHINE
    assert machine.terminal == {JobState.SUCCEEDED}
    # The sweeper publishes again any unfinished job, and only those.
    assert machine.sources(JobState.SENT) == {*jobs.UNFINISHED, *jobs.REPLAYABLE}
    # A worker starts any unfinished job; only a run ends one.
    assert machine.sources(JobState.RUNNING) == set(jobs.UNFINISHED)
    for outcome in (JobState.SUCCEEDED, JobState.FAILED):
        assert machine.sources(outcome) == {JobState.RUNNING}
    # Given up on when claimed with every attempt spent, or by the run that spent the last.
    assert machine.sources(JobState.DEAD_LETTERED) == set(jobs.UNFINISHED)


def test_ledger_entries():
    machine = ledger.MACHINE
    # Claimed (or claimed again) only from started or unknown: never once done.
    assert machine.sources(LedgerState.STARTED) == {LedgerState.STARTED, LedgerState.UNKNOWN}
    assert machine.sources(LedgerState.UNKNOWN) == {LedgerState.STARTED}
    for done in ledger.DONE:
        assert machine.targets(done) <= set(ledger.DONE)


def test_webhook_events():
    machine = webhooks.MACHINE
    for applied in webhooks.APPLIED:
        assert machine.targets(applied) == {EventStatus.RECEIVED}
    assert machine.sources(EventStatus.RECEIVED) == set(EventStatus)


def test_email_deliveries_and_subscriptions():
    assert emails.MACHINE.terminal == {DeliveryStatus.SENT}
    assert subscriptions.MACHINE.pairs() == {
        (SubscriptionStatus.ACTIVE, SubscriptionStatus.CANCELED),
        (SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE),
        (SubscriptionStatus.TRIALING, SubscriptionStatus.CANCELED),
    }


FRAMEWORKS = {"flask", "flask_sqlalchemy", "celery", "sqlalchemy", "psycopg2", "stripe"}


BILLING = Path(billing.domain.__file__).parents[1]
# The rules layer: the shared rules, and each room's own rules modules.
RULES = sorted(
    [
        *BILLING.joinpath("domain").glob("*.py"),
        *BILLING.glob("*/rules.py"),
        BILLING / "charging" / "declines.py",
        BILLING / "notifications" / "kinds.py",
        BILLING / "webhooks" / "signatures.py",
    ]
)
RULES_MODULES = {
    ".".join(("billing", *path.relative_to(BILLING).with_suffix("").parts)) for path in RULES
}


@pytest.mark.parametrize("module", RULES, ids=lambda p: str(p.relative_to(BILLING)))
def test_the_rules_layer_imports_no_framework_and_no_service(module):
    imported = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not {name for name in imported if name.split(".")[0] in FRAMEWORKS}
    assert not {
        name
        for name in imported
        if name.startswith("billing.")
        and not name.startswith("billing.domain")
        and name not in RULES_MODULES
        # parties reads the settings' type for annotations only
        and name != "billing.config"
    }
