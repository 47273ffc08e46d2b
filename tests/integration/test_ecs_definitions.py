"""deploy/ecs/, rendered with the example values: every file is a valid request of the AWS
API it is meant for (botocore's own service models, enums included), the whole set
registers with moto in the deploy order, and the deployment rules hold: exactly one beat,
every queue served by exactly one worker service scaled on its own depth, no secret in
plain environment, awslogs everywhere, the README's commands."""

from __future__ import annotations

import ast
import json
import re
import shlex
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.model import ListShape, MapShape, Shape, StructureShape
from botocore.validate import ParamValidator
from moto import mock_aws

from billing.adapters.cloudwatch import OLDEST_MESSAGE_AGE, QUEUE_DEPTH, QUEUE_DIMENSION
from billing.config import PRODUCTION_REQUIRED, ConfigError, Settings
from billing.platform.jobs import QUEUES

ROOT = Path(__file__).resolve().parents[2]
ECS = ROOT / "deploy" / "ecs"
REGION = "eu-west-1"
SECRET_NAMES = {
    "DATABASE_URL",
    "REDIS_URL",
    "STRIPE_API_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "MAIL_USERNAME",
    "MAIL_PASSWORD",
    "METRICS_TOKEN",
    "HOSTED_LINK_KEYS",
}
# Each role holds only the secrets it uses: the PDF worker, which renders customer input,
# and the webhooks worker, which connects to customers' URLs, never hold the Stripe key;
# beat only sends messages.
SECRETS_BY_ROLE = {
    "web": {
        "DATABASE_URL",
        "REDIS_URL",
        "STRIPE_API_KEY",
        "STRIPE_WEBHOOK_SECRET",
        "METRICS_TOKEN",
        "HOSTED_LINK_KEYS",
    },
    # Hosted invoice links are signed where invoices are shown: the API, the events the
    # billing worker records, and the emails.
    "worker-billing": {"DATABASE_URL", "REDIS_URL", "STRIPE_API_KEY", "HOSTED_LINK_KEYS"},
    "worker-pdf": {"DATABASE_URL", "REDIS_URL"},
    "worker-mail": {
        "DATABASE_URL",
        "REDIS_URL",
        "MAIL_USERNAME",
        "MAIL_PASSWORD",
        "HOSTED_LINK_KEYS",
    },
    "worker-webhooks": {"DATABASE_URL", "REDIS_URL"},
    "beat": {"REDIS_URL"},
    "migrate": {"DATABASE_URL"},
}
# A secret whose shape the settings check, in that shape.
FAKE_SECRETS = {"HOSTED_LINK_KEYS": "k1:" + "x" * 32}
# The long-running roles, in the deploy order: web, every queue's worker, beat last.
ROLES_WITH_A_SERVICE = ("web", *(f"worker-{queue}" for queue in QUEUES), "beat")
FARGATE_MAX_STOP_TIMEOUT = 120
# Worker options a task definition may add to the README's command: sizing only.
SIZING_OPTIONS = {"--concurrency", "--max-tasks-per-child", "--max-memory-per-child"}


def _load_render() -> Any:
    spec = spec_from_file_location("ecs_render", ECS / "render.py")
    assert spec and spec.loader
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_render()


