"""`make flower`: Flower started by one command, on the broker it is given."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import requests

from devstack.servers import free_port, stop_process_groups
from tests.conftest import ROOT
from tests.e2e.conftest import LOGS, wait_for

pytestmark = pytest.mark.e2e


def test_make_flower_serves_flower_connected_to_the_services_broker(redis_url):
    port = free_port()
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / "flower.log"
    with log_path.open("wb") as log:
        flower = subprocess.Popen(
            ["make", "--no-print-directory", "flower", f"FLOWER_PORT={port}"],
            cwd=ROOT,
            env={**os.environ, "REDIS_URL": redis_url},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:

        def healthy() -> bool:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2)
            except requests.RequestException:
                return False
            return response.status_code == 200 and response.text == "OK"

        wait_for(healthy, timeout=60)
        broker = redis_url.rsplit("@", 1)[-1].removeprefix("redis://")  # host:port/db

        def connected_to_the_broker() -> bool:
            events = [
                json.loads(line).get("event", "")
                for line in log_path.read_text().splitlines()
                if line.startswith("{")
            ]
            return any(e.startswith("Connected to redis://") and e.endswith(broker) for e in events)

        wait_for(connected_to_the_broker, timeout=30)
    finally:
        stop_process_groups([flower], timeout=20)
