"""The directory of prometheus_client's multiprocess mode, set up before our metrics exist.

prometheus_client chooses between in-process and file-backed values once, when it is
imported (prometheus_client.values.ValueClass), from PROMETHEUS_MULTIPROC_DIR. Each
process group that serves its own metrics (gunicorn's master and workers; one Celery
worker and its pool; beat) needs a directory of its own: whoever aggregates a directory
sums every process's file in it, and wipes it when it starts. When none is configured, a
fresh temporary one is made. Nothing here imports prometheus_client.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
# Defines our metrics: once it is imported, their values are of the kind chosen then.
CATALOGUE = "billing.platform.metrics"


class MetricsSetupError(RuntimeError):
    pass


def ensure_multiprocess_dir(owner: str) -> Path:
    """Make sure PROMETHEUS_MULTIPROC_DIR names a directory and that metrics created from
    now on are kept in it. When unset, a fresh temporary directory is made, exported to
    this process and its children, and removed when this process exits."""
    configured = os.environ.get(ENV)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix=f"billing-metrics-{owner}-"))
        os.environ[ENV] = str(path)
        atexit.register(_remove_if_owner, path, os.getpid())
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        if CATALOGUE in sys.modules:
            raise MetricsSetupError(
                f"{CATALOGUE} was imported before {ENV} was set: its metrics stay in this "
                "process's memory, where the metrics endpoint cannot sum them"
            )
        # The `celery` command loads its plugins first, flower among them, which imports
        # prometheus_client before our app exists. Only metrics created from now on take
        # the class chosen again here (prometheus_client looks it up at each creation):
        # ours are; flower's own stay in memory, unused in a worker.
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    return path


def shares_values() -> bool:
    """Whether this process's metrics are kept in the multiprocess directory's files (then
    an endpoint sums the directory) rather than in its own memory."""
    values = sys.modules.get("prometheus_client.values")
    return (
        values is not None
        and bool(getattr(values.ValueClass, "_multiprocess", False))
        and bool(os.environ.get(ENV))
    )


def _remove_if_owner(path: Path, owner_pid: int) -> None:
    # Forked children inherit the exit hook; only the process that made it removes it.
    if os.getpid() == owner_pid:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_files(path: Path, *, keep_pid: int | None = None) -> None:
    """Forget what processes of an earlier run left (their counters would be added to
    this run's); `keep_pid` keeps this process's own files, already open."""
    for stale in path.glob("*.db"):
        if keep_pid is None or not stale.stem.endswith(f"_{keep_pid}"):
            stale.unlink(missing_ok=True)