def example_values(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = render.load_values(ECS / "values.example.json")
    values.update(overrides)
    return values


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    return render.render(example_values())  # type: ignore[no-any-return]


def documents(rendered: dict[str, Any], folder: str) -> dict[str, Any]:
    return {
        Path(where).stem: document
        for where, document in rendered.items()
        if where.startswith(folder + "/")
    }


def container(task_definition: dict[str, Any]) -> dict[str, Any]:
    [only] = task_definition["containerDefinitions"]
    return only  # type: ignore[no-any-return]


def environment(task_definition: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(task_definition)["environment"]}


# --- the APIs' own request shapes ---------------------------------------------------------

_session = botocore.session.get_session()


def _enum_errors(value: Any, shape: Shape, path: str) -> list[str]:
    """botocore's validator checks names, types, required members and ranges; enums too."""
    if isinstance(shape, StructureShape) and isinstance(value, dict):
        return [
            error
            for name, member in value.items()
            if name in shape.members
            for error in _enum_errors(member, shape.members[name], f"{path}.{name}")
        ]
    if isinstance(shape, ListShape) and isinstance(value, list):
        return [
            error
            for index, item in enumerate(value)
            for error in _enum_errors(item, shape.member, f"{path}[{index}]")
        ]
    if isinstance(shape, MapShape) and isinstance(value, dict):
        return [
            error
            for key, item in value.items()
            for error in _enum_errors(item, shape.value, f"{path}.{key}")
        ]
    enum = getattr(shape, "enum", None)
    if enum and value not in enum:
        return [f"{path}: {value!r} is not one of {enum}"]
    return []


def assert_valid_request(service: str, operation: str, params: dict[str, Any]) -> None:
    shape = _session.get_service_model(service).operation_model(operation).input_shape
    report = ParamValidator().validate(params, shape)
    assert not report.has_errors(), f"{operation}: {report.generate_report()}"
    errors = _enum_errors(params, shape, operation)
    assert not errors, errors


REQUESTS = {
    "task-definitions": [("ecs", "RegisterTaskDefinition", None)],
    "services": [("ecs", "CreateService", None)],
    "run": [("ecs", "RunTask", None)],
    "scaling": [
        ("application-autoscaling", "RegisterScalableTarget", "scalableTarget"),
        ("application-autoscaling", "PutScalingPolicy", "scalingPolicies"),
    ],
}


def test_every_file_is_a_valid_request_of_the_api_it_is_for(rendered):
    checked = set()
    for where, document in rendered.items():
        folder, name = where.split("/")
        if folder == "load-balancer":
            operation = {
                "target-group.json": "CreateTargetGroup",
                "target-group-attributes.json": "ModifyTargetGroupAttributes",
            }[name]
            assert_valid_request("elbv2", operation, document)
        else:
            for service, operation, key in REQUESTS[folder]:
                bodies = document if key is None else document[key]
                for body in bodies if isinstance(bodies, list) else [bodies]:
                    assert_valid_request(service, operation, body)
        assert "${" not in json.dumps(document), f"{where}: a placeholder is left"
        checked.add(where)
    assert len(checked) == 20


def test_the_validation_catches_a_misspelt_member_and_a_wrong_enum(rendered):
    web = json.loads(json.dumps(documents(rendered, "task-definitions")["web"]))
    container(web)["stopTimeOut"] = 30
    with pytest.raises(AssertionError, match="Unknown parameter"):
        assert_valid_request("ecs", "RegisterTaskDefinition", web)
    del container(web)["stopTimeOut"]
    container(web)["logConfiguration"]["logDriver"] = "cloudwatch"
    with pytest.raises(AssertionError, match="'cloudwatch' is not one of"):
        assert_valid_request("ecs", "RegisterTaskDefinition", web)


# --- registered with moto, in the deploy order ---------------------------------------------


@pytest.fixture
def aws(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield lambda service: boto3.client(service, region_name=REGION)


def test_the_definitions_register_with_moto_in_the_deploy_order(aws):
    ec2, elbv2, ecs = aws("ec2"), aws("elbv2"), aws("ecs")
    autoscaling, secrets = aws("application-autoscaling"), aws("secretsmanager")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{n}.0/24")["Subnet"]["SubnetId"]
        for n in (1, 2)
    ]
    group = ec2.create_security_group(GroupName="billing", Description="billing", VpcId=vpc)
    secret_arns = {
        f"{name}_ARN": secrets.create_secret(Name=f"billing/{name}", SecretString="x")["ARN"]
        for name in SECRET_NAMES
    }
    values = example_values(
        VPC_ID=vpc, SUBNET_IDS=subnets, SECURITY_GROUP_IDS=[group["GroupId"]], **secret_arns
    )
    rendered = render.render(values)
    tasks = documents(rendered, "task-definitions")

    # Once per environment: the target group web registers into, and the cluster.
    target_group = elbv2.create_target_group(**rendered["load-balancer/target-group.json"])
    arn = target_group["TargetGroups"][0]["TargetGroupArn"]
    rendered = render.render({**values, "TARGET_GROUP_ARN": arn})
    elbv2.modify_target_group_attributes(**rendered["load-balancer/target-group-attributes.json"])
    ecs.create_cluster(clusterName=values["CLUSTER"])

    # Every release: register all, migrate, then web, the workers, beat last.
    for task_definition in tasks.values():
        ecs.register_task_definition(**task_definition)
    # The migration's RunTask is checked against botocore's shape above, not run here:
    # moto sums container-level memory, which Fargate task definitions need not give.
    for role in ROLES_WITH_A_SERVICE:
        ecs.create_service(**rendered[f"services/{role}.json"])
    for queue in QUEUES:
        scaling = rendered[f"scaling/worker-{queue}.json"]
        autoscaling.register_scalable_target(**scaling["scalableTarget"])
        for policy in scaling["scalingPolicies"]:
            autoscaling.put_scaling_policy(**policy)

    # And they come back as written.
    web = ecs.describe_task_definition(taskDefinition="billing-web")["taskDefinition"]
    assert container(web)["command"] == container(tasks["web"])["command"]
    assert {s["valueFrom"] for s in container(web)["secrets"]} <= set(secret_arns.values())
    assert web["requiresCompatibilities"] == ["FARGATE"] and web["networkMode"] == "awsvpc"
    migrate = ecs.describe_task_definition(taskDefinition="billing-migrate")["taskDefinition"]
    assert container(migrate)["command"] == ["billing", "db", "upgrade"]
    assert rendered["run/migrate.json"]["taskDefinition"] == migrate["family"]
    roles = ROLES_WITH_A_SERVICE
    services = {
        s["serviceName"]: s
        for s in ecs.describe_services(
            cluster=values["CLUSTER"], services=[f"billing-{role}" for role in roles]
        )["services"]
    }
    assert len(services) == len(roles)
    assert services["billing-web"]["loadBalancers"][0]["targetGroupArn"] == arn
    # (moto keeps no deploymentConfiguration: beat's is checked on the file below.)
    assert services["billing-beat"]["desiredCount"] == 1
    assert services["billing-beat"]["taskDefinition"].endswith("/billing-beat:1")
    policies = autoscaling.describe_scaling_policies(ServiceNamespace="ecs")["ScalingPolicies"]
    scaled_queues = sorted(
        metric["MetricStat"]["Metric"]["Dimensions"][0]["Value"]
        for policy in policies
        for metric in policy["TargetTrackingScalingPolicyConfiguration"][
            "CustomizedMetricSpecification"
        ]["Metrics"]
        if metric.get("MetricStat", {}).get("Metric", {}).get("MetricName") == QUEUE_DEPTH
    )
    assert scaled_queues == sorted(QUEUES)
    # Target tracking made its own alarms on the metric math.
    assert len(aws("cloudwatch").describe_alarms()["MetricAlarms"]) == 2 * len(QUEUES)


# --- the deployment rules -------------------------------------------------------------------


def test_exactly_one_beat_runs_even_during_a_deploy(rendered):
    tasks = documents(rendered, "task-definitions")
    beats = [name for name, task in tasks.items() if "beat" in container(task)["command"]]
    assert beats == ["beat"]
    service = rendered["services/beat.json"]
    assert service["desiredCount"] == 1
    # The old beat stops before the new one starts: never two at once.
    assert service["deploymentConfiguration"]["maximumPercent"] == 100
    assert service["deploymentConfiguration"]["minimumHealthyPercent"] == 0
    assert "scaling/beat.json" not in rendered
    assert not any(
        "billing-beat" in policy["ResourceId"]
        for scaling in documents(rendered, "scaling").values()
        for policy in scaling["scalingPolicies"]
    )


def _queue_of(command: list[str]) -> str:
    return command[command.index("-Q") + 1]


def test_every_queue_has_exactly_one_worker_service_scaled_on_its_own_depth(rendered):
    tasks = documents(rendered, "task-definitions")
    workers = {
        name: container(task)["command"]
        for name, task in tasks.items()
        if container(task)["command"][:4] == ["celery", "-A", "workers", "worker"]
    }
    served = [_queue_of(command) for command in workers.values()]
    assert sorted(served) == sorted(QUEUES) and len(set(served)) == len(served)
    namespace = environment(tasks["worker-billing"])["CLOUDWATCH_NAMESPACE"]
    for name, command in workers.items():
        queue = _queue_of(command)
        assert name == f"worker-{queue}"
        service = rendered[f"services/{name}.json"]
        assert service["taskDefinition"] == tasks[name]["family"]
        scaling = rendered[f"scaling/{name}.json"]
        resource = f"service/{service['cluster']}/{service['serviceName']}"
        assert scaling["scalableTarget"]["ResourceId"] == resource
        assert scaling["scalableTarget"]["MinCapacity"] == service["desiredCount"] >= 1
        [policy] = scaling["scalingPolicies"]
        assert policy["ResourceId"] == resource
        metrics = policy["TargetTrackingScalingPolicyConfiguration"][
            "CustomizedMetricSpecification"
        ]["Metrics"]
        [depth] = [m for m in metrics if m["Id"] == "depth"]
        assert depth["MetricStat"]["Metric"] == {
            "Namespace": namespace,
            "MetricName": QUEUE_DEPTH,
            "Dimensions": [{"Name": QUEUE_DIMENSION, "Value": queue}],
        }
        [tasks_running] = [m for m in metrics if m["Id"] == "tasks"]
        assert {"Name": "ServiceName", "Value": service["serviceName"]} in tasks_running[
            "MetricStat"
        ]["Metric"]["Dimensions"]
        [returned] = [m for m in metrics if m["ReturnData"]]
        assert returned["Expression"] == "depth / tasks"  # backlog per task
    assert namespace == "BillingService" and OLDEST_MESSAGE_AGE == "OldestMessageAgeSeconds"


def test_no_secret_is_in_plain_environment_and_each_role_holds_only_its_own(rendered):
    raw = {path.stem: json.loads(path.read_text()) for path in (ECS / "task-definitions").glob("*")}
    credential = re.compile(r"://[^/@\s]+:[^/@\s]+@|sk_(live|test)_|whsec_|rk_live_", re.I)
    for name, task in documents(rendered, "task-definitions").items():
        env = environment(task)
        assert not SECRET_NAMES & set(env), name
        assert not [value for value in env.values() if credential.search(value)], name
        secrets = {s["name"]: s["valueFrom"] for s in container(task)["secrets"]}
        assert set(secrets) == SECRETS_BY_ROLE[name], name
        for secret in secrets.values():
            assert re.fullmatch(r"arn:aws:(secretsmanager|ssm):[\w-]+:\d{12}:\S+", secret)
        # In the repository, only placeholders: the ARNs come with the environment's values.
        for secret in container(raw[name])["secrets"]:
            assert secret["valueFrom"] == "${" + secret["name"] + "_ARN}", secret


def test_every_container_logs_to_awslogs_under_its_own_stream_prefix(rendered):
    for name, task in documents(rendered, "task-definitions").items():
        logging = container(task)["logConfiguration"]
        assert logging["logDriver"] == "awslogs", name
        assert logging["options"]["awslogs-stream-prefix"] == container(task)["name"] == name
        assert logging["options"]["awslogs-group"] == "/ecs/billing"
        assert logging["options"]["awslogs-region"] == REGION


def _readme_commands() -> dict[str, list[str]]:
    """The README's "Processes" table, by role."""
    table = (ROOT / "README.md").read_text().split("## Processes", 1)[1].split("##", 1)[0]
    rows = {
        row.split("|")[1].strip(): re.findall(r"`([^`]+)`", row.split("|")[2])
        for row in table.splitlines()
        if row.startswith("| ") and not row.startswith("| process") and "`" in row
    }
    commands = {
        "migrate": rows["migrate (before each release)"][0],
        "web": rows["web"][0],
        "beat": rows["beat, exactly one"][0],
    }
    billing, pdf, *likewise = rows["worker, one service per queue"]
    commands["worker-billing"] = billing
    commands["worker-pdf"] = pdf
    for queue in likewise:
        commands[f"worker-{queue}"] = pdf.replace("-Q pdf", f"-Q {queue}")
    return {role: shlex.split(command) for role, command in commands.items()}


def test_each_task_runs_the_readme_s_command_plus_sizing_options_only(rendered):
    readme = _readme_commands()
    tasks = documents(rendered, "task-definitions")
    assert set(readme) == set(tasks)
    for role, task in tasks.items():
        command = container(task)["command"]
        assert command[: len(readme[role])] == readme[role], role
        extra = command[len(readme[role]) :]
        assert {option for option in extra[::2]} <= SIZING_OPTIONS, (role, extra)
        assert all(value.isdigit() for value in extra[1::2]), (role, extra)


def _gunicorn_constants() -> dict[str, Any]:
    """gunicorn.conf.py's plain settings, read without running it: running it sets up the
    web's metrics directory, which a process that already made its metrics refuses."""
    tree = ast.parse((ROOT / "gunicorn.conf.py").read_text())
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def test_stop_timeouts_cover_each_role_s_longest_task_within_fargate_s_cap(rendered):
    tasks = documents(rendered, "task-definitions")
    stop = {name: container(task)["stopTimeout"] for name, task in tasks.items()}
    assert max(stop.values()) <= FARGATE_MAX_STOP_TIMEOUT
    shared = environment(tasks["web"])
    gunicorn = _gunicorn_constants()
    # gunicorn finishes its requests within graceful_timeout after SIGTERM.
    assert stop["web"] > gunicorn["graceful_timeout"]
    # The load balancer drains a target for longer than any request may run.
    attributes = rendered["load-balancer/target-group-attributes.json"]["Attributes"]
    delay = {a["Key"]: int(a["Value"]) for a in attributes}["deregistration_delay.timeout_seconds"]
    assert delay > gunicorn["timeout"]
    # A charge makes at most two Stripe calls (look up by ledger key, then create).
    assert stop["worker-billing"] >= 2 * int(shared["STRIPE_TIMEOUT_SECONDS"]) + 30
    # A send may meet a dead kept-alive connection, reconnect and send: three timeouts.
    assert stop["worker-mail"] >= 3 * int(shared["MAIL_TIMEOUT"])
    # A delivery connects, shakes hands and posts, each within its timeout, and a try cut
    # short is sent again: a stop should rarely cut one.
    webhooks = Settings.from_env(
        {**environment(tasks["worker-webhooks"]), "DATABASE_URL": "x", "REDIS_URL": "x"}
    )
    one_try = 2 * webhooks.webhook_connect_timeout_seconds + webhooks.webhook_timeout_seconds
    assert stop["worker-webhooks"] >= 2 * one_try
    assert stop["beat"] < stop["worker-pdf"] <= stop["worker-billing"]


def test_workers_and_beat_serve_prometheus_metrics_on_9100(rendered):
    for name, task in documents(rendered, "task-definitions").items():
        ports = [p["containerPort"] for p in container(task).get("portMappings", [])]
        if name.startswith("worker-") or name == "beat":
            assert environment(task)["METRICS_PORT"] == "9100"
            assert ports == [9100], name
        else:
            assert "METRICS_PORT" not in environment(task)


def test_every_role_gets_the_same_shared_configuration_and_the_service_accepts_it(rendered):
    shared = {
        item["name"]: item["value"]
        for item in render.substitute(
            json.loads((ECS / "environment.json").read_text()), example_values(), "", []
        )
    }
    configuration = (ROOT / "docs" / "operations.md").read_text()
    for name, task in documents(rendered, "task-definitions").items():
        env = environment(task)
        assert {k: env[k] for k in shared} == shared, name
        assert env["BILLING_ROLE"] == ("worker" if name.startswith("worker-") else name)
        for variable in env:
            # Every setting is documented: the service's in docs/operations.md
            # ("Configuration"), the image's own (BILLING_ROLE, METRICS_PORT) in
            # deploy/ecs/README.md.
            assert f"`{variable}`" in configuration or variable in ("BILLING_ROLE", "METRICS_PORT")
        fake_secrets = {secret: FAKE_SECRETS.get(secret, "x") for secret in SECRETS_BY_ROLE[name]}
        settings = Settings.from_env({**env, **fake_secrets})
        assert settings.document_storage == "s3" and settings.s3_bucket
        assert settings.cloudwatch_namespace == "BillingService"
        assert settings.stripe_api_base is None  # real Stripe in production
        assert settings.production


def test_every_role_runs_in_production_and_stops_without_a_secret_it_needs(rendered):
    for name, task in documents(rendered, "task-definitions").items():
        env = {**environment(task), **{secret: "x" for secret in SECRETS_BY_ROLE[name]}}
        assert env["BILLING_ENV"] == "production", name
        for needed in set(PRODUCTION_REQUIRED[env["BILLING_ROLE"]]):
            assert needed in SECRETS_BY_ROLE[name], (name, needed)
            without = {k: v for k, v in env.items() if k != needed}
            with pytest.raises(ConfigError, match=needed):
                Settings.from_env(without)


def test_the_public_web_requires_a_metrics_token_from_a_secret(rendered):
    web = container(documents(rendered, "task-definitions")["web"])
    assert "METRICS_TOKEN" in {secret["name"] for secret in web["secrets"]}
    assert "METRICS_TOKEN" in PRODUCTION_REQUIRED["web"]


def test_the_deploy_readme_gives_the_order_migrate_web_workers_beat():
    readme = (ECS / "README.md").read_text()
    steps = re.findall(r"^\d+\. \*\*(\w+)", readme, re.M)
    assert steps == ["migrate", "web", "workers", "beat"]
