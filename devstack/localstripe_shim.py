"""localstripe with what real Stripe answers on our reconciliation path.

localstripe (the emulator that ``make run`` and the tests start) has no search API, refuses
the ``customer`` and ``created`` filters on the PaymentIntent list and lists oldest first.
The service finds a PaymentIntent whose answer was lost by our ledger key in its metadata,
and reconciles a time range by ``created``; so that tests run that same code, this module
adds to localstripe, as Stripe documents them:

- ``GET /v1/payment_intents/search`` and ``GET /v1/customers/search``: Stripe's query
  language (``field:'value'``, ``metadata['key']:'value'``, ``-`` to negate, ``~`` for a
  substring of a text field, ``>`` ``<`` ``>=`` ``<=`` ``=`` on numbers, ``null`` for
  absent; up to ten clauses joined by spaces or ``AND``, or by ``OR``, never both), exact
  matches ignoring case, newest first, answered as a ``search_result`` paged by
  ``limit``/``page``;
- the ``customer`` and ``created`` filters on ``GET /v1/payment_intents``, newest first,
  paged by ``starting_after`` or ``ending_before``.

Every PaymentIntent and Customer is indexed when it is created or updated: by creation
order (for ``created`` and the cursors), by customer, and by each metadata value. An index
entry is a hint checked against the object itself when read, so an object changed behind
the index is never answered wrongly. A charge's refunds are indexed too: localstripe scans
its whole store for them each time it exports a charge, which made every PaymentIntent
answered cost more as the store grew. Search is immediate here; on Stripe it may lag by up
to a minute, which our code must (and does) tolerate by keeping the idempotency key.

Run instead of the ``localstripe`` script (same ``--port`` and ``--from-scratch``)::

    python -m devstack.localstripe_shim --port 8420 --from-scratch [--dump-to-disk]

``--dump-to-disk`` keeps localstripe's pickling of its whole store after every write;
without it, instances are faster and independent of each other.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import enum
import itertools
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_CLAUSES = 10
MIN_SUBSTRING = 3

# (created, order of creation): Stripe's order of objects, oldest first. Many objects share
# a second; the order of creation breaks the tie as Stripe's own finer clock does.
Key = tuple[int, int]


class Kind(enum.Enum):
    NUMBER = "number"  # amount, created: compared as integers
    TOKEN = "token"  # status, currency, customer: exact match only
    TEXT = "text"  # email, name, phone: exact or substring
    METADATA = "metadata"  # metadata['key']: exact match only


PAYMENT_INTENT_FIELDS = {
    "amount": Kind.NUMBER,
    "created": Kind.NUMBER,
    "currency": Kind.TOKEN,
    "customer": Kind.TOKEN,
    "metadata": Kind.METADATA,
    "status": Kind.TOKEN,
}
CUSTOMER_FIELDS = {
    "created": Kind.NUMBER,
    "email": Kind.TEXT,
    "metadata": Kind.METADATA,
    "name": Kind.TEXT,
    "phone": Kind.TEXT,
}


class ShimError(Exception):
    """A request Stripe would refuse with a 400 invalid_request_error."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


# --------------------------------------------------------------------------------------------
# The query language
# --------------------------------------------------------------------------------------------

_CLAUSE = re.compile(
    r"""
    (?P<negated>-)?
    (?P<field>[a-z_]+)
    (?:\[(?P<kq>['"])(?P<key>(?:\\.|(?!(?P=kq)).)*)(?P=kq)\])?
    (?P<operator>>=|<=|:|~|>|<|=)
    (?:(?P<vq>['"])(?P<quoted>(?:\\.|(?!(?P=vq)).)*)(?P=vq)|(?P<bare>[^\s'"]+))
    """,
    re.VERBOSE,
)
_JOIN = re.compile(r"\s+(?:(?P<word>AND|OR)\s+)?", re.IGNORECASE)
_ESCAPED = re.compile(r"\\(.)")
_COMPARISONS: dict[str, Callable[[int, int], bool]] = {
    "=": lambda a, b: a == b,
    ":": lambda a, b: a == b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
}


