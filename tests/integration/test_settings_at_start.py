"""Bad settings stop every process of the service at its start, with one message naming each
bad variable: the web (gunicorn), a worker and beat (Celery), and the `billing` command.
Each is started by the command `make run` and the ECS task definitions use."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from billing.config import EXIT_BAD_SETTINGS
from devstack.commands import beat_command, web_command, worker_command
from devstack.servers import script_path

ROOT = Path(__file__).resolve().parents[2]
# Not WEB_CONCURRENCY: gunicorn reads it itself, with a traceback, before its config file.
BAD = {"MAIL_USE_TLS": "ture", "MAIL_PORT": "smtp", "WEB_THREADS": "four"}
SECRET = "sk_live_never-printed"


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(lambda tmp: web_command(8000, tmp / "gunicorn.ctl"), id="web"),
        pytest.param(lambda tmp: worker_command("billing", "billing@test"), id="worker"),
        pytest.param(lambda tmp: beat_command(), id="beat"),
        pytest.param(lambda tmp: [str(script_path("billing")), "db", "current"], id="cli"),
    ],
)
def test_a_process_with_bad_settings_stops_at_start_naming_every_one(command, tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if k not in BAD},
        **BAD,
        "STRIPE_API_KEY": SECRET,
        # Unreachable: a process that went past its settings would hang or fail elsewhere.
        "DATABASE_URL": "postgresql://billing@127.0.0.1:9/billing",
        "REDIS_URL": "redis://127.0.0.1:9/0",
    }
    result = subprocess.run(
        command(tmp_path), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == EXIT_BAD_SETTINGS, result.stderr
    assert result.stderr.startswith("billing: 3 bad settings in the environment"), result.stderr
    for name, value in BAD.items():
        assert f"{name} must be" in result.stderr and repr(value) in result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stderr + result.stdout
