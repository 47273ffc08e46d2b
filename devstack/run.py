"""``make run``: the whole billing stack on one machine, with no servers installed.

PostgreSQL, Redis and a fake Stripe (localstripe) are embedded unless ``DATABASE_URL``,
``REDIS_URL`` or ``STRIPE_API_KEY`` say otherwise. Then the database is migrated, an admin API
key is created, and the web server, a Celery worker per queue and Celery beat are started, their
output interleaved on stdout with a ``[name]`` prefix. Ctrl-C (SIGINT) or SIGTERM stops
everything; so does any child exiting, in which case the exit status is non-zero.

State (embedded data, logs, the beat schedule) lives in ``.devstack/`` at the repository root.

Usage: ``python -m devstack.run`` (env: ``PORT``, default 8000).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol

from devstack.commands import QUEUES, beat_command, web_command, worker_command
from devstack.servers import (
    LocalStripe,
    free_port,
    port_open,
    resolve_database_url,
    resolve_redis_url,
    script_path,
    stop_process_groups,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = REPO_ROOT / ".devstack"
# The broker of the running stack, for `make flower`; removed when the stack stops.
REDIS_URL_FILE = STATE_DIR / "redis-url"

DEFAULT_PORT = 8000
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
COMMAND_TIMEOUT = 300.0

LOCAL_STRIPE_API_KEY = "sk_test_local"
LOCAL_WEBHOOK_SECRET = "whsec_local_dev"
ADMIN_KEY_NAME = "dev-admin"

_output_lock = threading.Lock()


class _Stoppable(Protocol):
    def stop(self) -> None: ...


class _Fatal(Exception):
    """A startup problem already explained in its message."""


class _Interrupted(Exception):
    """SIGINT/SIGTERM arrived during startup."""


def _write(line: str) -> None:
    with _output_lock:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):  # stdout went away (e.g. piped into `head`)
            pass


def _say(message: str) -> None:
    for line in message.splitlines() or [""]:
        _write(f"[devstack] {line}")


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    pump: threading.Thread | None = field(default=None)


def _pump(prefix: str, stream: IO[bytes]) -> None:
    """Copy ``stream`` to stdout line by line, each line prefixed."""
    try:
        for raw in iter(stream.readline, b""):
            _write(prefix + raw.decode("utf-8", errors="replace").rstrip("\r\n"))
    except (OSError, ValueError):
        pass
    finally:
        stream.close()


class _StopFlag:
    """Set from a signal handler, so it takes no lock: a threading.Event would deadlock
    when the signal lands while the main thread sits inside Event.wait holding its lock."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._set and time.monotonic() < deadline:
            time.sleep(0.05)
        return self._set


class _Supervisor:
    def __init__(self) -> None:
        self.stop_requested = _StopFlag()
        self.signal_name: str | None = None
        self.children: list[_Child] = []

    # Signal handlers only record the request: printing from a handler could re-enter a
    # half-finished write to stdout.
    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
        self.stop_requested.set()

    def check(self) -> None:
        if self.stop_requested.is_set():
            raise _Interrupted

    def run_command(
        self, name: str, cmd: Sequence[str], env: dict[str, str], timeout: float = COMMAND_TIMEOUT
    ) -> str:
        """Run a one-shot command (own process group), return its stdout; stderr is echoed with
        a prefix. Raises _Fatal if it fails, _Interrupted on a signal."""
        self.check()
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                out, err = proc.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if self.stop_requested.is_set() or time.monotonic() > deadline:
                    stop_process_groups([proc], timeout=STOP_TIMEOUT)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.communicate(timeout=5)
                    self.check()
                    raise _Fatal(f"`{name}` did not finish within {timeout:.0f}s") from None
        for line in err.decode("utf-8", errors="replace").splitlines():
            _write(f"[{name}] {line}")
        stdout = out.decode("utf-8", errors="replace")
        if proc.returncode != 0:
            self.check()
            shown = "\n".join(stdout.strip().splitlines()[-20:])
            raise _Fatal(
                f"`{' '.join(cmd)}` failed with exit code {proc.returncode}"
                + (f"; stdout:\n{shown}" if shown else "")
            )
        return stdout

    def start_child(self, name: str, cmd: Sequence[str], env: dict[str, str], width: int) -> None:
        self.check()
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        child = _Child(name, proc)
        self.children.append(child)
        assert proc.stdout is not None
        child.pump = threading.Thread(
            target=_pump,
            args=(f"[{name}]".ljust(width) + " ", proc.stdout),
            name=f"pump-{name}",
            daemon=True,
        )
        child.pump.start()

    def first_exited(self) -> _Child | None:
        for child in self.children:
            if child.proc.poll() is not None:
                return child
        return None

    def stop_children(self) -> None:
        running = [c for c in self.children if c.proc.poll() is None]
        if running:
            _say("stopping " + ", ".join(c.name for c in running) + " ...")
        stop_process_groups([c.proc for c in self.children], timeout=STOP_TIMEOUT)
        for child in self.children:
            if child.pump is not None:
                child.pump.join(timeout=2)


