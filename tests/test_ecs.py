"""Step ecs: pure planner tests, then moto-backed apply / drift / destroy / crash tests."""
from __future__ import annotations

import dataclasses
import json

import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.model import KNOWN_AFTER_APPLY
from orchestrator.tags import tag_dict
from orchestrator.waiters import WaitFailed
from steps.ecs import EcsFacts, EcsStep, ObservedCluster, ObservedLogGroup, ObservedNamespace, Strategy
from tests import harness

STEP = EcsStep()
FAMILIES = ["gamepulse", "otel-collector", "prometheus", "loki", "jaeger", "grafana"]
OWNERSHIP = {"orchestrator:app": "gamepulse", "orchestrator:env": "dev", "orchestrator:step": "ecs"}


def desired_for(manifest, vpc_id="vpc-1"):
    return STEP.desired(manifest, harness.inputs(STEP, {"vpc": {"vpc_id": vpc_id}}))


def observed_matching(desired) -> EcsFacts:
    cluster, tags = desired.cluster, desired.tags
    return EcsFacts(
        cluster=ObservedCluster(cluster.name, "arn:cluster", True, cluster.container_insights,
                                cluster.capacity_providers, cluster.default_strategy, tags=dict(tags)),
        log_groups={g.name: ObservedLogGroup(g.name, True, g.retention_days, f"arn:log-group:{g.name}", dict(tags))
                    for g in desired.log_groups},
        namespace=ObservedNamespace("ns-1", "arn:ns", desired.namespace.name, dict(tags)))


def recorded_for(desired) -> dict:
    return {f"namespace/{desired.namespace.name}": {"vpc_id": desired.namespace.vpc_id}}


# --- pure planning ---------------------------------------------------------------------------


def test_desired_resolves_names_and_settings_from_the_manifest(manifest):
    desired = desired_for(manifest)
    assert desired.cluster.name == "gamepulse-dev"
    assert desired.cluster.container_insights == "enhanced"
    assert desired.cluster.capacity_providers == ("FARGATE", "FARGATE_SPOT")
    assert desired.cluster.default_strategy == (Strategy("FARGATE", 1, 0),)
    assert [g.name for g in desired.log_groups] == [f"/ecs/gamepulse-dev/{f}" for f in FAMILIES]
    assert {g.retention_days for g in desired.log_groups} == {30}
    assert (desired.namespace.name, desired.namespace.vpc_id) == ("gamepulse-dev.local", "vpc-1")


def test_plan_from_nothing_creates_everything_with_vpc_known_after_apply(manifest):
    desired = STEP.desired(manifest, harness.inputs(STEP))
    changes = STEP.plan(desired, EcsFacts(), {})
    assert [(c.action, c.kind) for c in changes] == \
        [("create", "cluster")] + [("create", "log_group")] * 6 + [("create", "namespace")]
    assert changes[0].calls == ("iam:CreateServiceLinkedRole", "ecs:CreateCluster")
    assert changes[-1].diffs[0].new == KNOWN_AFTER_APPLY
    assert changes[-1].record == {"vpc_id": KNOWN_AFTER_APPLY}


def test_plan_is_empty_when_everything_matches(manifest):
    desired = desired_for(manifest)
    assert STEP.plan(desired, observed_matching(desired), recorded_for(desired)) == []


def test_container_insights_drift_is_an_update_cluster_settings(manifest):
    desired = desired_for(manifest)
    observed = observed_matching(desired)
    observed.cluster.container_insights = "disabled"
    [change] = STEP.plan(desired, observed, recorded_for(desired))
    assert (change.action, change.kind, change.calls) == ("update", "cluster", ("ecs:UpdateClusterSettings",))
    assert [(d.field, d.old, d.new) for d in change.diffs] == [("container_insights", "disabled", "enhanced")]


def test_capacity_provider_or_strategy_drift_is_a_put_cluster_capacity_providers(manifest):
    desired = desired_for(manifest)
    observed = observed_matching(desired)
    observed.cluster.capacity_providers = ("FARGATE",)
    observed.cluster.default_strategy = (Strategy("FARGATE", 2, 1),)
    [change] = STEP.plan(desired, observed, recorded_for(desired))
    assert change.calls == ("ecs:PutClusterCapacityProviders",)
    assert {d.field for d in change.diffs} == {"capacity_providers", "default_strategy"}