def _fold(value: object) -> str:
    return str(value).casefold()


@dataclass(frozen=True)
class Clause:
    field: str
    key: str | None  # the metadata key
    operator: str
    value: str | int | None  # None: `null`, the field is absent
    negated: bool = False

    def matches(self, obj: Any) -> bool:
        if self.field == "metadata":
            actual = (getattr(obj, "metadata", None) or {}).get(self.key)
        else:
            actual = getattr(obj, self.field, None)
        if actual == "":
            actual = None
        if self.value is None:
            found = actual is None
        elif actual is None:
            found = False
        elif isinstance(self.value, int):
            found = _COMPARISONS[self.operator](int(actual), self.value)
        elif self.operator == "~":
            found = _fold(self.value) in _fold(actual)
        else:
            found = _fold(actual) == _fold(self.value)
        return found != self.negated


@dataclass(frozen=True)
class Query:
    clauses: tuple[Clause, ...]
    any_of: bool  # joined by OR; otherwise every clause must match

    def matches(self, obj: Any) -> bool:
        results = (clause.matches(obj) for clause in self.clauses)
        return any(results) if self.any_of else all(results)


def parse_query(text: object, fields: dict[str, Kind], resource: str) -> Query:
    """Stripe's search query language, as far as the fields of one resource go."""
    if not isinstance(text, str) or not text.strip():
        raise ShimError("Missing required param: query.", param="query", code="parameter_missing")
    clauses: list[Clause] = []
    joins: set[str] = set()
    position = len(text) - len(text.lstrip())
    while True:
        match = _CLAUSE.match(text, position)
        if match is None:
            raise ShimError(
                f"The query is not valid at character {position}: {text[position:][:40]!r}.",
                param="query",
            )
        clauses.append(_clause(match, fields, resource))
        position = match.end()
        if position == len(text.rstrip()):
            break
        join = _JOIN.match(text, position)
        if join is None:
            raise ShimError(
                f"The query is not valid at character {position}: {text[position:][:40]!r}.",
                param="query",
            )
        joins.add((join.group("word") or "AND").upper())
        position = join.end()
    if len(joins) > 1:
        raise ShimError("A query cannot combine AND and OR.", param="query")
    if len(clauses) > MAX_CLAUSES:
        raise ShimError(f"A query has at most {MAX_CLAUSES} clauses.", param="query")
    return Query(tuple(clauses), any_of=joins == {"OR"})


def _clause(match: re.Match[str], fields: dict[str, Kind], resource: str) -> Clause:
    field, operator = match.group("field"), match.group("operator")
    kind = fields.get(field)
    if kind is None:
        raise ShimError(
            f"Field `{field}` is an unsupported search field for resource `{resource}`. "
            f"Supported: {', '.join(sorted(fields))}.",
            param="query",
        )
    key = match.group("key")
    if (kind is Kind.METADATA) != (key is not None):
        shape = "metadata['key']" if kind is Kind.METADATA else field
        raise ShimError(f"Write the field as {shape}.", param="query")
    quoted = match.group("quoted")
    bare = match.group("bare")
    value: str | int | None
    if quoted is None and bare.lower() == "null":
        value = None
    elif kind is Kind.NUMBER:
        try:
            value = int(quoted if quoted is not None else bare)
        except ValueError:
            raise ShimError(f"`{field}` takes a whole number.", param="query") from None
    elif quoted is None:
        raise ShimError(f"The value for `{field}` must be quoted.", param="query")
    else:
        value = _ESCAPED.sub(r"\1", quoted)
    if operator == "~":
        if kind is not Kind.TEXT or not isinstance(value, str):
            raise ShimError(f"`{field}` does not support substring matching.", param="query")
        if len(value) < MIN_SUBSTRING:
            raise ShimError(
                f"A substring match takes at least {MIN_SUBSTRING} characters.", param="query"
            )
    elif operator != ":" and (kind is not Kind.NUMBER or value is None):
        raise ShimError(f"`{field}` does not support the operator `{operator}`.", param="query")
    return Clause(
        field=field,
        key=_ESCAPED.sub(r"\1", key) if key is not None else None,
        operator=operator,
        value=value,
        negated=match.group("negated") is not None,
    )