def _wait_ready(sup: _Supervisor, url: str, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while True:
        sup.check()
        dead = sup.first_exited()
        if dead is not None:
            raise _Fatal(f"{dead.name} exited with code {dead.proc.returncode} during startup")
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                if resp.status == 200:
                    return
                last_error = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}"
        except (OSError, urllib.error.URLError) as exc:
            last_error = str(exc)
        if time.monotonic() > deadline:
            raise _Fatal(f"{url} did not answer 200 within {timeout:.0f}s (last: {last_error})")
        sup.stop_requested.wait(0.25)


def _parse_api_key(stdout: str) -> dict[str, Any]:
    """The JSON object printed by `billing api-keys create` (tolerating log lines around it)."""
    candidates = [stdout.strip(), *reversed(stdout.strip().splitlines())]
    for text in candidates:
        try:
            data = json.loads(text)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("secret"), str):
            return data
    raise _Fatal(
        f"could not find the API key JSON in the output of `billing api-keys create`:\n"
        f"{stdout.strip() or '(no output)'}"
    )


def _banner(
    *,
    api: str,
    key: dict[str, Any],
    stripe_base: str,
    stripe_local: bool,
    database_url: str,
    redis_url: str,
    mail: str,
    metrics: dict[str, int],
) -> str:
    secret = key["secret"]
    rule = "=" * 78
    lines = [
        rule,
        "  Billing service is up",
        "",
        f"  API           {api}",
        f"  API docs      {api}/docs",
        f"  Admin key     {secret}   (id {key.get('id')}, name {key.get('name')})",
        f"  Stripe API    {stripe_base}" + ("   (localstripe, fake)" if stripe_local else ""),
        f"  Database      {database_url}",
        f"  Redis         {redis_url}",
        f"  Emails        {mail}",
        f"  Metrics       {api}/metrics; "
        + ", ".join(f"{name} :{port}" for name, port in metrics.items()),
        "  Flower        make flower   (another terminal: same broker)",
        f"  State, logs   {STATE_DIR}",
        "",
        "  Try:",
        f'    curl -H "Authorization: Bearer {secret}" {api}/v1/customers',
        "",
        "  Ctrl-C stops everything.",
        rule,
    ]
    return "\n".join(lines)