def test_retention_drift_is_a_put_retention_policy(manifest):
    desired = desired_for(manifest)
    observed = observed_matching(desired)
    observed.log_groups["/ecs/gamepulse-dev/loki"].retention_days = None
    [change] = STEP.plan(desired, observed, recorded_for(desired))
    assert (change.action, change.name, change.calls) == \
        ("update", "/ecs/gamepulse-dev/loki", ("logs:PutRetentionPolicy",))
    assert (change.diffs[0].old, change.diffs[0].new) == (None, 30)


def test_an_owned_log_group_left_out_of_the_manifest_is_a_blocked_delete(manifest):
    desired = desired_for(manifest)
    observed = observed_matching(desired)
    observed.log_groups["/ecs/gamepulse-dev/old"] = ObservedLogGroup("/ecs/gamepulse-dev/old", True, 30)
    observed.log_groups["/ecs/gamepulse-dev/theirs"] = ObservedLogGroup("/ecs/gamepulse-dev/theirs", False, 30)
    [change] = STEP.plan(desired, observed, recorded_for(desired))
    assert (change.action, change.name, change.blocked) == ("delete", "/ecs/gamepulse-dev/old", "delete-data")
    assert "loses the logs" in change.note


def test_a_changed_manifest_tag_retags_every_resource_and_foreign_tags_are_no_difference(manifest):
    observed = observed_matching(desired_for(manifest))
    observed.cluster.tags["team-by-hand"] = "x"  # someone else's tag: not ours to remove
    observed.namespace.tags.pop("orchestrator:step")  # ours, missing (still found: by name in our VPC)
    retagged = manifest.model_copy(update={"tags": {**manifest.tags, "owner": "games-team"}})
    changes = STEP.plan(desired_for(retagged), observed, recorded_for(desired_for(retagged)))
    assert [(c.action, c.kind, c.calls) for c in changes] == \
        [("update", "cluster", ("ecs:TagResource",))] + [("update", "log_group", ("logs:TagResource",))] * 6 + \
        [("update", "namespace", ("servicediscovery:TagResource",))]
    for change in changes[:-1]:
        assert [(d.field, d.old, d.new) for d in change.diffs] == \
            [("tags", {"owner": "platform-team"}, {"owner": "games-team"})]
    assert changes[-1].diffs[0].new == {"owner": "games-team", "orchestrator:step": "ecs"}


def test_retention_and_tags_together_are_one_update_with_both_calls(manifest):
    retagged = manifest.model_copy(update={"tags": {**manifest.tags, "release-train": "42"}})
    observed = observed_matching(desired_for(manifest))
    observed.log_groups["/ecs/gamepulse-dev/loki"].retention_days = 7
    changes = {c.name: c for c in STEP.plan(desired_for(retagged), observed, recorded_for(desired_for(retagged)))}
    loki = changes["/ecs/gamepulse-dev/loki"]
    assert loki.calls == ("logs:PutRetentionPolicy", "logs:TagResource")
    assert [(d.field, d.old, d.new) for d in loki.diffs] == \
        [("retention_days", 7, 30), ("tags", {"release-train": None}, {"release-train": "42"})]


def test_a_namespace_whose_vpc_changed_is_replaced(manifest):
    desired = desired_for(manifest, vpc_id="vpc-new")
    observed = observed_matching(desired)
    [delete, change] = STEP.plan(desired, observed, {"namespace/gamepulse-dev.local": {"vpc_id": "vpc-old"}})
    assert (delete.action, delete.kind, delete.calls) == ("delete", "namespace", ("servicediscovery:DeleteNamespace",))
    assert (change.action, change.kind, change.diffs[0].old, change.diffs[0].new) == \
        ("replace", "namespace", "vpc-old", "vpc-new")
    assert change.record == {"vpc_id": "vpc-new"} and "deleted first" in change.outage


def test_a_resource_with_our_name_but_not_our_tags_is_refused_by_name(manifest):
    desired = desired_for(manifest)
    observed = observed_matching(desired)
    observed.cluster.owned = False
    with pytest.raises(OrchestratorError, match="ECS cluster gamepulse-dev exists but does not carry"):
        STEP.plan(desired, observed, recorded_for(desired))