# --------------------------------------------------------------------------------------------
# The indexes
# --------------------------------------------------------------------------------------------


class Timeline:
    """Ids in Stripe's order, cut by `created` and by a cursor's place by bisection."""

    def __init__(self) -> None:
        self._keys: list[Key] = []
        self._ids: list[str] = []

    def add(self, key: Key, object_id: str) -> None:
        at = bisect.bisect_right(self._keys, key)  # at the end, unless the clock went back
        self._keys.insert(at, key)
        self._ids.insert(at, object_id)

    def span(
        self,
        created_from: int | None = None,
        created_until: int | None = None,
        *,
        older_than: Key | None = None,
        newer_than: Key | None = None,
    ) -> tuple[int, int]:
        """The positions [low, high) of the ids created in [created_from, created_until),
        older than one cursor and newer than the other."""
        low = 0 if created_from is None else bisect.bisect_left(self._keys, (created_from, -1))
        high = (
            len(self._keys)
            if created_until is None
            else bisect.bisect_left(self._keys, (created_until, -1))
        )
        if older_than is not None:
            high = min(high, bisect.bisect_left(self._keys, older_than))
        if newer_than is not None:
            low = max(low, bisect.bisect_right(self._keys, newer_than))
        return low, max(low, high)

    def newest_first(self, low: int, high: int) -> Iterator[str]:
        return (self._ids[at] for at in range(high - 1, low - 1, -1))

    def oldest_first(self, low: int, high: int) -> Iterator[str]:
        return (self._ids[at] for at in range(low, high))

    def __len__(self) -> int:
        return len(self._ids)


