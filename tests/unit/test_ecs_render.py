"""deploy/ecs/render.py: placeholders filled from one environment's values, or a clear
error naming each one left without a value."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ECS = ROOT / "deploy" / "ecs"
RENDER = ECS / "render.py"
EXAMPLE = ECS / "values.example.json"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RENDER), *args], capture_output=True, text=True, timeout=60
    )


def test_the_example_values_render_every_definition_with_no_placeholder_left(tmp_path):
    result = run("--values", str(EXAMPLE), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    sources = {
        p.relative_to(ECS).as_posix()
        for folder in ("task-definitions", "services", "scaling", "load-balancer", "run")
        for p in (ECS / folder).glob("*.json")
    }
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json")}
    assert written == sources
    assert set(result.stdout.split()) == {str(tmp_path / w) for w in written}
    for path in tmp_path.rglob("*.json"):
        assert "${" not in path.read_text(), path
    service = json.loads((tmp_path / "services" / "web.json").read_text())
    subnets = service["networkConfiguration"]["awsvpcConfiguration"]["subnets"]
    assert subnets == json.loads(EXAMPLE.read_text())["SUBNET_IDS"]  # a list fills an array


def test_set_overrides_the_values_file(tmp_path):
    image = "registry.example/billing@sha256:" + "a" * 64
    result = run("--values", str(EXAMPLE), "--set", f"IMAGE={image}", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    beat = json.loads((tmp_path / "task-definitions" / "beat.json").read_text())
    assert beat["containerDefinitions"][0]["image"] == image


def test_every_missing_value_is_named_with_its_file_and_nothing_is_written(tmp_path):
    values = json.loads(EXAMPLE.read_text())
    del values["IMAGE"], values["MAIL_PASSWORD_ARN"]
    partial = tmp_path / "values.json"
    partial.write_text(json.dumps(values))
    out = tmp_path / "out"
    result = run("--values", str(partial), "--out", str(out))
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert "error: task-definitions/web.json: no value for IMAGE" in errors
    assert "error: task-definitions/worker-mail.json: no value for MAIL_PASSWORD_ARN" in errors
    assert len(errors) == len(set(errors)) == 8  # IMAGE in seven files, the password in one
    assert not out.exists()


def test_a_list_cannot_be_spliced_into_a_longer_string(tmp_path):
    values = json.loads(EXAMPLE.read_text())
    values["CLUSTER"] = ["blue", "green"]  # scaling's ResourceId is "service/${CLUSTER}/..."
    path = tmp_path / "values.json"
    path.write_text(json.dumps(values))
    result = run("--values", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert (
        "error: scaling/worker-pdf.json: CLUSTER is a list, so it must stand alone in its string"
        in result.stderr.splitlines()
    )


def test_a_setting_in_both_the_shared_environment_and_a_task_definition_is_refused(tmp_path):
    source = tmp_path / "ecs"
    shutil.copytree(ECS, source)
    web = source / "task-definitions" / "web.json"
    definition = json.loads(web.read_text())
    definition["containerDefinitions"][0]["environment"].append(
        {"name": "LOG_LEVEL", "value": "DEBUG"}
    )
    web.write_text(json.dumps(definition))
    result = subprocess.run(
        [sys.executable, str(source / "render.py"), "--values", str(EXAMPLE), "--out", "out"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert (
        "error: task-definitions/web.json: LOG_LEVEL is set by environment.json already"
        in result.stderr
    )


def test_a_malformed_values_file_and_a_malformed_set_are_clear_errors(tmp_path):
    bad = tmp_path / "values.json"
    bad.write_text(json.dumps({"image": "x", "CLUSTER": 3}))
    result = run("--values", str(bad), "--set", "IMAGE", "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "'image' is not a NAME" in result.stderr
    assert "CLUSTER must be a string or a list of strings" in result.stderr
    assert "--set 'IMAGE': expected NAME=VALUE" in result.stderr


def test_help_documents_the_exit_codes():
    result = run("--help")
    assert result.returncode == 0
    assert "Exit codes: 0 rendered; 1 a placeholder without a value" in " ".join(
        result.stdout.split()
    )
    assert run().returncode == 2  # --out is required