def test_plan_destroy_deletes_only_what_is_owned_in_a_safe_order(manifest):
    observed = observed_matching(desired_for(manifest))
    observed.log_groups["/ecs/gamepulse-dev/theirs"] = ObservedLogGroup("/ecs/gamepulse-dev/theirs", False, 7)
    observed.log_groups["/ecs/gamepulse-dev/loki"].holds_logs = False
    changes = STEP.plan_destroy(observed)
    assert [(c.action, c.kind) for c in changes] == \
        [("delete", "namespace")] + [("delete", "log_group")] * 6 + [("delete", "cluster")]
    assert {c.name: c.blocked for c in changes if c.kind == "log_group"}["/ecs/gamepulse-dev/loki"] is None
    assert [c.blocked for c in changes if c.kind == "log_group"].count("delete-data") == 5
    assert "/ecs/gamepulse-dev/theirs" not in {c.name for c in changes}


# --- against moto ----------------------------------------------------------------------------


def make_vpc() -> str:
    import boto3
    return boto3.client("ec2", region_name="us-east-1").create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]


@dataclasses.dataclass
class Environment:
    aws: object
    upstream: dict
    recorded: dict
    first_apply: list = dataclasses.field(default_factory=list)
    outputs: dict = dataclasses.field(default_factory=dict)  # as of the latest apply


@pytest.fixture(scope="module")
def environment():
    """One moto account for the module (a fresh one costs about a second), with a VPC and the
    step applied once. Every test leaves it converged again, so the tests do not depend on
    their order."""
    from moto import mock_aws

    from orchestrator.aws import Aws
    from tests.conftest import FAKE_ENV

    with pytest.MonkeyPatch.context() as patch:
        for key, value in FAKE_ENV.items():
            patch.setenv(key, value)
        with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
            aws = Aws("us-east-1")
            env = Environment(aws, {"vpc": {"vpc_id": make_vpc()}}, {})
            env.first_apply = harness.run_step(STEP, load_dev(), aws, env.upstream, env.recorded)[0]
            yield env


@pytest.fixture
def env(environment, manifest):
    """The shared environment, checked converged before the test starts, with fresh outputs."""
    assert harness.plan_step(STEP, manifest, environment.aws, environment.upstream, environment.recorded) == []
    environment.outputs = harness.run_step(STEP, manifest, environment.aws, environment.upstream,
                                           environment.recorded)[1]
    return environment


def load_dev():
    from orchestrator.manifest import load_manifest
    from tests.conftest import MANIFESTS
    return load_manifest(MANIFESTS, "dev")


class _Http:
    def __init__(self, status_code):
        self.status_code = status_code
        self.headers = {}


def test_apply_creates_cluster_log_groups_and_namespace_with_settings_and_tags(env):
    assert [(c.action, c.kind) for c in env.first_apply] == \
        [("create", "cluster")] + [("create", "log_group")] * 6 + [("create", "namespace")]
    cluster = env.aws.client("ecs").describe_clusters(clusters=["gamepulse-dev"],
                                                      include=["SETTINGS", "TAGS"])["clusters"][0]
    assert cluster["settings"] == [{"name": "containerInsights", "value": "enhanced"}]
    assert sorted(cluster["capacityProviders"]) == ["FARGATE", "FARGATE_SPOT"]
    assert cluster["defaultCapacityProviderStrategy"] == [{"capacityProvider": "FARGATE", "weight": 1, "base": 0}]
    tags = {t["key"]: t["value"] for t in cluster["tags"]}
    assert tags.items() >= {**OWNERSHIP, "project": "gamepulse", "environment": "dev"}.items()

    logs = env.aws.client("logs")
    groups = logs.describe_log_groups(logGroupNamePrefix="/ecs/gamepulse-dev/")["logGroups"]
    assert sorted(g["logGroupName"] for g in groups) == sorted(f"/ecs/gamepulse-dev/{f}" for f in FAMILIES)
    assert {g["retentionInDays"] for g in groups} == {30}
    for group in groups:
        assert logs.list_tags_for_resource(resourceArn=group["logGroupArn"])["tags"].items() >= OWNERSHIP.items()

    discovery = env.aws.client("servicediscovery")
    namespace = discovery.get_namespace(Id=env.outputs["namespace_id"])["Namespace"]
    assert (namespace["Name"], namespace["Type"]) == ("gamepulse-dev.local", "DNS_PRIVATE")
    assert tag_dict(discovery.list_tags_for_resource(ResourceARN=namespace["Arn"])["Tags"]).items() \
        >= OWNERSHIP.items()
    assert env.outputs == {"cluster_name": "gamepulse-dev", "cluster_arn": cluster["clusterArn"],
                           "log_groups": {f: f"/ecs/gamepulse-dev/{f}" for f in FAMILIES},
                           "namespace_id": namespace["Id"], "namespace_name": "gamepulse-dev.local",
                           "namespace_arn": namespace["Arn"]}
    assert env.recorded == {"namespace/gamepulse-dev.local": {"vpc_id": env.upstream["vpc"]["vpc_id"]}}


