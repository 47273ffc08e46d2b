"""The Dockerfile and .dockerignore, checked without a Docker engine (none runs on these
machines; hadolint lints the Dockerfile in `make lint`): what the image copies exists and
reaches the build context, what it runs is what the ECS task definitions run, and the
final stage is a slim, non-root runtime that can migrate from its own source tree."""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
TASK_DEFINITIONS = ROOT / "deploy" / "ecs" / "task-definitions"


@dataclass
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON (exec) form of CMD, ENTRYPOINT or HEALTHCHECK's CMD."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text.split(" CMD ", 1)[1]
        value = json.loads(text)
        assert isinstance(value, list), f"{self.keyword} should use the exec form"
        return value


@dataclass
class Stage:
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def run_text(self) -> str:
        return "\n".join(i.arguments for i in self.all("RUN"))

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.arguments):
                name, _, value = pair.partition("=")
                values[name] = value
        return values

    def workdir(self) -> str:
        return self.all("WORKDIR")[-1].arguments


def parse_dockerfile(text: str) -> list[Stage]:
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        arguments = re.sub(r"\s+", " ", arguments).strip()
        if keyword == "FROM":
            name = arguments.split(" AS ")[-1] if " AS " in arguments else str(len(stages))
            stages.append(Stage(name))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, arguments))
    return stages


@dataclass(frozen=True)
class Copy:
    sources: list[str]
    destination: str
    from_stage: str | None


def copies(stage: Stage) -> list[Copy]:
    result = []
    for instruction in stage.all("COPY"):
        words = shlex.split(instruction.arguments)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        result.append(Copy(paths[:-1], paths[-1], from_stage))
    return result


