"""Step services: pure planner and task-definition tests first, then moto-backed apply, rollout,
destroy and read-count tests."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from orchestrator.errors import ManifestError, OrchestratorError
from orchestrator.model import KNOWN_AFTER_APPLY, is_unknown
from orchestrator.waiters import WaitFailed
from steps import taskdefs
from steps.services import ServicesFacts, ServicesStep, _policy_view
from tests import harness

STEP = ServicesStep()
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ACCOUNT = harness.ACCOUNT
OWNERSHIP = {"orchestrator:app": "gamepulse", "orchestrator:env": "dev", "orchestrator:step": "services"}
DIGEST = "sha256:" + "1" * 64
#: The digest of each image tag (step ecr's output `images` gives the one the manifest's tag names).
DIGESTS = {"1.4.1": DIGEST, "1.4.2": "sha256:" + "2" * 64}
SERVICES = ["gamepulse", "prometheus", "loki", "jaeger", "grafana"]


def upstream_outputs() -> dict:
    """Known values of every output the step reads, as the upstream steps would give them."""
    roles = {name: f"arn:aws:iam::{ACCOUNT}:role/gamepulse-dev-{name}" for name in SERVICES + ["otel-collector"]}
    return {
        "vpc": {"private_subnet_ids": ["subnet-b", "subnet-a"],
                "security_groups": {"app": "sg-app", "monitoring": "sg-mon", "alb": "sg-alb"}},
        "ecr": {"repositories": {"gamepulse": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/gamepulse"},
                "images": {"gamepulse": image_uri()}},
        "storage": {"buckets": {"config": "gp-config", "loki-chunks": "gp-loki"}},
        "secrets": {"arns": {name: f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:gamepulse/dev/{name}-AbCdEf"
                             for name in ("db-connection", "grafana-admin", "slack-webhook")},
                    "versions": {name: f"{name}-v1" for name in ("db-connection", "grafana-admin", "slack-webhook")}},
        "iam": {"execution_role_arn": f"arn:aws:iam::{ACCOUNT}:role/gamepulse-dev-execution",
                "task_role_arns": roles},
        "efs": {"file_system_id": "fs-1", "access_points": {"prometheus": "fsap-prom", "grafana": "fsap-graf"}},
        "ecs": {"cluster_name": "gamepulse-dev", "cluster_arn": f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/gamepulse-dev",
                "log_groups": {name: f"/ecs/gamepulse-dev/{name}" for name in
                                                                 SERVICES + ["otel-collector"]},
                "namespace_id": "ns-1", "namespace_name": "gamepulse-dev.local"},
        "alb": {"target_groups": {"gamepulse": "arn:tg/gamepulse", "grafana": "arn:tg/grafana"},
                "dns_name": "gamepulse-dev-123.us-east-1.elb.amazonaws.com",
                "arn_suffix": "app/gamepulse-dev/1", "target_group_arn_suffixes": {"gamepulse": "targetgroup/gp/2"}},
    }


def desired_for(manifest, outputs=None):
    return STEP.desired(manifest, harness.inputs(STEP, outputs or upstream_outputs()))


def image_uri(digest: str = DIGEST) -> str:
    return f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/gamepulse@{digest}"


def with_image(outputs: dict, tag: str) -> dict:
    """Upstream `outputs` with step ecr's image resolved for `tag` (what a new tag gives)."""
    outputs = copy.deepcopy(outputs)
    outputs["ecr"]["images"]["gamepulse"] = image_uri(DIGESTS[tag])
    return outputs


def converged(desired, digest: str = DIGEST) -> tuple[ServicesFacts, dict]:
    """Facts and records of a platform that runs `desired` with the app image of `digest`: ECS
    describes each definition in service as registered (the app's image written out here), and
    the records keep what the last apply recorded of the services. No hash is computed here: the
    plan has to find, by itself, that what runs is what is wanted."""
    facts = ServicesFacts(cluster=desired.cluster, namespace_id=desired.namespace_id)
    recorded = {}
    for service in desired.services:
        arn = f"arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/gamepulse-dev-{service.name}:1"
        described = copy.deepcopy(service.definition)
        for each in described["containerDefinitions"]:
            if each["name"] == "gamepulse":
                each["image"] = image_uri(digest)
        facts.definitions[service.name] = described
        facts.discovery[service.name] = {"Id": f"srv-{service.name}", "Arn": f"arn:sd:{service.name}"}
        facts.services[service.name] = {
            "serviceName": service.name, "serviceArn": f"arn:svc/{service.name}", "status": "ACTIVE",
            "taskDefinition": arn, "desiredCount": service.desired_count,
            "networkConfiguration": {"awsvpcConfiguration": service.network},
            "loadBalancers": list(service.load_balancers),
            "serviceRegistries": [{"registryArn": facts.discovery[service.name]["Arn"]}],
            "propagateTags": "SERVICE", "tags": [{"key": k, "value": v} for k, v in desired.tags.items()]}
        facts.owned.add(service.name)
        recorded[f"task_definition/{service.name}"] = {"arn": arn}
        # Written out, not taken from the step's own field builder: what the last apply recorded.
        recorded[f"service/{service.name}"] = {"deployment": service.deployment, "grace_period": service.grace_period,
                                              "capacity_provider": service.capacity_provider, "managed_tags": True,
                                              "secret_versions": service.secret_versions}
        if service.bundle:
            recorded[f"bundle/{service.name}"] = {"hash": service.bundle.hash}
        if service.scaling:
            scaling = service.scaling
            facts.targets[scaling.resource_id] = {"ResourceId": scaling.resource_id, "MinCapacity": scaling.min,
                                                  "MaxCapacity": scaling.max}
            facts.policies[scaling.resource_id] = {
                name: {"PolicyName": name, "TargetTrackingScalingPolicyConfiguration": config}
                for name, config in scaling.policies.items()}
    return facts, recorded


def keys(changes) -> list[str]:
    return [f"{c.action} {c.key}" for c in changes]


