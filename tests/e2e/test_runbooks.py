"""The runbooks cannot rot: every command on every page of docs/runbooks/ is run against a
live local stack (gunicorn, a Celery worker per queue, beat, PostgreSQL, Redis, the Stripe
emulator, an SMTP server), after putting the stack in the state the page is about, and
must exit as the page says with the good output it shows.

The page format is in docs/runbooks/README.md: commands in ```sh blocks (one per line, an
expected non-zero exit as `# exit N` at the end of the line), a block whose first line is
`# Not run locally: <why>` is skipped, a ```text block after a command is its good output
(its lines in order; `<placeholder>` matches anything, or the value the test knows).

`billing` commands run in this process through click's runner, on an app built from the
stack's own environment: a `billing` process costs a second of imports, forty of them a
minute. Everything else (curl, python3) runs in bash with the stack's environment.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import stripe
from sqlalchemy import text

from tests.e2e.conftest import Stack, wait_for

pytestmark = pytest.mark.e2e

RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks"
# The order the pages run in on one stack: each leaves the stack clean for the next.
PAGES = [
    "dead-lettered-jobs.md",
    "charge-stuck-unknown.md",
    "charged-twice.md",
    "resend-or-rerender-invoices.md",
    "stripe-outage.md",
    "webhook-secret-rotation.md",
    "webhook-endpoint-disabled.md",
    "two-beats.md",
    "redis-loss.md",
    "failed-migration.md",
]
NOT_RUN = "# Not run locally:"
SECTIONS = ("## Symptoms", "## Commands", "## Verify")
PLACEHOLDER = re.compile(r"<[a-z][a-z0-9-]*>")
EXPECTED_EXIT = re.compile(r"\s+#\s*exit\s+(\d+)\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
# Shell syntax: such a line runs in bash even when it starts with `billing`.
SHELL_SYNTAX = re.compile(r"[|&;<>$`]")


# --- reading the pages --------------------------------------------------------------------


@dataclass
class Block:
    language: str
    lines: list[str]
    line_number: int

    @property
    def runnable(self) -> bool:
        return self.language == "sh" and not (self.lines and self.lines[0].startswith(NOT_RUN))


@dataclass
class Command:
    line: str
    expected_exit: int
    line_number: int
    good_output: list[str] = field(default_factory=list)


def read_blocks(page: Path) -> list[Block]:
    blocks: list[Block] = []
    current: Block | None = None
    indent = 0
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        fence = FENCE.match(line)
        if current is None and fence:
            indent = len(fence.group(1))
            current = Block(fence.group(2), [], number)
        elif current is not None and fence and len(fence.group(1)) == indent:
            blocks.append(current)
            current = None
        elif current is not None:
            current.lines.append(line[indent:] if line[:indent].isspace() else line.lstrip())
    assert current is None, f"{page.name}: a block opened on line {current.line_number} never ends"
    return blocks


def block_commands(block: Block) -> list[Command]:
    """The commands of one sh block: continuation lines joined, comments skipped."""
    commands: list[Command] = []
    pending = ""
    for offset, line in enumerate(block.lines, start=1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        expected = EXPECTED_EXIT.search(full)
        commands.append(
            Command(
                line=EXPECTED_EXIT.sub("", full),
                expected_exit=int(expected.group(1)) if expected else 0,
                line_number=block.line_number + offset,
            )
        )
    return commands


def page_commands(page: Path) -> list[Command]:
    """Every runnable command of a page, each with the good output shown after it."""
    commands: list[Command] = []
    for block in read_blocks(page):
        if block.runnable:
            commands += block_commands(block)
        elif block.language == "text":
            assert commands, f"{page.name}:{block.line_number}: good output before any command"
            commands[-1].good_output += [line for line in block.lines if line.strip()]
    return commands


def billing_commands_anywhere(page: Path) -> list[list[str]]:
    """Every `billing ...` command of a page, run or not, as argv."""
    found = []
    for block in read_blocks(page):
        if block.language != "sh":
            continue
        for command in block_commands(block):
            for part in re.split(r"\s*(?:\|\||&&|\||;)\s*", command.line):
                words = shlex.split(part, comments=True)
                if words and words[0] == "billing":
                    found.append(words)
    return found


# --- the pages themselves (no stack needed) -----------------------------------------------


def test_the_index_links_every_page_and_every_page_is_run_here():
    index = (RUNBOOKS / "README.md").read_text()
    linked = set(re.findall(r"\]\(([a-z0-9-]+\.md)\)", index))
    on_disk = {path.name for path in RUNBOOKS.glob("*.md")} - {"README.md"}
    assert linked == on_disk == set(PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_each_page_has_symptoms_commands_and_a_way_to_verify(page):
    content = (RUNBOOKS / page).read_text()
    positions = [content.find(section + "\n") for section in SECTIONS]
    assert all(p >= 0 for p in positions), f"{page} lacks one of {SECTIONS}"
    assert positions == sorted(positions), f"{page}: sections out of order"
    assert any(c.line.startswith("billing ") for c in page_commands(RUNBOOKS / page))


@pytest.mark.parametrize("page", PAGES)
def test_every_block_is_run_or_says_why_not_and_names_real_commands(page):
    from billing import create_app

    path = RUNBOOKS / page
    documented = set(PLACEHOLDER.findall((RUNBOOKS / "README.md").read_text()))
    for block in read_blocks(path):
        assert block.language in ("sh", "text"), f"{page}:{block.line_number}: ```{block.language}"
        if block.language == "sh" and not block.runnable:
            reason = block.lines[0].removeprefix(NOT_RUN).strip()
            assert reason, f"{page}:{block.line_number}: say why it is not run locally"
        if block.language == "sh":
            for command in block_commands(block):
                unknown = set(PLACEHOLDER.findall(command.line)) - documented
                assert not unknown, f"{page}:{command.line_number}: undocumented {unknown}"
    # Every billing command named, run or not, is one the CLI has, with options it takes.
    cli = create_app({"LOG_LEVEL": "WARNING"}).cli
    for argv in billing_commands_anywhere(path):
        words = [PLACEHOLDER.sub("x", word) for word in argv[1:]]
        command: Any = cli
        context = command.make_context("billing", words, resilient_parsing=True)
        while hasattr(command, "commands"):
            remaining = [*getattr(context, "_protected_args", []), *context.args]
            assert remaining, f"{page}: `{' '.join(argv)}` names a group, not a command"
            name, *rest = remaining
            assert name in command.list_commands(context), f"{page}: no `billing ... {name}`"
            command = command.get_command(context, name)
            context = command.make_context(name, rest, parent=context)  # refuses bad options


# --- running the pages --------------------------------------------------------------------


class Operator:
    """Runs a page's commands the way an operator would, against the live stack."""

    def __init__(self, stack: Stack, admin_key: str) -> None:
        from billing import create_app

        self.stack = stack
        self.app = create_app(stack.env)
        self.shell_env = {**stack.env, "BILLING_URL": stack.url, "BILLING_API_KEY": admin_key}

    def run(self, line: str) -> tuple[int, str]:
        words = shlex.split(line, comments=True)
        if words[0] == "billing" and not SHELL_SYNTAX.search(line):
            from billing.extensions import db

            with self.app.app_context():
                result = self.app.test_cli_runner().invoke(args=words[1:])
                db.session.remove()
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                raise result.exception
            return result.exit_code, result.output
        process = subprocess.run(
            ["bash", "-o", "pipefail", "-c", line],
            env=self.shell_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return process.returncode, process.stdout + process.stderr

    def sql(self, statement: str, **params: Any) -> Any:
        from billing.extensions import db

        with self.app.app_context():
            result = db.session.execute(text(statement), params)
            rows = result.all() if result.returns_rows else None
            db.session.commit()
            db.session.remove()
        return rows


def substitute(line: str, values: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: values.get(m.group(0), m.group(0)), line)


def output_pattern(expected: str, values: dict[str, str]) -> re.Pattern[str]:
    regex = ""
    for piece in re.split(r"(\s+|<[a-z][a-z0-9-]*>)", expected.strip()):
        if not piece:
            continue
        if piece.isspace():
            regex += r"\s+"
        elif PLACEHOLDER.fullmatch(piece):
            regex += re.escape(values[piece]) if piece in values else r".+?"
        else:
            regex += re.escape(piece)
    return re.compile(regex)


def assert_good_output(command: Command, output: str, values: dict[str, str], where: str) -> None:
    lines = output.splitlines()
    position = 0
    for expected in command.good_output:
        if expected.strip() == "...":
            continue
        pattern = output_pattern(expected, values)
        for index in range(position, len(lines)):
            if pattern.search(lines[index]):
                position = index + 1
                break
        else:
            raise AssertionError(
                f"{where}: `{command.line}` did not print, in order, the line\n  {expected}\n"
                f"its output was:\n{output}"
            )


@dataclass
class Scene:
    """What a page's setup made: its placeholders' values, and what to undo afterwards."""

    values: dict[str, str] = field(default_factory=dict)
    cleanup: Callable[[], None] | None = None


class StackHelper:
    def __init__(self, stack: Stack, http: Any, operator: Operator, localstripe: Any, smtp: Any):
        self.stack = stack
        self.http = http
        self.operator = operator
        self.smtp = smtp
        self.stripe = stripe.StripeClient(
            "sk_test_local", base_addresses={"api": localstripe.url}, max_network_retries=0
        )

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.http.post(f"{self.stack.url}{path}", json=body or {}, timeout=30)
        assert response.status_code in (200, 202), response.text
        return response.json()  # type: ignore[no-any-return]

    def get(self, path: str) -> dict[str, Any]:
        return self.http.get(f"{self.stack.url}{path}", timeout=30).json()  # type: ignore[no-any-return]

    def customer(self, *, email: str = "billing@acme.example", card: bool = True) -> dict[str, Any]:
        created = self.post(
            "/v1/customers", {"name": "Acme GmbH", "email": email, "currency": "eur"}
        )
        synced = wait_for(
            lambda: (c := self.get(f"/v1/customers/{created['id']}"))["stripe_customer_id"] and c
        )
        if not card:
            return synced
        method = self.stripe.v1.payment_methods.create(
            params={
                "type": "card",
                "card": {
                    "number": "4242424242424242",
                    "exp_month": 12,
                    "exp_year": 2030,
                    "cvc": "123",
                },
            }
        )
        return self.post(
            f"/v1/customers/{created['id']}/payment_method", {"payment_method": method.id}
        )

    def invoice(self, customer: dict[str, Any], collection_method: str) -> dict[str, Any]:
        draft = self.post(
            "/v1/invoices",
            {
                "customer": customer["id"],
                "collection_method": collection_method,
                "lines": [{"description": "Seats", "quantity": 2, "unit_amount": 2500}],
            },
        )
        return self.post(f"/v1/invoices/{draft['id']}/finalize")

    def settled(self, invoice_id: str, *, paid: bool = False) -> dict[str, Any]:
        """The invoice once its jobs are done: paid if asked, PDF stored, emails sent (or
        refused), the receipt among them if paid."""

        def done() -> dict[str, Any] | None:
            invoice = self.get(f"/v1/invoices/{invoice_id}")
            emails = invoice["emails"]
            kinds = {e["kind"] for e in emails}
            finished = emails and all(e["status"] in ("sent", "failed") for e in emails)
            if paid and not (invoice["status"] == "paid" and "payment_receipt" in kinds):
                return None
            return invoice if invoice["document"] and finished else None

        return wait_for(done, timeout=60)  # type: ignore[no-any-return]

    def intents_of(self, invoice_id: str) -> list[Any]:
        return [
            intent
            for intent in self.stripe.v1.payment_intents.list(
                params={"limit": 100}
            ).auto_paging_iter()
            if (intent.to_dict().get("metadata") or {}).get("invoice_id") == invoice_id
        ]


# --- each page's scene ----------------------------------------------------------------------


def dead_lettered_jobs(helper: StackHelper) -> Scene:
    # The mail server refuses the address once, for good (550): the email's job fails.
    address = "gone@globex.example"
    helper.smtp.handler.refuse(address, "550 5.1.1 No such user", times=1)
    customer = helper.customer(email=address, card=False)
    invoice = helper.settled(helper.invoice(customer, "send_invoice")["id"])
    [row] = helper.operator.sql(
        "SELECT id FROM outbox_jobs WHERE name = 'mail.send_email' AND state = 'failed'"
    )
    assert invoice["emails"][0]["status"] == "failed"
    return Scene(
        {
            "<job-id>": row.id,
            "<invoice-id>": invoice["id"],
            "<customer-id>": customer["id"],
            "<email>": address,
        }
    )


def charge_stuck_unknown(helper: StackHelper) -> Scene:
    """What a lost answer leaves: the attempt and its ledger entry unknown, while Stripe did
    charge the card (and the attempt's job gave up, so nothing settles it on its own)."""
    from billing.platform.ids import new_id

    customer = helper.customer()
    invoice = helper.settled(helper.invoice(customer, "send_invoice")["id"])
    attempt_id = new_id("ca")
    ledger_key = f"charge:{attempt_id}"
    helper.operator.sql(
        "INSERT INTO charge_attempts (id, invoice_id, ledger_key, status, source, amount, "
        "currency, payment_method, failure_message) VALUES (:id, :invoice, :key, 'unknown', "
        "'api', :amount, 'eur', :pm, 'outcome unknown, reconciling: Read timed out')",
        id=attempt_id,
        invoice=invoice["id"],
        key=ledger_key,
        amount=invoice["amount_due"],
        pm=customer["default_payment_method"],
    )
    helper.operator.sql(
        "INSERT INTO ledger_entries (scope, key, fingerprint, state, attempt, outcome) "
        "VALUES ('stripe.payment_intent', :key, :id, 'unknown', 1, "
        '\'{"error": "Read timed out"}\')',
        key=ledger_key,
        id=attempt_id,
    )
    intent = helper.stripe.v1.payment_intents.create(
        params={
            "amount": invoice["amount_due"],
            "currency": "eur",
            "customer": customer["stripe_customer_id"],
            "payment_method": customer["default_payment_method"],
            "confirm": True,
            "off_session": True,
            "metadata": {
                "invoice_id": invoice["id"],
                "attempt_id": attempt_id,
                "ledger_key": ledger_key,
            },
        },
        options={"idempotency_key": ledger_key},
    )
    assert intent.status == "succeeded"
    return Scene(
        {
            "<invoice-id>": invoice["id"],
            "<attempt-id>": attempt_id,
            "<payment-intent-id>": intent.id,
        }
    )


def charged_twice(helper: StackHelper) -> Scene:
    invoice = helper.settled(
        helper.invoice(helper.customer(), "charge_automatically")["id"], paid=True
    )
    [first] = helper.intents_of(invoice["id"])
    duplicate = helper.stripe.v1.payment_intents.create(
        params={
            "amount": first.amount,
            "currency": first.currency,
            "customer": first.customer,
            "payment_method": first.payment_method,
            "confirm": True,
            "off_session": True,
            "metadata": first.metadata.to_dict(),
        }
    )
    assert duplicate.status == "succeeded"
    return Scene({"<invoice-id>": invoice["id"], "<payment-intent-id>": duplicate.id})


def resend_or_rerender_invoices(helper: StackHelper) -> Scene:
    invoice = helper.settled(
        helper.invoice(helper.customer(), "charge_automatically")["id"], paid=True
    )
    return Scene({"<invoice-id>": invoice["id"]})


def webhook_secret_rotation(helper: StackHelper) -> Scene:
    from tests.support.webhooks import event, stripe_signature

    payload = event("customer.updated", {"id": "cus_elsewhere"})
    response = helper.http.post(
        f"{helper.stack.url}/v1/webhooks/stripe",
        data=payload,
        headers={
            "Stripe-Signature": stripe_signature(payload, "whsec_test"),
            "Content-Type": "application/json",
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    event_id = response.json()["id"]
    wait_for(
        lambda: helper.operator.sql(
            "SELECT 1 FROM stripe_events WHERE id = :id AND status <> 'received'", id=event_id
        )
    )
    return Scene({"<event-id>": event_id})


def webhook_endpoint_disabled(helper: StackHelper) -> Scene:
    """An endpoint the service disabled after its receiver answered 410, and the receiver
    working again (answering 200) by the time the operator enables it and replays."""
    from tests.support.webhook_receiver import WebhookReceiver

    receiver = WebhookReceiver(status=410)
    endpoint_id = ""

    def cleanup() -> None:
        try:
            if endpoint_id:
                response = helper.http.delete(
                    f"{helper.stack.url}/v1/webhook_endpoints/{endpoint_id}", timeout=30
                )
                assert response.status_code == 200, response.text
        finally:
            receiver.stop()

    try:
        endpoint_id = helper.post(
            "/v1/webhook_endpoints",
            {"url": receiver.url, "enabled_events": ["customer.created", "customer.updated"]},
        )["id"]
        helper.customer(email="hooks@initech.example", card=False)

        def disabled_endpoint() -> dict[str, Any] | None:
            endpoint = helper.get(f"/v1/webhook_endpoints/{endpoint_id}")
            return endpoint if endpoint["enabled"] is False else None

        disabled = wait_for(disabled_endpoint, timeout=120)
        assert disabled["disabled_reason"] == "the endpoint answered 410 Gone", disabled
        assert any(r.answered == 410 for r in receiver.received)
        receiver.status = 200
    except BaseException:
        cleanup()
        raise
    return Scene({"<endpoint-id>": endpoint_id}, cleanup=cleanup)


def two_beats(helper: StackHelper) -> Scene:
    helper.stack.start_beat("beat-2")
    wait_for(lambda: "beat: Starting" in _log(helper.stack, "beat-2"), timeout=60)
    return Scene(
        {"<beat-pid>": str(helper.stack.processes["beat"].pid)},
        cleanup=lambda: helper.stack.stop("beat-2"),
    )


def redis_loss(helper: StackHelper) -> Scene:
    helper.stack.redis.flushdb()  # the broker's messages, beat's lock and schedule: gone
    return Scene({"<beat-pid>": str(helper.stack.processes["beat"].pid)})


def _log(stack: Stack, name: str) -> str:
    path = stack.log_path(name)
    return path.read_text() if path.exists() else ""


SCENES: dict[str, Callable[[StackHelper], Scene]] = {
    "dead-lettered-jobs.md": dead_lettered_jobs,
    "charge-stuck-unknown.md": charge_stuck_unknown,
    "charged-twice.md": charged_twice,
    "resend-or-rerender-invoices.md": resend_or_rerender_invoices,
    "stripe-outage.md": lambda helper: Scene(),
    "webhook-secret-rotation.md": webhook_secret_rotation,
    "webhook-endpoint-disabled.md": webhook_endpoint_disabled,
    "two-beats.md": two_beats,
    "redis-loss.md": redis_loss,
    "failed-migration.md": lambda helper: Scene(),
}


@pytest.fixture(scope="module")
def helper(
    stack: Stack, http: Any, admin_key: str, localstripe: Any, smtp_server: Any
) -> Iterator[StackHelper]:
    yield StackHelper(stack, http, Operator(stack, admin_key), localstripe, smtp_server)
    smtp_server.handler.reset()


def test_every_page_has_a_scene():
    assert set(SCENES) == set(PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_every_command_of_the_page_gives_its_good_output_on_a_live_stack(page, helper):
    scene = SCENES[page](helper)
    try:
        for command in page_commands(RUNBOOKS / page):
            line = substitute(command.line, scene.values)
            leftover = PLACEHOLDER.findall(line)
            assert not leftover, f"{page}:{command.line_number}: no value for {leftover}"
            started = time.monotonic()
            exit_code, output = helper.operator.run(line)
            where = f"{page}:{command.line_number} ({time.monotonic() - started:.1f} s)"
            print(f"$ {line}  # exit {exit_code}, {where}\n{output}")  # shown on failure
            assert exit_code == command.expected_exit, (
                f"{where}: `{line}` exited {exit_code}, the page says {command.expected_exit}:\n"
                f"{output}"
            )
            assert_good_output(command, output, scene.values, where)
    finally:
        if scene.cleanup is not None:
            scene.cleanup()