def test_second_apply_makes_no_mutating_call_and_few_reads(env, manifest):
    before = len(env.aws.ledger.calls)
    changes, outputs, _ = harness.run_step(STEP, manifest, env.aws, env.upstream, env.recorded)
    assert changes == []
    assert outputs == env.outputs
    new_calls = harness.calls_since(env.aws, before, STEP.name)
    assert [c for c in new_calls if c.mutating and c.step == STEP.name] == []
    # One read per resource kind, one tagging-API read for the log groups' tags and one for
    # the namespace's.
    assert len(new_calls) == 3 + 1 + 1


def test_drift_made_by_hand_is_shown_by_plan_then_repaired(env, manifest):
    aws = harness.forget_crash(env.aws)
    ecs, logs = aws.client("ecs"), aws.client("logs")
    ecs.update_cluster(cluster="gamepulse-dev", settings=[{"name": "containerInsights", "value": "disabled"}])
    ecs.put_cluster_capacity_providers(cluster="gamepulse-dev", capacityProviders=["FARGATE"],
                                       defaultCapacityProviderStrategy=[{"capacityProvider": "FARGATE", "weight": 3}])
    logs.put_retention_policy(logGroupName="/ecs/gamepulse-dev/grafana", retentionInDays=1)
    logs.delete_log_group(logGroupName="/ecs/gamepulse-dev/jaeger")

    planned = harness.plan_step(STEP, manifest, aws, env.upstream, env.recorded)
    assert {(c.action, c.name): c.calls for c in planned} == {
        ("update", "gamepulse-dev"): ("ecs:UpdateClusterSettings", "ecs:PutClusterCapacityProviders"),
        ("update", "/ecs/gamepulse-dev/grafana"): ("logs:PutRetentionPolicy",),
        ("create", "/ecs/gamepulse-dev/jaeger"): ("logs:CreateLogGroup", "logs:PutRetentionPolicy"),
    }

    harness.run_step(STEP, manifest, aws, env.upstream, env.recorded)
    assert "ecs:UpdateClusterSettings" in harness.mutations(aws)
    assert "ecs:CreateCluster" not in harness.mutations(aws), "create_cluster on an existing cluster resets it"
    cluster = ecs.describe_clusters(clusters=["gamepulse-dev"], include=["SETTINGS"])["clusters"][0]
    assert cluster["settings"] == [{"name": "containerInsights", "value": "enhanced"}]
    assert harness.plan_step(STEP, manifest, aws, env.upstream, env.recorded) == []
    retention = {g["logGroupName"]: g.get("retentionInDays")
                 for g in logs.describe_log_groups(logGroupNamePrefix="/ecs/gamepulse-dev/")["logGroups"]}
    assert retention["/ecs/gamepulse-dev/grafana"] == 30 and retention["/ecs/gamepulse-dev/jaeger"] == 30