def changed(manifest, **section_updates):
    """The manifest with deep updates, e.g. services={"tasks": {"loki": {"cpu": 1024}}}."""
    data = manifest.model_dump()

    def merge(base, update):
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value
    merge(data, section_updates)
    return type(manifest).model_validate(data)


# --- desired: the task definitions ---------------------------------------------------------------


def container(definition: dict, name: str) -> dict:
    return next(c for c in definition["containerDefinitions"] if c["name"] == name)


def test_gamepulse_runs_the_app_after_the_collector_sidecar_with_its_bundle_copied_first(manifest):
    gamepulse = desired_for(manifest).services[0]
    task = gamepulse.definition
    assert (task["networkMode"], task["requiresCompatibilities"], task["cpu"], task["memory"]) == \
        ("awsvpc", ["FARGATE"], "512", "1024")
    assert [c["name"] for c in task["containerDefinitions"]] == ["config-init", "otel-collector", "gamepulse"]
    init, collector, app = task["containerDefinitions"]
    assert init["essential"] is False and init["image"] == "public.ecr.aws/aws-cli/aws-cli:2.27.50"
    assert init["command"][-2] == f"s3://gp-config/gamepulse/{gamepulse.bundle.hash}/"
    assert collector["dependsOn"] == [{"containerName": "config-init", "condition": "SUCCESS"}]
    assert collector["healthCheck"]["command"] == ["CMD", "/healthcheck"]
    assert app["dependsOn"] == [{"containerName": "otel-collector", "condition": "HEALTHY"}]
    assert app["secrets"] == [{"name": "ConnectionStrings__GamePulse",
                               "valueFrom": upstream_outputs()["secrets"]["arns"]["db-connection"]}]
    assert {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://localhost:4317"} in app["environment"]
    assert app["logConfiguration"]["options"]["awslogs-group"] == "/ecs/gamepulse-dev/gamepulse"
    assert app["image"] == f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/gamepulse@sha256:{'1' * 64}"  # step ecr's
    assert (gamepulse.image.repository, gamepulse.image.tag, gamepulse.image.uri) == \
        ("gamepulse", "1.4.1", f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/gamepulse")
    assert gamepulse.load_balancers == ({"targetGroupArn": "arn:tg/gamepulse", "containerName": "gamepulse",
                                         "containerPort": 8080},)
    assert gamepulse.network == {"subnets": ["subnet-a", "subnet-b"], "securityGroups": ["sg-app"],
                                 "assignPublicIp": "DISABLED"}
    assert gamepulse.deployment["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
    assert (gamepulse.scaling.min, gamepulse.scaling.max) == (2, 10)
    assert list(gamepulse.scaling.policies) == ["gamepulse-cpu"]


def test_prometheus_and_grafana_keep_their_data_on_efs_and_stop_before_they_start(manifest):
    services = {s.name: s for s in desired_for(manifest).services}
    for name, access_point, data_dir in (("prometheus", "fsap-prom", "/prometheus"),
                                         ("grafana", "fsap-graf", "/var/lib/grafana")):
        service = services[name]
        volume = next(v for v in service.definition["volumes"] if v["name"] == "data")
        assert volume["efsVolumeConfiguration"] == {
            "fileSystemId": "fs-1", "transitEncryption": "ENABLED",
            "authorizationConfig": {"accessPointId": access_point, "iam": "ENABLED"}}
        assert {"sourceVolume": "data", "containerPath": data_dir} in container(service.definition, name)["mountPoints"]
        assert (service.deployment["maximumPercent"], service.deployment["minimumHealthyPercent"]) == (100, 0)
        assert service.capacity_provider == "FARGATE_SPOT"
    assert container(services["loki"].definition, "loki")["stopTimeout"] == 120
    grafana = container(services["grafana"].definition, "grafana")
    assert "GF_SECURITY_ADMIN_PASSWORD" in [secret["name"] for secret in grafana["secrets"]]


def test_prod_runs_the_monitoring_services_on_fargate_not_spot(tmp_path):
    from orchestrator.manifest import load_manifest
    from tests.conftest import MANIFESTS
    prod = desired_for(load_manifest(MANIFESTS, "prod"))
    assert {s.name: s.capacity_provider for s in prod.services}["prometheus"] == "FARGATE"
    assert (prod.services[0].scaling.min, prod.services[0].scaling.max) == (3, 20)


def test_a_size_fargate_does_not_run_is_a_manifest_error_with_file_and_line(tmp_path):
    from orchestrator.manifest import load_manifest
    from tests.conftest import MANIFESTS
    for file in MANIFESTS.glob("*.yaml"):
        (tmp_path / file.name).write_text(file.read_text())
    overlay = (tmp_path / "dev.yaml").read_text()
    (tmp_path / "dev.yaml").write_text(overlay + "services:\n  tasks:\n    loki: {cpu: 256, memory: 4096}\n")
    with pytest.raises(ManifestError) as error:
        load_manifest(tmp_path, "dev")
    line = len(overlay.splitlines()) + 3
    assert f"{tmp_path / 'dev.yaml'}:{line}: services.tasks.loki.memory: Fargate does not run 256 CPU units with " \
           "4096 MiB" in str(error.value)


@pytest.mark.parametrize("entry, error", [
    ("tempo: {bundle: jaeger, cpu: 256, memory: 512, security_group: monitoring}",
     "services.tasks.tempo: has no task role: add tempo to iam.task_roles"),
    ("zipkin: {bundle: zipkin, cpu: 256, memory: 512, security_group: monitoring}",
     "services.tasks.zipkin.bundle: must be one of 'otel-collector', 'prometheus', 'loki', 'jaeger' "
     "or 'grafana' (got 'zipkin')"),
])
def test_a_service_without_a_task_role_or_with_an_unknown_bundle_is_a_manifest_error(tmp_path, entry, error):
    from orchestrator.manifest import load_manifest
    from tests.conftest import MANIFESTS
    for file in MANIFESTS.glob("*.yaml"):
        (tmp_path / file.name).write_text(file.read_text())
    overlay = (tmp_path / "dev.yaml").read_text()
    (tmp_path / "dev.yaml").write_text(overlay + f"services:\n  tasks:\n    {entry}\n")
    with pytest.raises(ManifestError) as raised:
        load_manifest(tmp_path, "dev")
    assert f"dev.yaml:{len(overlay.splitlines()) + 3}: {error}" in str(raised.value)


# --- the normaliser --------------------------------------------------------------------------------


def test_normaliser_finds_a_rendered_definition_equal_to_what_real_ecs_answers(manifest):
    """The fixture is DescribeTaskDefinition's answer as ECS gives it (shape from the botocore
    model and the ECS API reference): defaults filled in, environment reordered, fields only ECS sets."""
    answer = json.loads((FIXTURES / "describe_task_definition_gamepulse.json").read_text())["taskDefinition"]
    rendered = copy.deepcopy(desired_for(manifest).services[0].definition)
    container(rendered, "config-init")["command"][-2] = "s3://gp-config/gamepulse/HASH/"  # the fixture's bundle
    assert taskdefs.normalise(answer) == taskdefs.normalise(rendered)
    assert taskdefs.definition_hash(answer) == taskdefs.definition_hash(rendered)

    container(rendered, "otel-collector")["image"] = "public.ecr.aws/aws-observability/aws-otel-collector:v0.50.0"
    assert taskdefs.definition_hash(answer) != taskdefs.definition_hash(rendered)


def test_normaliser_ignores_order_ecs_does_not_keep_and_defaults_it_fills_in():
    request = {"family": "f", "cpu": 256, "memory": "512", "containerDefinitions": [{
        "name": "c", "image": "i:1", "environment": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}],
        "portMappings": [{"containerPort": 80}], "healthCheck": {"command": ["CMD", "true"]}}]}
    answer = {"family": "f", "cpu": "256", "memory": "512", "revision": 7, "status": "ACTIVE",
              "compatibilities": ["EC2", "FARGATE"], "registeredAt": "2026-01-01T00:00:00Z",
              "requiresAttributes": [{"name": "com.amazonaws.ecs.capability.docker-remote-api.1.18"}],
              "placementConstraints": [], "volumes": [], "containerDefinitions": [{
                  "name": "c", "image": "i:1", "cpu": 0, "essential": True, "mountPoints": [], "volumesFrom": [],
                  "systemControls": [], "environment": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                  "portMappings": [{"containerPort": 80, "hostPort": 80, "protocol": "tcp"}],
                  "healthCheck": {"command": ["CMD", "true"], "interval": 30, "timeout": 5, "retries": 3}}]}
    assert taskdefs.normalise(answer) == taskdefs.normalise(request)
    answer["containerDefinitions"][0]["environment"][0]["value"] = "changed"
    assert taskdefs.normalise(answer) != taskdefs.normalise(request)


# --- pure planning ---------------------------------------------------------------------------------


def test_plan_from_nothing_creates_every_resource_kind_per_service(manifest):
    desired = STEP.desired(manifest, harness.inputs(STEP))  # nothing upstream known yet
    changes = STEP.plan(desired, ServicesFacts(), {})
    assert keys(changes)[:5] == ["create bundle/gamepulse", "create task_definition/gamepulse",
                                 "create discovery_service/gamepulse", "create service/gamepulse",
                                 "create scaling/gamepulse"]
    assert len([c for c in changes if c.kind == "service"]) == 5
    service = next(c for c in changes if c.key == "service/gamepulse")
    revision = dict((d.field, d.new) for d in service.diffs)["task_definition"]
    assert revision == KNOWN_AFTER_APPLY and revision.source == "services.task_definitions.gamepulse"
    # What each value not known yet waits for: the revision this step registers, the image step ecr resolves.
    definition = next(c for c in changes if c.key == "task_definition/gamepulse")
    diffs = {d.field: d.new for d in definition.diffs}
    assert diffs["revision"].source == "services.task_definitions.gamepulse"
    assert diffs["container:gamepulse.image"] == "gamepulse 1.4.1 (known after apply)"
    app = next(c for c in desired.services[0].definition["containerDefinitions"] if c["name"] == "gamepulse")
    assert is_unknown(app["image"]) and app["image"].source == "ecr.images.gamepulse"


def test_grafanas_links_and_prometheus_discovery_follow_the_upstream_steps(manifest):
    """GF_SERVER_ROOT_URL (every link in an alert) carries the alb step's DNS name; Prometheus
    discovers the tasks of the ecs step's cluster."""
    import yaml

    desired = {service.name: service for service in desired_for(manifest).services}
    (grafana,) = [c for c in desired["grafana"].definition["containerDefinitions"] if c["name"] == "grafana"]
    environment = {pair["name"]: pair["value"] for pair in grafana["environment"]}
    assert environment["GF_SERVER_ROOT_URL"] == "http://gamepulse-dev-123.us-east-1.elb.amazonaws.com/grafana/"
    config = yaml.safe_load(desired["prometheus"].bundle.files["prometheus.yml"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["gamepulse"]["aws_sd_configs"][0]["clusters"] == [
        f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/gamepulse-dev"]


def test_plan_says_what_cannot_work_before_it_is_deployed(manifest):
    """A shell health check naming a program, and an email contact point with no mail server."""
    app = manifest.services.tasks["gamepulse"].app.model_copy(
        update={"health_check": ["CMD-SHELL", "curl -fsS http://localhost:8080/health || exit 1"]})
    tasks = {**manifest.services.tasks, "gamepulse": manifest.services.tasks["gamepulse"].model_copy(
        update={"app": app})}
    curl = manifest.model_copy(update={"services": manifest.services.model_copy(update={"tasks": tasks})})
    changes = {change.key: change for change in STEP.plan(desired_for(curl), ServicesFacts(), {})}
    assert "health check runs 'curl'" in changes["task_definition/gamepulse"].note
    assert changes["task_definition/grafana"].note == ""
    assert "admin password" in changes["bundle/grafana"].note
    # Said on every plan, not only with a change: a converged plan says it too.
    desired = desired_for(curl)
    facts, recorded = converged(desired)
    assert STEP.plan(desired, facts, recorded) == []
    [remark] = STEP.remarks(desired, facts)
    assert "cannot be emailed to platform-oncall@gamepulse.example" in remark


#: Step ecr's words for an image tag its repository does not hold (its output `image_problems`).
NOT_PUSHED = ("image tag '9.9.9' does not exist in ECR repository 'gamepulse' (its tags: 1.4.2, 1.4.1); push it "
              "first or name an existing tag")


def test_an_image_tag_not_pushed_is_a_problem_found_before_any_change(manifest):
    outputs = upstream_outputs()
    outputs["ecr"]["images"] = {}
    outputs["ecr"]["image_problems"] = {"gamepulse": NOT_PUSHED}
    desired = desired_for(changed(manifest, images={"repositories": {"gamepulse": {"tag": "9.9.9"}}}), outputs)
    assert STEP.preflight(None, desired, ServicesFacts()) == [f"service gamepulse: {NOT_PUSHED}"]
    assert STEP.preflight(None, desired_for(manifest), ServicesFacts()) == []


def test_plan_is_empty_when_everything_matches(manifest):
    desired = desired_for(manifest)
    facts, recorded = converged(desired)
    assert STEP.plan(desired, facts, recorded) == []


def test_new_image_digest_is_one_new_revision_and_one_service_update(manifest):
    facts, recorded = converged(desired_for(manifest))
    changes = STEP.plan(desired_for(manifest, with_image(upstream_outputs(), "1.4.2")), facts, recorded)
    assert keys(changes) == ["update task_definition/gamepulse", "update service/gamepulse"]
    assert [(d.field, d.old, d.new) for d in changes[0].diffs] == [
        ("container:gamepulse.image", "gamepulse sha256:111111111111…", "gamepulse 1.4.1 (sha256:222222222222…)")]
    assert [d.field for d in changes[1].diffs] == ["task_definition"]
    assert "left to autoscaling" in changes[1].note


def test_environment_variable_change_is_a_new_revision_of_that_service_only(manifest):
    desired = desired_for(manifest)
    facts, recorded = converged(desired)
    env = {"ASPNETCORE_URLS": "http://+:8080", "FEATURE_X": "on"}
    new = desired_for(changed(manifest, services={"tasks": {"gamepulse": {"app": {"environment": env}}}}))
    assert keys(STEP.plan(new, facts, recorded)) == ["update task_definition/gamepulse", "update service/gamepulse"]


def test_config_file_change_is_a_new_bundle_revision_and_rollout(manifest):
    desired = desired_for(manifest)
    facts, recorded = converged(desired)
    new = desired_for(changed(manifest, observability={"metrics_retention_days": 30}))
    assert keys(STEP.plan(new, facts, recorded)) == \
        ["update bundle/prometheus", "update task_definition/prometheus", "update service/prometheus"]


def test_cpu_and_memory_change_is_a_new_revision(manifest):
    desired = desired_for(manifest)
    facts, recorded = converged(desired)
    new = desired_for(changed(manifest, services={"tasks": {"loki": {"cpu": 1024, "memory": 2048}}}))
    changes = STEP.plan(new, facts, recorded)
    assert keys(changes) == ["update task_definition/loki", "update service/loki"]


def with_versions(**changed_versions) -> dict:
    outputs = upstream_outputs()
    outputs["secrets"]["versions"].update({key.replace("_", "-"): value for key, value in changed_versions.items()})
    return outputs


def test_a_secret_with_a_new_version_rolls_exactly_the_services_that_read_it(manifest):
    facts, recorded = converged(desired_for(manifest))
    rotated = desired_for(manifest, with_versions(db_connection="db-connection-v2"))
    [change] = STEP.plan(rotated, facts, recorded)
    assert (change.key, change.calls) == ("service/gamepulse", ("ecs:UpdateService",))
    assert [(d.field, d.old, d.new) for d in change.diffs] == [
        ("secret:db-connection", "db-connection-v1", "db-connection-v2")]
    assert "new deployment: secret db-connection has a new value since the last rollout" in change.note
    assert "ECS reads secrets only when a task starts" in change.note

    assert "admin password" not in change.note
    grafana = desired_for(manifest, with_versions(grafana_admin="grafana-admin-v2", slack_webhook="slack-webhook-v2"))
    [change] = STEP.plan(grafana, facts, recorded)
    assert change.key == "service/grafana"
    # Grafana keeps the password it first stored: the plan says so where the secret changes.
    assert "a changed secret does not change the password" in change.note, change.note


def test_a_secret_this_run_writes_rolls_its_readers_known_after_apply(manifest):
    facts, recorded = converged(desired_for(manifest))
    [change] = STEP.plan(desired_for(manifest, with_versions(db_connection=KNOWN_AFTER_APPLY)), facts, recorded)
    assert change.key == "service/gamepulse"
    assert [(d.field, d.new) for d in change.diffs] == [("secret:db-connection", KNOWN_AFTER_APPLY)]


def test_redeploy_forces_a_new_deployment_of_that_service_only(manifest):
    from orchestrator.manifest import with_redeploys
    facts, recorded = converged(desired_for(manifest))
    [change] = STEP.plan(desired_for(with_redeploys(manifest, ["loki"])), facts, recorded)
    assert (change.key, change.calls, change.note) == ("service/loki", ("ecs:UpdateService",),
                                                       "new deployment: --redeploy")
    assert [(d.field, d.new) for d in change.diffs] == [("redeploy", "forced (--redeploy)")]
    with pytest.raises(ManifestError, match="--redeploy api: 'api' is not one of services.tasks"):
        with_redeploys(manifest, ["api"])


def test_a_record_without_secret_versions_gets_them_without_a_deployment(manifest):
    """A service rolled out by a release that did not record them: recorded once, no call."""
    desired = desired_for(manifest)
    facts, recorded = converged(desired)
    del recorded["service/gamepulse"]["secret_versions"]
    [change] = STEP.plan(desired, facts, recorded)
    assert (change.key, change.calls) == ("service/gamepulse", ())
    assert change.record["secret_versions"] == {"db-connection": "db-connection-v1"}
    assert "records the secret versions its tasks read (no new deployment)" in change.note


def test_desired_count_is_left_to_autoscaling_where_it_manages_the_service(manifest):
    desired = desired_for(manifest)
    facts, recorded = converged(desired)
    facts.services["gamepulse"]["desiredCount"] = 7  # autoscaling scaled out
    assert STEP.plan(desired, facts, recorded) == []
    new = desired_for(changed(manifest, services={"tasks": {"jaeger": {"desired_count": 2}}}))
    [change] = STEP.plan(new, facts, recorded)
    assert change.key == "service/jaeger" and [(d.field, d.old, d.new) for d in change.diffs] == \
        [("desired_count", 1, 2)]


def test_dropped_fields_are_compared_with_the_last_applied_record(manifest):
    """moto drops deploymentConfiguration and the grace period: the record, not moto, says they match."""
    desired = desired_for(manifest)
    facts, recorded = converged(desired)
    new = desired_for(changed(manifest, services={"tasks": {"gamepulse": {"grace_period_seconds": 120}}}))
    [change] = STEP.plan(new, facts, recorded)
    assert [(d.field, d.old, d.new) for d in change.diffs] == [("grace_period", 60, 120)]


def test_requests_per_target_adds_a_second_tracking_policy(manifest):
    desired = desired_for(manifest)
    facts, recorded = converged(desired)
    requests = {"tasks": {"gamepulse": {"autoscaling": {"requests_per_target": 500}}}}
    new = desired_for(changed(manifest, services=requests))
    [change] = STEP.plan(new, facts, recorded)
    assert change.key == "scaling/gamepulse" and [d.field for d in change.diffs] == ["policy:gamepulse-requests"]
    assert change.diffs[0].new == _policy_view(new.services[0].scaling.policies["gamepulse-requests"])
    assert change.diffs[0].new["label"] == "app/gamepulse-dev/1/targetgroup/gp/2"


# --- moto: apply, change, roll out, destroy ------------------------------------------------------------


@pytest.fixture
def platform(aws, monkeypatch):
    """The upstream steps' outputs, as recorded, for tests about the services step alone: what
    the step's calls need to exist in moto is made directly (the cluster, the Cloud Map
    namespace, the versioned config bucket, the target groups its rollouts read, the network);
    the values moto's ECS does not check (roles, secrets, file system, log groups, the image's
    digest) are the recorded ones of `upstream_outputs`. Applying the eight real upstream steps
    first took 2-7 s a test; the destroy test below still does, end to end."""
    import boto3
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "1")  # tasks start and stay healthy
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{index}.0/24",
                                 AvailabilityZone=zone)["Subnet"]["SubnetId"]
               for index, zone in enumerate(("us-east-1a", "us-east-1b"))]
    groups = {name: ec2.create_security_group(GroupName=f"gamepulse-dev-{name}", Description=name,
                                              VpcId=vpc)["GroupId"] for name in ("app", "monitoring", "alb")}
    elb = boto3.client("elbv2", region_name="us-east-1")
    target_groups = {name: elb.create_target_group(Name=f"gamepulse-dev-{name}", Protocol="HTTP", Port=port,
                                                   VpcId=vpc, TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
                     for name, port in (("gamepulse", 8080), ("grafana", 3000))}
    cluster = boto3.client("ecs", region_name="us-east-1").create_cluster(clusterName="gamepulse-dev")["cluster"]
    discovery = boto3.client("servicediscovery", region_name="us-east-1")
    discovery.create_private_dns_namespace(Name="gamepulse-dev.local", Vpc=vpc)
    [namespace] = discovery.list_namespaces()["Namespaces"]
    s3 = boto3.client("s3", region_name="us-east-1")
    bucket = f"gamepulse-dev-config-{ACCOUNT}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    outputs = upstream_outputs()
    outputs["vpc"].update(private_subnet_ids=subnets, security_groups=groups)
    outputs["storage"]["buckets"]["config"] = bucket
    outputs["ecs"].update(cluster_name=cluster["clusterName"], cluster_arn=cluster["clusterArn"],
                          namespace_id=namespace["Id"])
    outputs["alb"]["target_groups"] = target_groups
    return outputs


def run(manifest, aws, platform, recorded, **kwargs):
    return harness.run_step(STEP, manifest, aws, upstream=platform, recorded=recorded, **kwargs)


def ecs_client():
    import boto3
    return boto3.client("ecs", region_name="us-east-1")


def test_create_then_unchanged_apply_makes_no_call_and_registers_nothing(aws, manifest, platform):
    recorded: dict = {}
    applied, outputs, _ = run(manifest, aws, platform, recorded)
    assert len([c for c in applied if c.kind == "service"]) == 5
    ecs = ecs_client()
    described = ecs.describe_services(cluster="gamepulse-dev", services=SERVICES, include=["TAGS"])["services"]
    by_name = {s["serviceName"]: s for s in described}
    assert by_name["gamepulse"]["loadBalancers"][0]["containerPort"] == 8080
    assert by_name["gamepulse"]["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] == "DISABLED"
    assert all(s["serviceRegistries"] for s in described)
    assert {t["key"]: t["value"] for t in by_name["loki"]["tags"]}["orchestrator:step"] == "services"
    definition = ecs.describe_task_definition(taskDefinition=outputs["task_definitions"]["gamepulse"])["taskDefinition"]
    assert container(definition, "gamepulse")["image"] == \
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/gamepulse@sha256:" + "1" * 64  # step ecr's image output
    # The record proves what is in service: the revision ECS holds, the hash of its answer's normal form.
    assert recorded["task_definition/gamepulse"]["arn"] == definition["taskDefinitionArn"]
    assert recorded["task_definition/gamepulse"]["hash"] == taskdefs.definition_hash(definition)
    assert recorded["task_definition/gamepulse"]["image_tag"] == "1.4.1"
    import boto3
    keys_in_bucket = [o["Key"] for o in boto3.client("s3", region_name="us-east-1").list_objects_v2(
        Bucket=platform["storage"]["buckets"]["config"])["Contents"]]
    assert any(k.startswith("grafana/") and k.endswith("datasources/datasources.yaml") for k in keys_in_bucket)
    scaling = boto3.client("application-autoscaling", region_name="us-east-1")
    [target] = scaling.describe_scalable_targets(ServiceNamespace="ecs")["ScalableTargets"]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == \
        ("service/gamepulse-dev/gamepulse", 2, 10)
    sd = boto3.client("servicediscovery", region_name="us-east-1")
    assert sorted(s["Name"] for s in sd.list_services()["Services"]) == sorted(SERVICES)

    before = len(aws.ledger.calls)
    applied, _, _ = run(manifest, aws, platform, recorded)
    assert applied == []
    calls = harness.calls_since(aws, before, "services")
    assert [c.operation for c in calls if c.mutating] == []
    assert "DescribeTaskDefinition" not in [c.operation for c in calls]


def test_image_tag_change_registers_exactly_one_revision_and_updates_one_service(aws, manifest, platform):
    recorded: dict = {}
    run(manifest, aws, platform, recorded)
    new = changed(manifest, images={"repositories": {"gamepulse": {"tag": "1.4.2"}}})
    before = len(aws.ledger.calls)
    applied, outputs, _ = run(new, aws, with_image(platform, "1.4.2"), recorded)
    assert keys(applied) == ["update task_definition/gamepulse", "update service/gamepulse"]
    mutating = [c.operation for c in harness.calls_since(aws, before, "services") if c.mutating]
    assert mutating == ["RegisterTaskDefinition", "UpdateService"]
    [service] = ecs_client().describe_services(cluster="gamepulse-dev", services=["gamepulse"])["services"]
    primary = next(d for d in service["deployments"] if d["status"] == "PRIMARY")
    assert primary["taskDefinition"] == outputs["task_definitions"]["gamepulse"]
    assert outputs["task_definitions"]["gamepulse"].endswith(":2")


def test_config_file_change_uploads_a_new_bundle_and_rolls_that_service(aws, manifest, platform):
    recorded: dict = {}
    run(manifest, aws, platform, recorded)
    new = changed(manifest, observability={"metrics_retention_days": 30})
    before = len(aws.ledger.calls)
    applied, outputs, _ = run(new, aws, platform, recorded)
    assert keys(applied) == ["update bundle/prometheus", "update task_definition/prometheus",
                             "update service/prometheus"]
    assert [c.operation for c in harness.calls_since(aws, before, "services") if c.mutating] == \
        ["PutObject", "RegisterTaskDefinition", "UpdateService"]
    definition = ecs_client().describe_task_definition(
        taskDefinition=outputs["task_definitions"]["prometheus"])["taskDefinition"]
    assert recorded["bundle/prometheus"]["hash"] in container(definition, "config-init")["command"][-2]


def test_an_image_step_ecr_could_not_resolve_is_never_registered(aws, manifest, platform):
    """A repository this run made that holds no image of the tag (step ecr's pre-flight finds a
    missing tag only in a repository that exists): said in the user's words, no revision made."""
    unresolved = copy.deepcopy(platform)
    unresolved["ecr"]["images"] = {}
    unresolved["ecr"]["image_problems"] = {"gamepulse": NOT_PUSHED}
    before = len(aws.ledger.calls)
    with pytest.raises(OrchestratorError, match=re.escape(f"service gamepulse: {NOT_PUSHED}")):
        run(manifest, aws, unresolved, {})
    assert "RegisterTaskDefinition" not in [c.operation for c in aws.ledger.calls[before:]]


def _inject_describe_services(aws, answer):
    """ECS's own DescribeServices answers once the rollout began (after UpdateService), which
    moto cannot give."""
    class Http:
        status_code = 200
        headers: dict = {}

    rolling = []
    aws.register("after-call.ecs.UpdateService", lambda **kwargs: rolling.append(True))
    aws.register("before-call.ecs.DescribeServices", lambda **kwargs: (Http(), answer()) if rolling else None)


def test_circuit_breaker_rollback_fails_the_step_naming_ecs_reasons(aws, manifest, platform):
    recorded: dict = {}
    run(manifest, aws, platform, recorded)
    old = recorded["task_definition/gamepulse"]["arn"]
    _inject_describe_services(aws, lambda: {"services": [{
        "serviceName": "gamepulse", "status": "ACTIVE", "desiredCount": 2, "runningCount": 2,
        "taskDefinition": old,
        "deployments": [{"status": "PRIMARY", "taskDefinition": old, "rolloutState": "COMPLETED",
                         "desiredCount": 2, "runningCount": 2},
                        {"status": "ACTIVE", "taskDefinition": old.rsplit(":", 1)[0] + ":2", "rolloutState": "FAILED",
                         "desiredCount": 0, "runningCount": 0}],
        "events": [{"message": "(service gamepulse) deployment failed: tasks failed to start."},
                   {"message": "(service gamepulse) rolling back to deployment ecs-svc/1."}]}],
        "failures": []})
    new = changed(manifest, images={"repositories": {"gamepulse": {"tag": "1.4.2"}}})
    with pytest.raises(WaitFailed) as error:
        run(new, aws, with_image(platform, "1.4.2"), recorded)
    message = str(error.value)
    assert "rollout of service gamepulse failed and ECS rolled it back" in message
    assert "tasks failed to start" in message


def test_a_rollout_that_never_completes_fails_at_its_deadline_with_its_last_state(aws, manifest, platform,
                                                                                   monkeypatch):
    from orchestrator import waiters
    recorded: dict = {}
    run(manifest, aws, platform, recorded)
    now = [0.0]
    monkeypatch.setattr(waiters, "clock", lambda: now[0])
    monkeypatch.setattr(waiters, "sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))

    new_arn = recorded["task_definition/gamepulse"]["arn"].rsplit(":", 1)[0] + ":2"  # what the apply registers

    def stuck():
        return {"services": [{"serviceName": "gamepulse", "status": "ACTIVE", "desiredCount": 2, "runningCount": 1,
                              "taskDefinition": new_arn,
                              "deployments": [{"status": "PRIMARY", "taskDefinition": new_arn,
                                               "rolloutState": "IN_PROGRESS", "desiredCount": 2, "runningCount": 1}],
                              "events": [{"message": "(service gamepulse) is unable to consistently start tasks"}]}],
                "failures": []}

    _inject_describe_services(aws, stuck)
    new = changed(manifest, images={"repositories": {"gamepulse": {"tag": "1.4.2"}}})
    with pytest.raises(WaitFailed, match=r"did not finish in time \(1/2 running, IN_PROGRESS\).*unable to "
                                         r"consistently start tasks"):
        run(new, aws, with_image(platform, "1.4.2"), recorded)


def test_autoscaled_count_survives_an_apply(aws, manifest, platform):
    recorded: dict = {}
    run(manifest, aws, platform, recorded)
    ecs_client().update_service(cluster="gamepulse-dev", service="gamepulse", desiredCount=6)
    new = changed(manifest, images={"repositories": {"gamepulse": {"tag": "1.4.2"}}})
    applied, _, _ = run(new, aws, with_image(platform, "1.4.2"), recorded)
    assert "left to autoscaling (6 now, 2..10)" in applied[-1].note
    [service] = ecs_client().describe_services(cluster="gamepulse-dev", services=["gamepulse"])["services"]
    assert service["desiredCount"] == 6


@pytest.mark.managed_policies  # the one services test that applies every real step: end to end
def test_destroy_drains_services_before_target_groups_and_cloud_map_services_before_the_namespace(
        aws, manifest, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_SANDBOX_IMAGE_TAGS", "1.4.1")
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "1")
    engine = harness.engine(manifest, aws)
    assert {r.status for r in engine.apply().values()} == {"ok"}
    before = len(aws.ledger.calls)
    results = engine.destroy()
    assert results["services"].status == "ok", results["services"].error
    order = [f"{c.service}:{c.operation}" for c in aws.ledger.calls[before:] if c.mutating]
    first = {op: order.index(op) for op in reversed(order)}
    assert first["ecs:UpdateService"] < first["ecs:DeleteService"] < \
        first["elastic-load-balancing-v2:DeleteTargetGroup"]
    assert first["servicediscovery:DeleteService"] < first["servicediscovery:DeleteNamespace"]
    assert first["ecs:DeleteService"] < first["ecs:DeleteCluster"]
    left = ecs_client().list_task_definitions(familyPrefix="gamepulse-dev-", status="ACTIVE")
    assert left["taskDefinitionArns"] == []
    # Once the cluster is gone (its step's outputs with it), a second destroy finds nothing to do.
    engine.lease.release()
    again = harness.engine(manifest, aws).destroy()
    assert again["services"].status == "ok" and again["services"].changes == [], again["services"].error


def test_fifty_services_read_at_most_twice_what_dev_reads_unchanged(aws, manifest, platform):
    """Reads grow slowly with the number of services: batched describes, records instead of
    one describe per task definition."""
    def unchanged_reads(the_manifest) -> int:
        recorded: dict = {}
        run(the_manifest, aws, platform, recorded)
        before = len(aws.ledger.calls)
        run(the_manifest, aws, platform, recorded)
        calls = harness.calls_since(aws, before, "services")
        assert [c for c in calls if c.mutating] == []
        return len(calls)

    dev_reads = unchanged_reads(manifest)
    tasks = {f"worker-{index:02}": {"bundle": "jaeger", "cpu": 256, "memory": 512, "security_group": "monitoring"}
             for index in range(45)}
    roles = {name: {"grants": ["config-read"]} for name in tasks}
    big = changed(manifest, services={"tasks": tasks}, iam={"task_roles": roles},
                  cluster={"log_groups": [*manifest.cluster.log_groups, *tasks]})
    outputs = copy.deepcopy(platform)
    outputs["iam"]["task_role_arns"].update({name: outputs["iam"]["task_role_arns"]["jaeger"] for name in tasks})
    outputs["ecs"]["log_groups"].update({name: outputs["ecs"]["log_groups"]["jaeger"] for name in tasks})
    platform.update(outputs)
    assert len(big.services.tasks) == 50
    fifty_reads = unchanged_reads(big)
    assert fifty_reads <= 2 * dev_reads, (fifty_reads, dev_reads)


def test_a_rotated_secret_is_a_new_deployment_of_its_readers_awaited_to_the_end(aws, manifest, platform):
    recorded: dict = {}
    run(manifest, aws, platform, recorded)
    ecs = ecs_client()

    def deployments() -> dict[str, list[str]]:
        return {s["serviceName"]: [d["id"] for d in s["deployments"]]
                for s in ecs.describe_services(cluster="gamepulse-dev", services=SERVICES)["services"]}

    before = deployments()
    rotated = copy.deepcopy(platform)
    rotated["secrets"]["versions"]["db-connection"] = "a-new-version-id"
    applied, _, _ = run(manifest, aws, rotated, recorded)
    assert [c.key for c in applied] == ["service/gamepulse"]
    after = deployments()
    assert {name for name in SERVICES if after[name] != before[name]} == {"gamepulse"}
    [primary] = [d for d in ecs.describe_services(cluster="gamepulse-dev", services=["gamepulse"])["services"][0][
        "deployments"] if d["status"] == "PRIMARY"]
    assert primary["rolloutState"] == "COMPLETED" and primary["id"] not in before["gamepulse"]
    assert run(manifest, aws, rotated, recorded)[0] == [], "recorded at the rollout: nothing pending after it"

    del recorded["service/grafana"]["secret_versions"]  # as an older release recorded it
    before = len(harness.mutations(aws))
    applied, _, _ = run(manifest, aws, rotated, recorded)
    assert [c.key for c in applied] == ["service/grafana"] and harness.mutations(aws)[before:] == []
    assert recorded["service/grafana"]["secret_versions"] == {
        key: platform["secrets"]["versions"][key] for key in ("grafana-admin", "slack-webhook")}
    assert deployments() == after, "recorded, without a new deployment"


def test_revisions_beyond_the_kept_number_are_deregistered(aws, manifest, platform):
    recorded: dict = {}
    keep_two = changed(manifest, services={"keep_revisions": 2})
    for tag in ("1.4.1", "1.4.2", "1.4.1"):
        run(changed(keep_two, images={"repositories": {"gamepulse": {"tag": tag}}}), aws, with_image(platform, tag),
            recorded)
    active = ecs_client().list_task_definitions(familyPrefix="gamepulse-dev-gamepulse", status="ACTIVE")
    assert [arn.rsplit(":", 1)[-1] for arn in active["taskDefinitionArns"]] == ["2", "3"]


def test_the_plan_of_a_new_image_names_the_container_both_tags_and_the_new_digest(aws, manifest, platform):
    recorded: dict = {}
    run(manifest, aws, platform, recorded)
    changes = harness.plan_step(STEP, changed(manifest, images={"repositories": {"gamepulse": {"tag": "1.4.2"}}}),
                                aws, upstream=with_image(platform, "1.4.2"), recorded=recorded)
    definition = next(c for c in changes if c.key == "task_definition/gamepulse")
    [diff] = definition.diffs
    assert diff.field == "container:gamepulse.image"
    assert diff.old == "gamepulse 1.4.1"
    assert re.fullmatch(r"gamepulse 1\.4\.2 \(sha256:[0-9a-f]{12}…\)", diff.new), diff.new
    from orchestrator.render import change_lines
    shown = change_lines(definition)[1]
    assert shown.startswith("        container:gamepulse.image: gamepulse 1.4.1 → gamepulse 1.4.2 (sha256:"), shown


def test_the_image_in_service_is_named_by_its_tag_where_the_record_names_it(manifest):
    facts, recorded = converged(desired_for(manifest))
    recorded["task_definition/gamepulse"]["image_tag"] = "1.4.1"
    new = desired_for(changed(manifest, images={"repositories": {"gamepulse": {"tag": "1.4.2"}}}),
                      with_image(upstream_outputs(), "1.4.2"))
    [definition, _] = STEP.plan(new, facts, recorded)
    [diff] = definition.diffs
    assert (diff.old, diff.new) == ("gamepulse 1.4.1", "gamepulse 1.4.2 (sha256:222222222222…)")


@pytest.mark.parametrize("kill_after", [2, 3, 4, 5])
def test_killed_after_a_call_then_applied_again_converges_without_duplicates(aws, manifest, platform, kill_after):
    """2: task definition registered, 3: Cloud Map service created (moto would make a second one
    of the same name), 4: ECS service created, 5: scalable target registered — none recorded yet."""
    harness.crash_after(aws, kill_after)
    with pytest.raises(harness.Crash):
        run(manifest, aws, platform, {})
    rerun = harness.forget_crash(aws)
    recorded: dict = {}
    run(manifest, rerun, platform, recorded)
    import boto3
    sd = boto3.client("servicediscovery", region_name="us-east-1")
    assert sorted(s["Name"] for s in sd.list_services()["Services"]) == sorted(SERVICES)
    assert len(ecs_client().list_services(cluster="gamepulse-dev")["serviceArns"]) == 5
    before = len(rerun.ledger.calls)
    assert run(manifest, rerun, platform, recorded)[0] == []
    assert [c for c in rerun.ledger.calls[before:] if c.mutating and c.step == "services"] == []


def test_a_service_dropped_from_the_manifest_is_deleted_with_its_name_revisions_and_bundle(aws, manifest, platform):
    recorded: dict = {}
    run(manifest, aws, platform, recorded)
    without_jaeger = manifest.model_dump()
    del without_jaeger["services"]["tasks"]["jaeger"]
    applied, _, _ = run(type(manifest).model_validate(without_jaeger), aws, platform, recorded)
    assert keys(applied) == ["delete service/jaeger", "delete discovery_service/jaeger",
                             "delete task_definition/gamepulse-dev-jaeger", "delete bundle/jaeger"]
    assert all(change.retire for change in applied)
    [service] = ecs_client().describe_services(cluster="gamepulse-dev", services=["jaeger"])["services"]
    assert service["status"] == "INACTIVE"
    import boto3
    names = [s["Name"] for s in boto3.client("servicediscovery", region_name="us-east-1").list_services()["Services"]]
    assert "jaeger" not in names and len(names) == 4
    assert "jaeger/" not in str(boto3.client("s3", region_name="us-east-1").list_object_versions(
        Bucket=platform["storage"]["buckets"]["config"]))


def test_the_live_view_says_how_each_service_runs_now(aws, manifest, platform):
    from orchestrator.context import StepContext
    recorded: dict = {}
    _, outputs, _ = run(manifest, aws, platform, recorded)
    ecs_client().delete_service(cluster="gamepulse-dev", service="jaeger", force=True)
    view = STEP.live(StepContext(aws=aws, manifest=manifest, step="services"), outputs)
    assert view["lines"][0] == ("gamepulse    2/2 running, 0 pending, rollout COMPLETED, revision "
                                "gamepulse-dev-gamepulse:1, targets none")
    assert "jaeger       not deployed" in view["lines"]
    assert view["services"]["loki"]["revision"] == "gamepulse-dev-loki:1"
    gone = STEP.live(StepContext(aws=aws, manifest=manifest, step="services"), {"cluster_name": "no-such-cluster"})
    assert {state["line"] for state in gone["services"].values()} == {"not deployed"}
