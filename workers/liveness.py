"""This worker's id in the liveness registry (billing.adapters.broker_view).

Made once per worker, in the main process, before the pool forks: a prefork child runs
its jobs under its parent's id, and the parent is the one that beats. Host and pid name
it for an operator; the random part keeps a restarted worker with a reused pid apart."""

from __future__ import annotations

import os
import secrets
import socket

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
