#!/usr/bin/env python3
"""Render the ECS definitions for one environment: fill in the ${NAME} placeholders.

    python deploy/ecs/render.py --values values.json [--set IMAGE=...] --out build/ecs

Every JSON file under task-definitions/, services/, scaling/, load-balancer/ and run/ is
written to the same path under --out, each a request body for the AWS CLI's
--cli-input-json (see deploy/ecs/README.md). Placeholders live in JSON strings only:
`"${NAME}"` standing alone takes the value as it is, so a list (SUBNET_IDS) fills an
array; inside a longer string the value must be a string. environment.json, the
configuration every role shares, is added to each container's environment; a name set
in both places is an error, so a role never silently differs from the others.

Values come from the --values file (a JSON object of strings or lists of strings) and
--set NAME=VALUE (strings, after the file). Standard library only.

Exit codes: 0 rendered; 1 a placeholder without a value, or an invalid values file or
definition (each problem is printed); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DOCUMENT_DIRS = ("task-definitions", "services", "scaling", "load-balancer", "run")
SHARED_ENVIRONMENT = "environment.json"
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
NAME = re.compile(r"[A-Z][A-Z0-9_]*")

Values = dict[str, str | list[str]]


class RenderError(Exception):
    def __init__(self, problems: list[str]) -> None:
        self.problems = list(dict.fromkeys(problems))  # each once, in order
        super().__init__("\n".join(self.problems))


def load_values(path: Path | None, overrides: list[str] | None = None) -> Values:
    problems: list[str] = []
    values: Values = {}
    if path is not None:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RenderError([f"{path}: {exc}"]) from exc
        if not isinstance(raw, dict):
            raise RenderError([f"{path}: must be a JSON object of NAME: value"])
        for name, value in raw.items():
            is_text_list = isinstance(value, list) and all(isinstance(v, str) for v in value)
            if not NAME.fullmatch(name):
                problems.append(f"{path}: {name!r} is not a NAME (upper case, digits, _)")
            elif not (isinstance(value, str) or is_text_list):
                problems.append(f"{path}: {name} must be a string or a list of strings")
            else:
                values[name] = value
    for item in overrides or []:
        name, sep, value = item.partition("=")
        if not sep or not NAME.fullmatch(name):
            problems.append(f"--set {item!r}: expected NAME=VALUE")
        else:
            values[name] = value
    if problems:
        raise RenderError(problems)
    return values


def placeholders(document: Any) -> set[str]:
    """Every ${NAME} a document names."""
    if isinstance(document, str):
        return set(PLACEHOLDER.findall(document))
    if isinstance(document, list):
        return set().union(*(placeholders(item) for item in document))
    if isinstance(document, dict):
        return set().union(*(placeholders(item) for item in document.values()))
    return set()


def substitute(document: Any, values: Values, where: str, problems: list[str]) -> Any:
    if isinstance(document, list):
        return [substitute(item, values, where, problems) for item in document]
    if isinstance(document, dict):
        return {key: substitute(item, values, where, problems) for key, item in document.items()}
    if not isinstance(document, str):
        return document
    alone = PLACEHOLDER.fullmatch(document)
    if alone:
        name = alone.group(1)
        if name not in values:
            problems.append(f"{where}: no value for {name}")
            return document
        return values[name]

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        value = values.get(name)
        if value is None:
            problems.append(f"{where}: no value for {name}")
            return match.group(0)
        if not isinstance(value, str):
            problems.append(f"{where}: {name} is a list, so it must stand alone in its string")
            return match.group(0)
        return value

    return PLACEHOLDER.sub(fill, document)


def _with_shared_environment(
    task_definition: dict[str, Any], shared: list[dict[str, str]], where: str
) -> list[str]:
    problems = []
    shared_names = {item["name"] for item in shared}
    for container in task_definition.get("containerDefinitions", []):
        own = container.get("environment", [])
        for item in own:
            if item["name"] in shared_names:
                problems.append(
                    f"{where}: {item['name']} is set by {SHARED_ENVIRONMENT} already; "
                    "a role-specific value belongs in one place only"
                )
        container["environment"] = sorted([*shared, *own], key=lambda item: item["name"])
    return problems


def render(values: Values, source: Path = HERE) -> dict[str, Any]:
    """Every definition, rendered, by its path relative to `source`."""
    problems: list[str] = []
    shared = substitute(
        json.loads((source / SHARED_ENVIRONMENT).read_text()), values, SHARED_ENVIRONMENT, problems
    )
    rendered: dict[str, Any] = {}
    for folder in DOCUMENT_DIRS:
        for path in sorted((source / folder).glob("*.json")):
            where = f"{folder}/{path.name}"
            try:
                document = json.loads(path.read_text())
            except ValueError as exc:
                problems.append(f"{where}: not JSON: {exc}")
                continue
            document = substitute(document, values, where, problems)
            if folder == "task-definitions":
                problems += _with_shared_environment(document, shared, where)
            rendered[where] = document
    if problems:
        raise RenderError(problems)
    return rendered


def write(rendered: dict[str, Any], out: Path) -> list[Path]:
    written = []
    for relative, document in rendered.items():
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="render.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--values", type=Path, help="JSON object of NAME: value")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    args = parser.parse_args(argv)
    try:
        rendered = render(load_values(args.values, args.overrides))
    except RenderError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    for path in write(rendered, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