class Collection:
    """One kind of localstripe object (PaymentIntents, Customers) as search and lists see it."""

    def __init__(
        self,
        cls: Any,
        fields: dict[str, Kind],
        *,
        resource: str,
        store: Any,
        by_customer: bool = False,
    ) -> None:
        self.cls = cls
        self.fields = fields
        self.resource = resource  # as in its URL: payment_intents, customers
        self._store = store
        self._by_customer_enabled = by_customer
        self._order = itertools.count()
        self.reset()

    def reset(self) -> None:
        self.keys: dict[str, Key] = {}
        self.timeline = Timeline()
        self.by_metadata: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.by_customer: dict[str, Timeline] = defaultdict(Timeline)
        self._in_customer_timeline: set[tuple[str, str]] = set()  # (customer, id)

    def get(self, object_id: str) -> Any:
        return self._store.get(f"{self.cls.object}:{object_id}")

    def track(self, obj: Any) -> None:
        """A new object: placed in Stripe's order, then indexed."""
        if obj.id in self.keys:
            return
        key = (int(obj.created), next(self._order))
        self.keys[obj.id] = key
        self.timeline.add(key, obj.id)
        self.reindex(obj)

    def reindex(self, obj: Any) -> None:
        """After a create or an update. What the object no longer has stays indexed: every
        hit is checked against the object before it is answered."""
        key = self.keys.get(obj.id)
        if key is None:
            return
        for name, value in (getattr(obj, "metadata", None) or {}).items():
            self.by_metadata[(str(name), _fold(value))].add(obj.id)
        customer = getattr(obj, "customer", None)
        if self._by_customer_enabled and isinstance(customer, str):
            if (customer, obj.id) not in self._in_customer_timeline:
                self._in_customer_timeline.add((customer, obj.id))
                self.by_customer[customer].add(key, obj.id)

    def rebuild(self) -> None:
        """From the store itself (loaded from disk), in its order of insertion."""
        self.reset()
        prefix = f"{self.cls.object}:"
        for store_key, obj in list(self._store.items()):
            if store_key.startswith(prefix):
                self.track(obj)

    def _candidates(self, clause: Clause) -> set[str] | None:
        """Ids that may match the clause, from an index; None when no index narrows it."""
        if clause.negated or clause.operator != ":" or clause.value is None:
            return None
        if clause.field == "metadata" and clause.key is not None:
            return self.by_metadata.get((clause.key, _fold(clause.value)), set())
        if clause.field == "customer" and self._by_customer_enabled:
            timeline = self.by_customer.get(str(clause.value))
            return set(timeline.newest_first(0, len(timeline))) if timeline else set()
        return None

    def search(
        self,
        query: object = None,
        limit: object = None,
        page: object = None,
        **unexpected: object,
    ) -> Answer:
        _refuse_unknown(unexpected)
        parsed = parse_query(query, self.fields, self.resource)
        count = _limit(limit)
        older_than = self._page_cursor(page)
        narrowed = [self._candidates(clause) for clause in parsed.clauses]
        ids: Iterable[str]
        if parsed.any_of and all(found is not None for found in narrowed):
            ids = self._newest_first(set().union(*(f for f in narrowed if f)), older_than)
        elif not parsed.any_of and any(found is not None for found in narrowed):
            smallest = min((found for found in narrowed if found is not None), key=len)
            ids = self._newest_first(smallest, older_than)
        else:
            ids = self.timeline.newest_first(*self.timeline.span(older_than=older_than))
        found = list(itertools.islice(self._live(ids, parsed.matches), count + 1))
        shown = found[:count]
        return Answer(
            {
                "object": "search_result",
                "url": f"/v1/{self.resource}/search",
                "has_more": len(found) > count,
                "next_page": _encode_page(self.keys[shown[-1].id]) if len(found) > count else None,
            },
            shown,
        )

    def list_objects(
        self,
        url: str,
        limit: object = None,
        starting_after: object = None,
        ending_before: object = None,
        customer: object = None,
        created: object = None,
        **unexpected: object,
    ) -> Answer:
        _refuse_unknown(unexpected)
        count = _limit(limit)
        if starting_after is not None and ending_before is not None:
            raise ShimError(
                "You may only specify one of these parameters: ending_before, starting_after.",
                param="ending_before",
            )
        created_from, created_until = _created_range(created)
        timeline = self.timeline
        belongs: Callable[[Any], bool] = _anything
        if customer is not None:
            if not isinstance(customer, str) or not customer:
                raise ShimError("Invalid string: customer.", param="customer")
            timeline = self.by_customer.get(customer) or Timeline()
            belongs = _of_customer(customer)
        older_than = self._cursor(starting_after, "starting_after")
        newer_than = self._cursor(ending_before, "ending_before")
        low, high = timeline.span(
            created_from, created_until, older_than=older_than, newer_than=newer_than
        )
        if newer_than is None:
            found = list(
                itertools.islice(self._live(timeline.newest_first(low, high), belongs), count + 1)
            )
            shown = found[:count]
        else:
            # The page just newer than the cursor, still shown newest first.
            found = list(
                itertools.islice(self._live(timeline.oldest_first(low, high), belongs), count + 1)
            )
            shown = found[:count][::-1]
        return Answer({"object": "list", "url": url, "has_more": len(found) > count}, shown)

    def _newest_first(self, ids: set[str], older_than: Key | None) -> list[str]:
        keyed = ((self.keys[i], i) for i in ids if i in self.keys)
        return [
            object_id
            for key, object_id in sorted(keyed, reverse=True)
            if older_than is None or key < older_than
        ]

    def _live(self, ids: Iterable[str], wanted: Callable[[Any], bool]) -> Iterator[Any]:
        """The objects still in the store (a DELETE or a reset removes them) that match."""
        for object_id in ids:
            obj = self.get(object_id)
            if obj is not None and wanted(obj):
                yield obj

    def _cursor(self, object_id: object, param: str) -> Key | None:
        if object_id is None:
            return None
        key = self.keys.get(object_id) if isinstance(object_id, str) else None
        if key is None:
            raise ShimError(
                f"No such {self.cls.object}: '{object_id}'", param=param, code="resource_missing"
            )
        return key

    def _page_cursor(self, page: object) -> Key | None:
        if page is None or page == "":
            return None
        try:
            created, order = base64.urlsafe_b64decode(str(page).encode()).decode().split(":")
            return int(created), int(order)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise ShimError(
                "Invalid page: not a page this search returned.", param="page"
            ) from None