def test_a_changed_manifest_tag_is_put_on_every_resource_and_foreign_tags_stay(env, manifest):
    ecs, logs, discovery = (env.aws.client(s) for s in ("ecs", "logs", "servicediscovery"))
    cluster_arn, namespace_arn = env.outputs["cluster_arn"], env.outputs["namespace_arn"]
    grafana_arn = next(g["logGroupArn"] for g in logs.describe_log_groups(
        logGroupNamePrefix="/ecs/gamepulse-dev/grafana")["logGroups"])
    ecs.tag_resource(resourceArn=cluster_arn, tags=[{"key": "by-hand", "value": "yes"}])
    logs.tag_resource(resourceArn=grafana_arn, tags={"by-hand": "yes"})
    discovery.tag_resource(ResourceARN=namespace_arn, Tags=[{"Key": "by-hand", "Value": "yes"}])
    assert harness.plan_step(STEP, manifest, env.aws, env.upstream, env.recorded) == [], \
        "a tag someone else added is no difference"

    retagged = manifest.model_copy(update={"tags": {**manifest.tags, "owner": "games-team"}})
    planned = harness.plan_step(STEP, retagged, env.aws, env.upstream, env.recorded)
    assert [(c.action, c.kind, c.calls) for c in planned] == \
        [("update", "cluster", ("ecs:TagResource",))] + [("update", "log_group", ("logs:TagResource",))] * 6 + \
        [("update", "namespace", ("servicediscovery:TagResource",))]
    assert {(d.field, d.old["owner"], d.new["owner"]) for c in planned for d in c.diffs} == \
        {("tags", "platform-team", "games-team")}

    before = len(env.aws.ledger.calls)
    harness.run_step(STEP, retagged, env.aws, env.upstream, env.recorded)
    assert sorted(harness.mutations(env.aws)[-8:]) == sorted(
        ["ecs:TagResource", "servicediscovery:TagResource"] + ["cloudwatch-logs:TagResource"] * 6)
    assert len([c for c in harness.calls_since(env.aws, before, STEP.name) if c.mutating]) == 8
    cluster_tags = tag_dict(ecs.describe_clusters(clusters=["gamepulse-dev"], include=["TAGS"])["clusters"][0]["tags"],
                            "key", "value")
    namespace_tags = tag_dict(discovery.list_tags_for_resource(ResourceARN=namespace_arn)["Tags"])
    for tags in (cluster_tags, namespace_tags, logs.list_tags_for_resource(resourceArn=grafana_arn)["tags"]):
        assert (tags["owner"], tags["by-hand"], tags["project"]) == ("games-team", "yes", "gamepulse")
        assert tags.items() >= OWNERSHIP.items()
    for group in logs.describe_log_groups(logGroupNamePrefix="/ecs/gamepulse-dev/")["logGroups"]:
        assert logs.list_tags_for_resource(resourceArn=group["logGroupArn"])["tags"]["owner"] == "games-team"
    assert harness.plan_step(STEP, retagged, env.aws, env.upstream, env.recorded) == []

    harness.run_step(STEP, manifest, env.aws, env.upstream, env.recorded)  # back to the manifest's owner
    ecs.untag_resource(resourceArn=cluster_arn, tagKeys=["by-hand"])
    logs.untag_resource(resourceArn=grafana_arn, tagKeys=["by-hand"])
    discovery.untag_resource(ResourceARN=namespace_arn, TagKeys=["by-hand"])


def write_a_log_event(aws, group: str) -> None:
    logs = aws.client("logs")
    logs.create_log_stream(logGroupName=group, logStreamName="task/1")
    logs.put_log_events(logGroupName=group, logStreamName="task/1", logEvents=[{"timestamp": 1, "message": "hi"}])


def test_a_log_group_dropped_from_the_manifest_is_kept_without_delete_data(env, manifest):
    fewer = manifest.model_copy(update={"cluster": manifest.cluster.model_copy(
        update={"log_groups": [f for f in FAMILIES if f != "jaeger"]})})
    write_a_log_event(env.aws, "/ecs/gamepulse-dev/jaeger")
    changes, outputs, _ = harness.run_step(STEP, fewer, env.aws, env.upstream, env.recorded)
    assert changes == []
    assert "jaeger" not in outputs["log_groups"]
    assert "/ecs/gamepulse-dev/jaeger" in log_group_names(env.aws)

    changes, _, _ = harness.run_step(STEP, fewer, env.aws, env.upstream, env.recorded, allow=("delete-data",))
    assert [(c.action, c.name) for c in changes] == [("delete", "/ecs/gamepulse-dev/jaeger")]
    assert "/ecs/gamepulse-dev/jaeger" not in log_group_names(env.aws)
    harness.run_step(STEP, manifest, env.aws, env.upstream, env.recorded)