def _prepend_path(existing: str | None, entry: str) -> str:
    return entry if not existing else entry + os.pathsep + existing


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="[devstack] %(message)s", stream=sys.stdout)

    sup = _Supervisor()
    previous = {sig: signal.signal(sig, sup.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    servers: list[_Stoppable] = []
    exit_code = 0
    wrote_redis_url = False
    try:
        for tool in ("billing", "gunicorn", "celery"):
            if not script_path(tool).exists():
                raise _Fatal(
                    f"the `{tool}` command is missing ({script_path(tool)}); install the "
                    f"project into the virtualenv: {sys.executable} -m pip install -e ."
                )
        billing = script_path("billing")
        env = dict(os.environ)
        try:
            port = int(env.get("PORT") or DEFAULT_PORT)
        except ValueError:
            raise _Fatal(f"PORT must be a number, got {env.get('PORT')!r}") from None
        if port_open("127.0.0.1", port):
            raise _Fatal(f"port {port} is already in use; set PORT to another one")

        STATE_DIR.mkdir(parents=True, exist_ok=True)

        database_url, pg = resolve_database_url(STATE_DIR, allow_local=False)
        if pg is not None:
            servers.append(pg)
            _say(f"embedded PostgreSQL: {database_url} (log {STATE_DIR / 'postgres' / 'log'})")
        sup.check()

        redis_url, rd = resolve_redis_url(STATE_DIR, allow_local=False)
        if rd is not None:
            servers.append(rd)
            _say(f"embedded Redis: {redis_url} (log {rd.log_path})")
        sup.check()

        stripe_local = not env.get("STRIPE_API_KEY")
        if stripe_local:
            ls = LocalStripe(STATE_DIR / "logs")
            servers.append(ls)
            env["STRIPE_API_BASE"] = ls.start()
            env["STRIPE_API_KEY"] = LOCAL_STRIPE_API_KEY
            # The hosted invoice pages load the emulator's own Stripe.js.
            env.setdefault("STRIPE_PUBLISHABLE_KEY", "pk_test_local")
            env.setdefault("STRIPE_JS_URL", f"{env['STRIPE_API_BASE']}/js.stripe.com/v3/")
            _say(f"localstripe: {env['STRIPE_API_BASE']} (log {ls.log_path})")
        mail_sink_folder: Path | None = None
        if not env.get("MAIL_SERVER"):
            from devstack.smtp import SinkHandler, SmtpSink

            mail_sink_folder = STATE_DIR / "mail"
            sink = SmtpSink(SinkHandler(mail_sink_folder)).start()
            servers.append(sink)
            env["MAIL_SERVER"], env["MAIL_PORT"] = sink.host, str(sink.port)
            _say(f"SMTP sink: {sink.host}:{sink.port}, each email saved to {mail_sink_folder}/")
        stripe_base = env.get("STRIPE_API_BASE") or "https://api.stripe.com"
        if not env.get("STRIPE_WEBHOOK_SECRET"):
            env["STRIPE_WEBHOOK_SECRET"] = LOCAL_WEBHOOK_SECRET
        env["DATABASE_URL"] = database_url
        env["REDIS_URL"] = redis_url
        REDIS_URL_FILE.write_text(redis_url + "\n")
        wrote_redis_url = True
        # Each process group makes a metrics directory of its own: a shared one would sum
        # the web's counts into a worker's, and each would wipe the other's at start.
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("PUBLIC_BASE_URL", f"http://127.0.0.1:{port}")
        env["PYTHONPATH"] = _prepend_path(env.get("PYTHONPATH"), str(REPO_ROOT))
        sup.check()

        _say("migrating the database: billing db upgrade")
        sup.run_command("db upgrade", [str(billing), "db", "upgrade"], env)
        key = _parse_api_key(
            sup.run_command(
                "api-keys",
                [str(billing), "api-keys", "create", "--admin", "--name", ADMIN_KEY_NAME],
                env,
            )
        )

        children: list[tuple[str, list[str]]] = [
            ("web", web_command(port, STATE_DIR / "gunicorn.ctl")),
            *[(queue, worker_command(queue, f"{queue}@%h")) for queue in QUEUES],
            ("beat", beat_command()),
        ]
        width = max(len(name) for name, _ in children) + 2
        # Every worker and beat serves its own metrics, each on a port of its own.
        metrics_ports = {name: free_port() for name, _ in children if name != "web"}
        for name, cmd in children:
            child_env = dict(env)
            if name in metrics_ports:
                child_env["METRICS_PORT"] = str(metrics_ports[name])
            sup.start_child(name, cmd, child_env, width)

        api = f"http://127.0.0.1:{port}"
        _wait_ready(sup, f"{api}/readyz")
        _write(
            _banner(
                api=api,
                key=key,
                stripe_base=stripe_base,
                stripe_local=stripe_local,
                database_url=database_url,
                redis_url=redis_url,
                mail=(
                    f"{mail_sink_folder}/*.eml   (local SMTP sink)"
                    if mail_sink_folder is not None
                    else f"{env['MAIL_SERVER']}:{env.get('MAIL_PORT', '25')}"
                ),
                metrics=metrics_ports,
            )
        )

        while not sup.stop_requested.wait(0.5):
            dead = sup.first_exited()
            if dead is not None:
                _say(
                    f"{dead.name} exited unexpectedly with code {dead.proc.returncode}; "
                    "stopping everything"
                )
                exit_code = 1
                break
        if sup.signal_name is not None and exit_code == 0:
            _say(f"{sup.signal_name} received, shutting down")
    except _Interrupted:
        _say(f"{sup.signal_name or 'signal'} received during startup, shutting down")
    except (_Fatal, RuntimeError) as exc:
        _say(f"error: {exc}")
        exit_code = 1
    finally:
        # Our handlers stay installed until the end, so a second Ctrl-C cannot interrupt this.
        sup.stop_children()
        if wrote_redis_url:
            REDIS_URL_FILE.unlink(missing_ok=True)
        for server in reversed(servers):
            try:
                server.stop()
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                _say(f"error while stopping {type(server).__name__}: {exc}")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _say("stopped" + (" (with errors)" if exit_code else ""))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