def _anything(obj: Any) -> bool:
    return True


def _of_customer(customer: str) -> Callable[[Any], bool]:
    # The index by customer may hold an object whose customer changed since.
    return lambda obj: getattr(obj, "customer", None) == customer


def _encode_page(key: Key) -> str:
    return base64.urlsafe_b64encode(f"{key[0]}:{key[1]}".encode()).decode()


class Answer:
    """What localstripe's route handlers expect back: an object with `_export(expand)`."""

    def __init__(self, fields: dict[str, Any], objects: Sequence[Any]) -> None:
        self.fields = fields
        self.objects = objects

    def _export(self, expand: object = None) -> dict[str, Any]:
        if expand is not None and (
            not isinstance(expand, list) or not all(isinstance(e, str) for e in expand)
        ):
            raise ShimError("Invalid array: expand.", param="expand")
        paths = [path.removeprefix("data.") for path in expand or [] if path.startswith("data.")]
        return {**self.fields, "data": [obj._export(expand=paths) for obj in self.objects]}


def _refuse_unknown(params: dict[str, object]) -> None:
    if params:
        name = sorted(params)[0]
        raise ShimError(f"Received unknown parameter: {name}", param=name)


def _limit(value: object) -> int:
    if value is None:
        return DEFAULT_LIMIT
    try:
        limit = int(str(value))
    except ValueError:
        raise ShimError("Invalid integer: limit.", param="limit") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ShimError(
            f"This value must be between 1 and {MAX_LIMIT} (it currently is {limit}).",
            param="limit",
        )
    return limit


def _created_range(created: object) -> tuple[int | None, int | None]:
    """Stripe's `created` filter (a second, or gt/gte/lt/lte) as a range [from, until)."""
    if created is None:
        return None, None

    def second(value: object, param: str) -> int:
        try:
            return int(str(value))
        except ValueError:
            raise ShimError(f"Invalid integer: {param}.", param=param) from None

    if not isinstance(created, dict):
        exact = second(created, "created")
        return exact, exact + 1
    unknown = set(created) - {"gt", "gte", "lt", "lte"}
    if unknown or not created:
        name = sorted(unknown)[0] if unknown else ""
        raise ShimError(f"Received unknown parameter: created[{name}]", param="created")
    bounds_from = [second(created["gte"], "created[gte]")] if "gte" in created else []
    bounds_from += [second(created["gt"], "created[gt]") + 1] if "gt" in created else []
    bounds_until = [second(created["lt"], "created[lt]")] if "lt" in created else []
    bounds_until += [second(created["lte"], "created[lte]") + 1] if "lte" in created else []
    return max(bounds_from, default=None), min(bounds_until, default=None)


# --------------------------------------------------------------------------------------------
# Into localstripe
# --------------------------------------------------------------------------------------------