def test_destroy_removes_only_what_the_step_owns(env, manifest):
    env.aws.client("logs").create_log_group(logGroupName="/ecs/gamepulse-dev/hand-made")
    assert harness.run_step(STEP, manifest, env.aws, env.upstream, env.recorded)[0] == [], \
        "apply leaves the untagged look-alike alone"

    write_a_log_event(env.aws, "/ecs/gamepulse-dev/grafana")
    harness.run_step(STEP, manifest, env.aws, env.upstream, env.recorded, destroy=True)
    assert cluster_status(env.aws) == "INACTIVE"
    assert namespaces(env.aws) == []
    assert log_group_names(env.aws) == ["/ecs/gamepulse-dev/grafana", "/ecs/gamepulse-dev/hand-made"], \
        "the group holding logs is kept without delete-data; the empty ones are gone"

    harness.run_step(STEP, manifest, env.aws, env.upstream, env.recorded, destroy=True, allow=("delete-data",))
    assert log_group_names(env.aws) == ["/ecs/gamepulse-dev/hand-made"]

    env.aws.client("logs").delete_log_group(logGroupName="/ecs/gamepulse-dev/hand-made")
    harness.run_step(STEP, manifest, env.aws, env.upstream, env.recorded)


def test_a_run_killed_after_any_mutating_call_converges_without_duplicates(env, manifest):
    # One process that gets killed and one that runs next, each reused for every crash point:
    # a crash hook armed for call n stays silent at any other count.
    crashing, rerun = harness.forget_crash(env.aws), harness.forget_crash(env.aws)
    points = harness.kill_points(crashing, reset=lambda: harness.run_step(STEP, manifest, env.aws, env.upstream, {},
                                                                          destroy=True, allow=("delete-data",)),
                                 run=lambda aws: harness.run_step(STEP, manifest, aws, env.upstream, {}))
    for n in points:
        harness.run_step(STEP, manifest, rerun, env.upstream, {})
        assert harness.plan_step(STEP, manifest, rerun, env.upstream) == [], f"not converged after crash {n}"
        assert namespaces(rerun) == ["gamepulse-dev.local"]
        assert len(log_group_names(rerun)) == len(FAMILIES)
        assert cluster_status(rerun) == "ACTIVE"
    assert n == 14, "14 mutating calls on a cold apply: cluster, 6 x (log group + retention), namespace"
    harness.run_step(STEP, manifest, env.aws, env.upstream, env.recorded)


def test_a_failed_namespace_operation_names_the_namespace_and_the_reason(env, manifest):
    other = manifest.model_copy(update={"cluster": manifest.cluster.model_copy(update={"namespace": "other.local"})})
    aws = harness.forget_crash(env.aws)  # a client of its own for the injected answer

    def failed(params, **kwargs):
        return _Http(200), {"Operation": {"Id": "op-1", "Status": "FAIL",
                                          "ErrorCode": "CANNOT_CREATE_HOSTED_ZONE",
                                          "ErrorMessage": "the VPC does not allow private DNS"}}

    aws.client("servicediscovery").meta.events.register("before-call.servicediscovery.GetOperation", failed)
    with pytest.raises(WaitFailed, match="other.local failed: CANNOT_CREATE_HOSTED_ZONE the VPC does not allow"):
        # moto gap: a second private namespace in one VPC gives ConflictingDomainExists.
        harness.run_step(STEP, other, aws, {"vpc": {"vpc_id": make_vpc()}}, {})
    discovery = env.aws.client("servicediscovery")
    for namespace in discovery.list_namespaces()["Namespaces"]:
        if namespace["Name"] == "other.local":
            discovery.delete_namespace(Id=namespace["Id"])


