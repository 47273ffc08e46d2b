#!/usr/bin/env python3
"""Container health check, one command for every role the image serves.

    billing-healthcheck            (in the image; here: python deploy/healthcheck.py)

The role comes from BILLING_ROLE (the task definitions set it; the image says `web`):

  web      GET http://127.0.0.1:$PORT/healthz answers 200: the process serves requests.
           Not /readyz: a database outage must take web out of the load balancer (the
           target group asks /readyz), not make ECS kill every web task.
  worker   $HEARTBEAT_FILE was touched within HEARTBEAT_MAX_AGE_SECONDS (default 60):
  beat     workers touch it from their event loop every 2 s while connected to Redis,
           beat at every tick (at most 5 s apart) while it holds the scheduler lock.
  migrate  nothing to check: a one-off task's exit code is its result.

Exit codes (Docker's and ECS's convention): 0 healthy, 1 unhealthy or misconfigured; the
reason is printed on one line. Standard library only: it runs every 30 s in every
container and must not load the application.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping

ROLES = ("web", "worker", "beat", "migrate")
DEFAULT_HEARTBEAT_FILE = "/tmp/billing-heartbeat"  # noqa: S108 - the image's own path
DEFAULT_MAX_AGE_SECONDS = 60.0
HTTP_TIMEOUT_SECONDS = 3.0


def check_web(env: Mapping[str, str]) -> tuple[bool, str]:
    url = f"http://127.0.0.1:{env.get('PORT') or '8000'}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"
    return status == 200, f"{url}: HTTP {status}"


def check_heartbeat(env: Mapping[str, str], now: float) -> tuple[bool, str]:
    path = env.get("HEARTBEAT_FILE") or DEFAULT_HEARTBEAT_FILE
    raw = env.get("HEARTBEAT_MAX_AGE_SECONDS") or str(DEFAULT_MAX_AGE_SECONDS)
    try:
        max_age = float(raw)
    except ValueError:
        return False, f"HEARTBEAT_MAX_AGE_SECONDS must be a number of seconds, got {raw!r}"
    try:
        age = now - os.stat(path).st_mtime
    except OSError as exc:
        return False, f"no heartbeat at {path}: {exc.strerror}"
    verdict = "fresh" if age <= max_age else "stale"
    return age <= max_age, f"heartbeat {path} is {age:.0f} s old ({verdict}, limit {max_age:.0f} s)"


def check(env: Mapping[str, str], now: float | None = None) -> tuple[bool, str]:
    role = env.get("BILLING_ROLE") or "web"
    if role == "web":
        return check_web(env)
    if role in ("worker", "beat"):
        return check_heartbeat(env, time.time() if now is None else now)
    if role == "migrate":
        return True, "one-off task: nothing to check"
    return False, f"BILLING_ROLE must be one of {', '.join(ROLES)}, got {role!r}"


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="billing-healthcheck",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)
    healthy, reason = check(os.environ)
    print(f"{'healthy' if healthy else 'unhealthy'}: {reason}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
