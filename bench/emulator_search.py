"""The Stripe emulator's search and `created`-filtered list, against the scan the gateway
made before the emulator had them (every PaymentIntent listed, filtered in Python), on an
emulator holding --intents paid PaymentIntents. Last line: the ratio search / scan.

    python bench/emulator_search.py [--intents 10000] [--runs 20] [--released-intents 1000]

The emulator (localstripe with devstack/localstripe_shim.py) is filled as the service fills
it: PaymentIntents paid by card, with our metadata, a few per customer, over many seconds.
Timed through the stripe SDK, as the gateway calls it:

(a) a PaymentIntent found by its ledger key in metadata: search, median of --runs keys;
(b) the PaymentIntents created in the last tenth of the fill, each with its charge expanded
    as the reconciler lists them: the `created`-filtered list;
(c) the old way to both: every PaymentIntent listed with its charge, filtered in Python.

For reference, the old scan on localstripe as released, filled with --released-intents
(0: skipped): it read its whole store for every page and three times for every charge it
exported, so it grew with the square of the count (the old path timed out at about
1,100 PaymentIntents); at 10,000 it takes far too long to fill, let alone scan.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import stripe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.servers import LocalStripe  # noqa: E402

STATE = ROOT / ".devstack" / "bench"
CUSTOMERS = 50
CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}
# Stripe's own read timeout is far longer; the old scan is allowed minutes, not cut short.
SCAN_TIMEOUT_SECONDS = 600


def client(emulator: LocalStripe) -> Any:
    return stripe.StripeClient(
        "sk_test_bench",
        base_addresses={"api": emulator.url},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=SCAN_TIMEOUT_SECONDS),
    )


def fill(sdk: Any, intents: int) -> list[int]:
    """`intents` PaymentIntents paid by card, with our metadata, a few per customer, as the
    service makes them (each with its charge); their `created`."""

    def paying_customer(n: int) -> tuple[str, str]:
        customer = sdk.v1.customers.create(params={"name": f"c{n}"}).id
        card = sdk.v1.payment_methods.create(params={"type": "card", "card": CARD}).id
        sdk.v1.payment_methods.attach(card, params={"customer": customer})
        return customer, card

    customers = [paying_customer(n) for n in range(CUSTOMERS)]

    def create(n: int) -> int:
        customer, card = customers[n % CUSTOMERS]
        intent = sdk.v1.payment_intents.create(
            params={
                "amount": 1000 + n,
                "currency": "eur",
                "customer": customer,
                "payment_method": card,
                "confirm": True,
                "off_session": True,
                "metadata": {"invoice_id": f"inv_{n}", "ledger_key": f"charge:att_{n}"},
            }
        )
        return int(intent.created)

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(create, range(intents)))


def seconds(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def scan(sdk: Any) -> list[dict[str, Any]]:
    """The old gateway against the emulator: every PaymentIntent, filtered afterwards."""
    page = sdk.v1.payment_intents.list(params={"limit": 100, "expand": ["data.latest_charge"]})
    return [intent.to_dict() for intent in page.auto_paging_iter()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--intents", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--released-intents", type=int, default=1_000)
    args = parser.parse_args()
    STATE.mkdir(parents=True, exist_ok=True)

    if args.released_intents:
        released = LocalStripe(STATE / "released", with_shim=False)
        try:
            released.start()
            sdk = client(released)
            started = time.perf_counter()
            fill(sdk, args.released_intents)
            fill_s = time.perf_counter() - started
            scan_s = seconds(lambda: scan(sdk))
            print(
                f"localstripe as released, {args.released_intents:,} PaymentIntents: "
                f"filled in {fill_s:,.0f} s, old scan {scan_s * 1000:,.0f} ms"
            )
        finally:
            released.stop()

    emulator = LocalStripe(STATE / "shimmed")
    try:
        emulator.start()
        sdk = client(emulator)
        started = time.perf_counter()
        created = fill(sdk, args.intents)
        print(
            f"emulator filled with {args.intents:,} PaymentIntents "
            f"in {time.perf_counter() - started:,.0f} s"
        )

        keys = [f"charge:att_{n * args.intents // args.runs}" for n in range(args.runs)]

        def search(key: str) -> None:
            found = sdk.v1.payment_intents.search(
                params={"query": f"metadata['ledger_key']:'{key}'", "limit": 100}
            )
            assert [i.metadata["ledger_key"] for i in found.data] == [key]

        search_s = statistics.median(seconds(lambda key=key: search(key)) for key in keys)
        print(f"(a) search by ledger key: {search_s * 1000:.1f} ms (median of {args.runs})")

        since = sorted(created)[args.intents * 9 // 10]
        window = sum(1 for c in created if c >= since)

        def listed() -> None:
            page = sdk.v1.payment_intents.list(
                params={"limit": 100, "created": {"gte": since}, "expand": ["data.latest_charge"]}
            )
            assert sum(1 for _ in page.auto_paging_iter()) == window

        list_s = statistics.median(seconds(listed) for _ in range(3))
        print(f"(b) created-filtered list of the newest {window:,}: {list_s * 1000:,.0f} ms")

        def scanned() -> None:
            intents = scan(sdk)
            assert len(intents) == args.intents
            hits = [i for i in intents if i["metadata"].get("ledger_key") == keys[0]]
            assert len(hits) == 1
            assert sum(1 for i in intents if i["created"] >= since) == window

        scan_s = statistics.median(seconds(scanned) for _ in range(3))
        print(f"(c) old scan of every PaymentIntent: {scan_s * 1000:,.0f} ms")
        print(f"ratio created-filtered list / old scan: {list_s / scan_s:.3f}")
        print(f"ratio search / old scan at {args.intents:,}: {search_s / scan_s:.5f}")
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