def test_a_namespace_still_being_created_by_a_killed_run_is_followed_not_duplicated(env, manifest):
    from botocore.exceptions import ClientError

    other = manifest.model_copy(update={"cluster": manifest.cluster.model_copy(update={"namespace": "other.local"})})
    aws = harness.forget_crash(env.aws)  # a client of its own for the injected answer
    first_run = harness.forget_crash(env.aws).client("servicediscovery")

    def still_in_progress(params, **kwargs):
        """AWS answers a retry made while the first request runs with DuplicateRequest; moto
        does not (it says ConflictingDomainExists). Play the first request, then answer so."""
        operation = first_run.create_private_dns_namespace(**json.loads(params["body"]))["OperationId"]
        raise ClientError({"Error": {"Code": "DuplicateRequest", "Message": "in progress"},
                           "DuplicateOperationId": operation}, "CreatePrivateDnsNamespace")

    aws.client("servicediscovery").meta.events.register(
        "before-call.servicediscovery.CreatePrivateDnsNamespace", still_in_progress)
    # moto gap: a second private namespace in one VPC gives ConflictingDomainExists.
    _, outputs, _ = harness.run_step(STEP, other, aws, {"vpc": {"vpc_id": make_vpc()}}, {})
    assert namespaces(aws).count("other.local") == 1
    assert outputs["namespace_name"] == "other.local" and outputs["namespace_id"].startswith("ns-")
    env.aws.client("servicediscovery").delete_namespace(Id=outputs["namespace_id"])


def test_log_groups_a_lagging_tagging_api_leaves_out_are_confirmed_one_by_one(env, manifest):
    aws = harness.forget_crash(env.aws)  # a client of its own for the injected answer
    answered = []

    def lagging(**kwargs):
        """The tagging API shows new tags only after a while: the first answer misses them all."""
        if not answered:
            answered.append(True)
            return _Http(200), {"ResourceTagMappingList": []}
        return None

    aws.register("before-call.resource-groups-tagging-api.GetResources", lagging)
    assert harness.plan_step(STEP, manifest, aws, env.upstream, env.recorded) == []
    assert [f"{c.service}:{c.operation}" for c in aws.ledger.calls].count(
        "cloudwatch-logs:ListTagsForResource") == len(FAMILIES)


def test_a_namespace_of_our_name_in_another_vpc_is_not_in_the_way(env, manifest):
    other = manifest.model_copy(update={"cluster": manifest.cluster.model_copy(update={"namespace": "other.local"})})
    discovery = env.aws.client("servicediscovery")
    operation = discovery.create_private_dns_namespace(Name="other.local", Vpc=make_vpc())["OperationId"]
    theirs = discovery.get_operation(OperationId=operation)["Operation"]["Targets"]["NAMESPACE"]  # untagged

    recorded: dict = {}
    # moto gap: a second private namespace in one VPC gives ConflictingDomainExists.
    ours = {"vpc": {"vpc_id": make_vpc()}}
    changes, outputs, _ = harness.run_step(STEP, other, env.aws, ours, recorded)
    assert [(c.action, c.kind) for c in changes] == [("create", "namespace")]
    assert namespaces(env.aws).count("other.local") == 2 and outputs["namespace_id"] != theirs
    assert harness.plan_step(STEP, other, env.aws, ours, recorded) == []
    for namespace_id in (theirs, outputs["namespace_id"]):
        discovery.delete_namespace(Id=namespace_id)


def test_a_new_vpc_moves_the_namespace(env, manifest):
    old_id = env.outputs["namespace_id"]
    moved = {"vpc": {"vpc_id": make_vpc()}}
    changes, outputs, _ = harness.run_step(STEP, manifest, env.aws, moved, env.recorded)
    assert [(c.action, c.kind) for c in changes] == [("delete", "namespace"), ("replace", "namespace")]
    assert namespaces(env.aws) == ["gamepulse-dev.local"] and outputs["namespace_id"] != old_id
    assert env.recorded["namespace/gamepulse-dev.local"] == moved["vpc"]

    harness.run_step(STEP, manifest, env.aws, env.upstream, env.recorded)


def log_group_names(aws) -> list[str]:
    groups = aws.client("logs").describe_log_groups(logGroupNamePrefix="/ecs/gamepulse-dev/")["logGroups"]
    return sorted(g["logGroupName"] for g in groups)


def namespaces(aws) -> list[str]:
    return [n["Name"] for n in aws.client("servicediscovery").list_namespaces()["Namespaces"]]


def cluster_status(aws) -> str:
    return aws.client("ecs").describe_clusters(clusters=["gamepulse-dev"])["clusters"][0]["status"]