class DockerIgnore:
    """.dockerignore as Docker reads it: patterns relative to the context root, `*` within
    one path segment, `**` across any, `!` re-includes, the last matching line wins, and a
    pattern that matches a folder matches everything in it."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[re.Pattern[str], bool]] = []
        self.exceptions: list[str] = []  # the patterns of `!` lines
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").lstrip("/"))
            self.rules.append((re.compile(self._regex(pattern)), include))
            if include:
                self.exceptions.append(pattern)

    @staticmethod
    def _regex(pattern: str) -> str:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return out

    def excluded(self, path: str) -> bool:
        parts = PurePosixPath(path).parts
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        verdict = False
        for regex, include in self.rules:
            if any(regex.fullmatch(candidate) for candidate in candidates):
                verdict = not include
        return verdict

    def context(self, root: Path) -> set[str]:
        """Every file under root that `docker build root` would send."""
        files = set()
        for folder, dirs, names in os.walk(root):
            relative = Path(folder).relative_to(root)
            for name in list(dirs):
                path = (relative / name).as_posix()
                # Skip excluded folders no `!` line reaches into (.git, .venv, ...).
                if self.excluded(path) and not any(
                    e.startswith(path + "/") for e in self.exceptions
                ):
                    dirs.remove(name)
            for name in names:
                path = (relative / name).as_posix()
                if not self.excluded(path):
                    files.add(path)
        return files


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def dockerignore() -> DockerIgnore:
    return DockerIgnore((ROOT / ".dockerignore").read_text())


@pytest.fixture(scope="module")
def build_context(dockerignore: DockerIgnore) -> set[str]:
    return dockerignore.context(ROOT)


def task_definitions() -> dict[str, dict]:  # type: ignore[type-arg]
    return {
        path.stem: json.loads(path.read_text()) for path in sorted(TASK_DEFINITIONS.glob("*.json"))
    }


def test_every_file_the_image_copies_exists_and_is_sent_in_the_build_context(stages, build_context):
    checked = 0
    for stage in stages:
        for copy in copies(stage):
            if copy.from_stage:
                continue
            for source in copy.sources:
                path = ROOT / source
                assert path.exists(), f"COPY {source}: no such file"
                if path.is_dir():
                    sent = {f for f in build_context if f.startswith(source.rstrip("/") + "/")}
                    # Code, templates, fonts: all but the bytecode local runs leave.
                    needed = {
                        p.relative_to(ROOT).as_posix()
                        for p in path.rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
                    }
                    assert needed <= sent, f"COPY {source}: .dockerignore drops {needed - sent}"
                else:
                    assert source in build_context, f"COPY {source}: .dockerignore drops it"
                checked += 1
    assert checked >= 10


def test_the_build_context_holds_no_secrets_local_state_or_tests(dockerignore, build_context):
    for path in (
        ".env",
        ".venv/bin/python",
        ".git/config",
        ".devstack/mail/1.eml",
        "tests/conftest.py",
        "bench/charges.py",
        "invoice.pdf",
        "billing/__pycache__/config.cpython-311.pyc",
        "deploy/ecs/values.example.json",
    ):
        assert dockerignore.excluded(path), path
    assert not any(f.startswith(("tests/", ".git/", ".venv/")) for f in build_context)


def test_the_final_stage_runs_as_an_unprivileged_user(final):
    user = final.all("USER")[-1].arguments
    assert user.split(":")[0] not in ("root", "0")
    assert "useradd --system --uid " + user.split(":")[0] in final.run_text()


def test_the_final_stage_has_weasyprint_s_libraries_and_no_build_tools_or_caches(final):
    run = final.run_text()
    [packages] = re.findall(r"apt-get install -y --no-install-recommends ([^&]+)", run)
    installed = set(packages.split())
    ensure_system_libs = (ROOT / "scripts" / "ensure-system-libs").read_text()
    wanted_by_the_project = {
        package
        for listed in re.findall(r'missing="\$missing ([^"]+)"', ensure_system_libs)
        for package in listed.split()
    }
    assert wanted_by_the_project == {"libpango-1.0-0", "libpangoft2-1.0-0", "libharfbuzz-subset0"}
    assert installed == wanted_by_the_project | {"fontconfig"}
    assert "--no-install-recommends" in run
    assert "rm -rf /var/lib/apt/lists/*" in run
    for tool in ("gcc", "build-essential", "-dev ", "make ", "git "):
        assert tool not in run
    assert not re.search(r"pip install(?!.*--no-cache-dir)", run)
    assert [c.from_stage for c in copies(final) if c.from_stage] == ["build"]


def test_the_build_stage_installs_wheels_only_and_no_cache(stages):
    build = stages[0]
    assert build.name == "build"
    run = build.run_text()
    for install in re.findall(r"pip install[^&]*", run):
        assert "--no-cache-dir" in install
    assert "--only-binary=:all: -c constraints.txt" in run


def test_migrations_run_from_the_source_tree_the_image_keeps_at_its_workdir(stages, final):
    """billing/cli finds alembic.ini and migrations/ two levels above the package, and
    gunicorn reads gunicorn.conf.py from the working directory: the image keeps them all
    in /app, where the editable install (made at the same path) points the package."""
    from billing.cli import PROJECT_ROOT

    assert (PROJECT_ROOT / "alembic.ini").is_file() and PROJECT_ROOT == ROOT
    workdir = final.workdir()
    build_workdir = stages[0].workdir()
    assert workdir == build_workdir == "/app"
    assert "pip install --no-cache-dir --no-deps -e ." in stages[0].run_text()
    copied = {}  # source in the context -> its path in the image
    for copy in copies(final):
        destination = os.path.join(workdir, copy.destination)
        for source in copy.sources:
            if copy.destination.endswith("/"):
                copied[source] = os.path.normpath(os.path.join(destination, Path(source).name))
            else:
                assert len(copy.sources) == 1
                copied[source] = os.path.normpath(destination)
    for name in ("alembic.ini", "gunicorn.conf.py", "billing", "workers"):
        assert copied[name] == f"/app/{name}", copied
    assert copied["migrations"] == "/app/migrations"
    # The package two levels below its root, as billing/cli's PROJECT_ROOT assumes.
    assert Path("/app/billing/cli/__init__.py").parents[2] == Path(workdir)


def test_the_default_command_is_the_web_task_definition_s_and_nothing_wraps_commands(final):
    assert not final.all("ENTRYPOINT"), "an ENTRYPOINT would prefix every task's command"
    web = task_definitions()["web"]["containerDefinitions"][0]
    assert final.all("CMD")[-1].exec_form() == web["command"]
    assert final.env()["BILLING_ROLE"] == "web"
    assert final.env()["PORT"] == "8000"
    assert web["portMappings"][0]["containerPort"] == 8000
    assert "EXPOSE 8000" in [f"EXPOSE {i.arguments}" for i in final.all("EXPOSE")]


def test_every_task_definition_runs_a_command_the_image_installs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dependencies = {re.split(r"[\[=<>]", d)[0] for d in project["dependencies"]}
    provided = {"billing": "billing" in project["scripts"]}
    provided["gunicorn"] = "gunicorn" in dependencies
    provided["celery"] = "celery" in dependencies
    for name, definition in task_definitions().items():
        for container in definition["containerDefinitions"]:
            assert "entryPoint" not in container, name
            assert provided.get(container["command"][0]), (name, container["command"])


def test_the_health_check_is_the_same_script_in_the_image_and_in_every_task_definition(final):
    healthcheck = final.all("HEALTHCHECK")[-1]
    assert healthcheck.exec_form() == ["billing-healthcheck"]
    assert Copy(["deploy/healthcheck.py"], "/usr/local/bin/billing-healthcheck", None) in copies(
        final
    )
    assert "chmod 0755 /usr/local/bin/billing-healthcheck" in final.run_text()
    for name, definition in task_definitions().items():
        for container in definition["containerDefinitions"]:
            check = container.get("healthCheck")
            if name == "migrate":
                assert check is None  # a one-off task: its exit code is its result
            else:
                assert check["command"] == ["CMD", "billing-healthcheck"], name


def test_the_image_prepares_the_writable_paths_every_role_uses(final):
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("healthcheck", ROOT / "deploy" / "healthcheck.py")
    assert spec and spec.loader
    healthcheck = module_from_spec(spec)
    spec.loader.exec_module(healthcheck)
    env = final.env()
    assert env["HEARTBEAT_FILE"] == healthcheck.DEFAULT_HEARTBEAT_FILE
    assert env["HEARTBEAT_FILE"].startswith("/tmp/")
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/prometheus"
    assert "install -d -o billing -g billing -m 0700 /tmp/prometheus" in final.run_text()
    assert "--create-home --home-dir /home/billing" in final.run_text()  # gunicorn.ctl, fonts
    assert env["PATH"].startswith("/opt/venv/bin:")