def install(*, dump_to_disk: bool = False) -> tuple[Collection, Collection]:
    """Patch localstripe: must run before `localstripe.server` is imported, which registers
    its routes (extra ones before `/{id}`, so `/search` is not taken for an id)."""
    if "localstripe.server" in sys.modules:
        raise RuntimeError("install() must run before localstripe.server is imported")
    from localstripe import resources
    from localstripe.errors import UserError

    if not dump_to_disk:
        resources.Store.dump_to_disk = lambda self: None
    store = resources.store
    intents = Collection(
        resources.PaymentIntent,
        PAYMENT_INTENT_FIELDS,
        resource="payment_intents",
        store=store,
        by_customer=True,
    )
    customers = Collection(resources.Customer, CUSTOMER_FIELDS, resource="customers", store=store)
    for collection in (intents, customers):
        _after_init(collection.cls, collection.track)
        _after_update(collection.cls, collection.reindex)
    refunds = RefundsByCharge(resources, store)
    _after_init(resources.Refund, refunds.track)
    resources.Charge.refunds = property(refunds.of_charge)

    clear, load = resources.Store.clear, resources.Store.try_load_from_disk

    def cleared(self: Any) -> None:
        clear(self)
        intents.reset()
        customers.reset()
        refunds.reset()

    def loaded(self: Any) -> None:
        load(self)
        intents.rebuild()
        customers.rebuild()
        refunds.rebuild()

    resources.Store.clear = cleared
    resources.Store.try_load_from_disk = loaded

    def refused_as_stripe_does(answer: Callable[..., Answer]) -> Callable[..., Answer]:
        def answered(*args: Any, **params: Any) -> Answer:
            try:
                return answer(*args, **params)
            except ShimError as exc:
                contents = {"param": exc.param} if exc.param else {}
                if exc.code:
                    contents["code"] = exc.code
                raise UserError(400, exc.message, contents) from exc

        return answered

    def list_intents(cls: Any, url: str, **params: Any) -> Answer:
        return intents.list_objects(url, **params)

    resources.PaymentIntent._api_list_all = classmethod(refused_as_stripe_does(list_intents))
    resources.extra_apis.extend(
        [
            ("GET", "/v1/payment_intents/search", refused_as_stripe_does(intents.search)),
            ("GET", "/v1/customers/search", refused_as_stripe_does(customers.search)),
        ]
    )
    return intents, customers


class RefundsByCharge:
    """A charge's refunds without reading the whole store. localstripe finds them by a scan
    of every object, three times for each charge it exports (its refunds, amount refunded,
    refunded), so exporting one PaymentIntent grew with the store, and listing or creating
    them grew with its square."""

    def __init__(self, resources: Any, store: Any) -> None:
        self._resources = resources
        self._store = store
        self.reset()

    def reset(self) -> None:
        self._by_charge: dict[str, list[str]] = defaultdict(list)

    def track(self, refund: Any) -> None:
        self._by_charge[refund.charge].append(refund.id)

    def rebuild(self) -> None:
        self.reset()
        for store_key, obj in list(self._store.items()):
            if store_key.startswith("refund:"):
                self.track(obj)

    def of_charge(self, charge: Any) -> Any:
        """Charge.refunds as localstripe answers it: a list, newest first."""
        listed = self._resources.List(f"/v1/charges/{charge.id}/refunds")
        found = (self._store.get(f"refund:{i}") for i in self._by_charge.get(charge.id, ()))
        listed._list = sorted((r for r in found if r), key=lambda r: r.date, reverse=True)
        return listed


def _after_init(cls: Any, then: Callable[[Any], None]) -> None:
    """Call `then` with every object of `cls` once it is created."""
    create = cls.__init__

    def created(obj: Any, *args: Any, **kwargs: Any) -> None:
        create(obj, *args, **kwargs)
        then(obj)

    cls.__init__ = created


def _after_update(cls: Any, then: Callable[[Any], None]) -> None:
    """Call `then` with every object of `cls` once an update changed it."""
    update = cls._update

    def updated(obj: Any, **data: Any) -> None:
        update(obj, **data)
        then(obj)

    cls._update = updated


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dump-to-disk",
        action="store_true",
        help="keep localstripe's pickling of its whole store to /tmp after every write",
    )
    ours, theirs = parser.parse_known_args(argv)
    install(dump_to_disk=ours.dump_to_disk)
    from localstripe import server

    sys.argv = [sys.argv[0], *theirs]  # --port, --from-scratch: localstripe's own
    server.start()


if __name__ == "__main__":
    main()
