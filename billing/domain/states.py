"""State machines: a table of allowed changes per kind of row, and one way to ask it.

Each kind of row with a status (invoices, charge attempts, refunds, outbox jobs, ledger
entries, webhook events, email deliveries, subscriptions) has an enum of its states and a
table listing, for each state, the states it may become. Every change of state asks its
machine first; a change the table does not list raises that machine's subclass of
`IllegalTransition`, before anything is written.

A state does not move to itself unless its table says so: where a row re-enters the
state it is in as a new event (a takeover raising a fencing token, an outcome recorded
again with new details), that is a row of its table like any other change.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import ClassVar, Generic, TypeVar

S = TypeVar("S", bound=enum.StrEnum)


class IllegalTransition(Exception):
    """A change of state its machine's table does not allow."""

    subject: ClassVar[str] = "a row"

    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"{self.subject} in status '{current}' cannot become '{target}'")
        self.current = current
        self.target = target


class StateMachine(Generic[S]):
    """The allowed changes among the members of one StrEnum. Current states may be given as
    the plain strings the database holds; StrEnum members compare equal to them."""

    def __init__(
        self,
        states: type[S],
        transitions: Mapping[S, Iterable[S]],
        error: type[IllegalTransition],
    ) -> None:
        missing = set(states) - set(transitions)
        if missing:
            # A state left out would read as "goes nowhere" by accident rather than by choice.
            raise ValueError(f"no row for {sorted(missing)} in the {states.__name__} table")
        self.states = states
        self.transitions: Mapping[S, frozenset[S]] = {
            state: frozenset(transitions[state]) for state in states
        }
        self.error = error

    def _state(self, value: str) -> S | None:
        try:
            return self.states(value)
        except ValueError:
            return None

    def allows(self, current: str, target: S) -> bool:
        state = self._state(current)
        return state is not None and target in self.transitions[state]

    def require(self, current: str, target: S) -> S:
        """`target`, when `current` may become it; the machine's error otherwise."""
        if not self.allows(current, target):
            raise self.error(current, target)
        return target

    def targets(self, current: S) -> frozenset[S]:
        return self.transitions[current]

    def sources(self, target: S) -> frozenset[S]:
        """Every state that may become `target`: the guard of a set-based update (`WHERE
        state IN ...`) that makes this change to many rows in one statement."""
        return frozenset(state for state, targets in self.transitions.items() if target in targets)

    @property
    def terminal(self) -> frozenset[S]:
        """The states nothing leaves."""
        return frozenset(state for state, targets in self.transitions.items() if not targets)

    def pairs(self) -> frozenset[tuple[S, S]]:
        """Every allowed (current, target)."""
        return frozenset(
            (state, target) for state, targets in self.transitions.items() for target in targets
        )
