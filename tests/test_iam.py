"""Step `iam`: least-privilege documents and pure planning without AWS, then apply / drift /
destroy / crash against moto (with AWS-managed policies loaded)."""
from __future__ import annotations

import json
import threading
import urllib.parse
from collections import Counter

import pytest
from botocore.awsrequest import AWSResponse

from orchestrator.errors import OrchestratorError
from orchestrator.model import KNOWN_AFTER_APPLY
from orchestrator.schema import IamSpec, TaskRoleSpec
from steps.iam import IamFacts, IamStep, ObservedRole, normalise_policy
from tests import harness

STEP = IamStep()
ACCOUNT = "123456789012"
EXECUTION_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
SECRET_ARNS = {"db-connection": f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:gamepulse/dev/db-connection-AbCdEf",
               "grafana-admin": f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:gamepulse/dev/grafana-admin-GhIjKl"}
BUCKETS = {"config": f"gamepulse-dev-config-{ACCOUNT}", "loki-chunks": f"gamepulse-dev-loki-chunks-{ACCOUNT}"}
UPSTREAM = {"secrets": {"arns": SECRET_ARNS}, "storage": {"buckets": BUCKETS}}
TASK_ROLES = ["gamepulse", "grafana", "jaeger", "loki", "otel-collector", "prometheus"]
ROLE_NAMES = sorted(["gamepulse-dev-execution"] + [f"gamepulse-dev-task-{name}" for name in TASK_ROLES])
LOKI_ONLY = IamSpec(task_roles={"loki": TaskRoleSpec(grants=["config-read", "loki-bucket"])})


# -- policy documents and pure planning ---------------------------------------------------------


def desired_for(manifest, upstream=UPSTREAM):
    return STEP.desired(manifest, harness.inputs(STEP, upstream, account_id=ACCOUNT))


def statements(role) -> dict[str, dict]:
    [document] = role.inline_policies.values()
    return {s["Sid"]: s for s in document["Statement"]}


def as_found(role, **changed) -> ObservedRole:
    """What observe reports for a role exactly as desired."""
    found = dict(name=role.name, arn=f"arn:aws:iam::{ACCOUNT}:role/{role.name}",
                 trust_policy=normalise_policy(role.trust_policy),
                 inline_policies={name: normalise_policy(doc) for name, doc in role.inline_policies.items()},
                 managed_policies=set(role.managed_policies), tags=dict(role.tags))
    return ObservedRole(**{**found, **changed})


def facts_for(desired) -> IamFacts:
    return IamFacts(owned={name: as_found(role) for name, role in desired.roles.items()})


def test_the_execution_role_reads_exactly_the_platform_secrets(manifest):
    role = desired_for(manifest).roles["gamepulse-dev-execution"]
    assert role.managed_policies == (EXECUTION_POLICY,)
    assert list(role.inline_policies) == ["read-secrets"]
    [statement] = role.inline_policies["read-secrets"]["Statement"]
    assert statement["Action"] == ["secretsmanager:GetSecretValue"]
    assert statement["Resource"] == sorted(SECRET_ARNS.values())
    trust = role.trust_policy["Statement"][0]
    assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"} and trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


def test_task_roles_get_only_what_their_grants_name(manifest):
    roles = {role.key: role for role in desired_for(manifest).roles.values()}
    config = f"arn:aws:s3:::{BUCKETS['config']}"
    app = statements(roles["gamepulse"])
    assert app == {"ConfigBundleRead": {"Sid": "ConfigBundleRead", "Effect": "Allow", "Action": ["s3:GetObject"],
                                        "Resource": f"{config}/gamepulse/*"},
                   "ConfigBundleList": {"Sid": "ConfigBundleList", "Effect": "Allow", "Action": ["s3:ListBucket"],
                                        "Resource": config,
                                        "Condition": {"StringLike": {"s3:prefix": ["gamepulse/*"]}}}}
    loki = statements(roles["loki"])
    loki_bucket = f"arn:aws:s3:::{BUCKETS['loki-chunks']}"
    assert loki["LokiChunksReadWrite"]["Resource"] == f"{loki_bucket}/*"
    assert sorted(loki["LokiChunksReadWrite"]["Action"]) == ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]
    assert loki["LokiChunksList"]["Resource"] == loki_bucket
    prometheus = statements(roles["prometheus"])
    cluster = f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/gamepulse-dev"
    assert prometheus["EcsDescribeCluster"]["Resource"] == cluster
    assert prometheus["EcsListInCluster"]["Condition"] == {"ArnEquals": {"ecs:cluster": cluster}}
    # Prometheus's ECS discovery (aws_sd_configs, role ecs) also checks its credentials on the
    # cluster `default` and reads each task's network interface; Grafana does neither.
    assert set(prometheus) == set(statements(roles["grafana"])) | {"EcsCredentialCheck", "TaskNetworkInterfaces"}
    assert prometheus["EcsCredentialCheck"]["Resource"] == f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/default"
    assert prometheus["TaskNetworkInterfaces"] == {"Sid": "TaskNetworkInterfaces", "Effect": "Allow",
                                                   "Action": ["ec2:DescribeNetworkInterfaces"], "Resource": "*"}
    assert "LokiChunksReadWrite" not in prometheus and "CloudWatchRead" not in app
    for role in roles.values():  # least privilege: no wildcard actions, "*" resources only where AWS needs them
        for statement in (s for doc in role.inline_policies.values() for s in doc["Statement"]):
            assert statement["Effect"] == "Allow"
            assert not any("*" in action for action in statement["Action"])
            if statement["Resource"] == "*":
                assert statement["Sid"] in ("CloudWatchRead", "EcsListInCluster", "TaskNetworkInterfaces")
                assert all(a.split(":")[1].startswith(("Describe", "Get", "List")) for a in statement["Action"])


def test_a_plan_from_nothing_shows_unknown_upstream_values_without_failing(manifest):
    desired = desired_for(manifest, upstream={})
    changes = STEP.plan(desired, IamFacts(), {})
    secrets_policy = next(c for c in changes if c.name == "gamepulse-dev-execution/read-secrets")
    assert secrets_policy.diffs[0].new["Statement"][0]["Resource"] == [KNOWN_AFTER_APPLY]
    grants = next(c for c in changes if c.name == "gamepulse-dev-task-gamepulse/grants")
    assert f"arn:aws:s3:::{KNOWN_AFTER_APPLY}/gamepulse/*" in json.dumps(grants.to_dict())


def test_plan_from_nothing_creates_each_role_before_its_policies(manifest):
    changes = STEP.plan(desired_for(manifest), IamFacts(), {})
    keys = [c.key for c in changes]
    assert keys[:3] == ["role/gamepulse-dev-execution", "inline_policy/gamepulse-dev-execution/read-secrets",
                        "managed_policy/gamepulse-dev-execution/AmazonECSTaskExecutionRolePolicy"]
    assert [c.name for c in changes if c.kind == "role"] == ROLE_NAMES
    assert all(keys.index(f"role/{c.name.split('/')[0]}") < keys.index(c.key) for c in changes if c.kind != "role")
    assert {c.calls for c in changes} == {("iam:CreateRole",), ("iam:PutRolePolicy",), ("iam:AttachRolePolicy",)}
    assert len(changes) == 7 + 7 + 1


def test_policies_are_compared_by_meaning():
    written = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "arn:aws:s3:::b"},
        {"Effect": "Allow", "Action": ["s3:PutObject", "s3:GetObject"], "Resource": ["arn:aws:s3:::b/*"],
         "Condition": {"StringEquals": {"aws:SourceAccount": ACCOUNT}}}]}
    read_back = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": "arn:aws:s3:::b/*",
         "Condition": {"StringEquals": {"aws:SourceAccount": [ACCOUNT]}}},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": ["arn:aws:s3:::b"]}]}
    url_encoded = urllib.parse.quote(json.dumps(read_back))
    assert normalise_policy(written) == normalise_policy(read_back) == normalise_policy(url_encoded)
    single = {"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "s3:ListBucket",
                                                     "Resource": "arn:aws:s3:::b"}}
    assert normalise_policy(single) == normalise_policy({**single, "Statement": [single["Statement"]]})
    assert normalise_policy(written) != normalise_policy({**written, "Statement": written["Statement"][:1]})


def test_no_change_when_everything_matches(manifest):
    desired = desired_for(manifest)
    recorded = {f"role/{name}": {"description": role.description} for name, role in desired.roles.items()}
    assert STEP.plan(desired, facts_for(desired), recorded) == []


def test_each_kind_of_drift_is_its_own_repair(manifest):
    desired = desired_for(manifest)
    facts = facts_for(desired)
    loki = facts.owned["gamepulse-dev-task-loki"]
    loki.inline_policies["grants"]["Statement"].append(
        {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["*"]})  # added by hand
    loki.inline_policies["debug"] = normalise_policy({"Statement": []})  # not ours
    execution = facts.owned["gamepulse-dev-execution"]
    execution.managed_policies = {"arn:aws:iam::aws:policy/AdministratorAccess"}
    execution.trust_policy = normalise_policy({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    execution.tags = {**execution.tags, "project": "hijacked", "compliance:scope": "pci"}  # the latter not ours
    facts.owned["gamepulse-dev-task-grafana"].tags["finance:budget"] = "b-7"  # not ours: no change
    recorded = {"role/gamepulse-dev-task-jaeger": {"description": "an older description"}}

    changes = {(c.action, c.key): c for c in STEP.plan(desired, facts, recorded)}
    assert set(changes) == {
        ("update", "role/gamepulse-dev-execution"),
        ("create", "managed_policy/gamepulse-dev-execution/AmazonECSTaskExecutionRolePolicy"),
        ("delete", "managed_policy/gamepulse-dev-execution/AdministratorAccess"),
        ("update", "inline_policy/gamepulse-dev-task-loki/grants"),
        ("delete", "inline_policy/gamepulse-dev-task-loki/debug"),
        ("update", "role/gamepulse-dev-task-jaeger")}
    execution_change = changes[("update", "role/gamepulse-dev-execution")]
    assert execution_change.calls == ("iam:UpdateAssumeRolePolicy", "iam:TagRole")
    assert execution_change.tags_to_set() == {"project": "gamepulse"}
    assert [(d.old, d.new) for d in execution_change.diffs if d.field == "tags"] == [
        ({"project": "hijacked"}, {"project": "gamepulse"})]
    assert changes[("update", "role/gamepulse-dev-task-jaeger")].calls == ("iam:UpdateRole",)
    assert changes[("delete", "inline_policy/gamepulse-dev-task-loki/debug")].calls == ("iam:DeleteRolePolicy",)
    assert changes[("delete", "managed_policy/gamepulse-dev-execution/AdministratorAccess")].calls == (
        "iam:DetachRolePolicy",)


def test_a_role_left_out_of_the_manifest_loses_its_policies_before_it_goes(manifest):
    desired = desired_for(manifest)
    facts = facts_for(desired)
    smaller = desired_for(manifest.model_copy(update={"iam": IamSpec(task_roles={
        name: spec for name, spec in manifest.iam.task_roles.items() if name != "loki"})}))
    changes = STEP.plan(smaller, facts, {})
    assert [(c.action, c.key) for c in changes] == [("delete", "inline_policy/gamepulse-dev-task-loki/grants"),
                                                    ("delete", "role/gamepulse-dev-task-loki")]


def test_a_role_of_our_name_without_our_tags_is_refused(manifest):
    desired = desired_for(manifest)
    with pytest.raises(OrchestratorError, match="IAM role gamepulse-dev-task-loki exists but does not carry this environment.s ownership tags"):
        STEP.plan(desired, IamFacts(foreign={"gamepulse-dev-task-loki"}), {})


def test_destroy_detaches_and_deletes_policies_then_each_role(manifest):
    changes = STEP.plan_destroy(facts_for(desired_for(manifest)))
    assert [(c.action, c.key) for c in changes[:3]] == [
        ("delete", "managed_policy/gamepulse-dev-execution/AmazonECSTaskExecutionRolePolicy"),
        ("delete", "inline_policy/gamepulse-dev-execution/read-secrets"), ("delete", "role/gamepulse-dev-execution")]
    assert [c.name for c in changes if c.kind == "role"] == ROLE_NAMES
    assert all(c.blocked is None for c in changes)


# -- against moto -------------------------------------------------------------------------------

#: moto gap: AWS-managed policies (AmazonECSTaskExecutionRolePolicy) exist only when loaded (slower).
needs_managed_policies = pytest.mark.managed_policies


@pytest.fixture
def iam(aws):
    return aws.client("iam")


def role_names(iam, prefix="gamepulse-dev-") -> list[str]:
    return sorted(r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith(prefix))


def inline(iam, role: str, policy: str) -> dict:
    return iam.get_role_policy(RoleName=role, PolicyName=policy)["PolicyDocument"]


@needs_managed_policies
def test_apply_creates_roles_with_trust_policies_and_tags_then_changes_nothing(manifest, aws, iam):
    applied, outputs, _ = harness.run_step(STEP, manifest, aws, upstream=UPSTREAM)
    assert len(applied) == 15
    assert role_names(iam) == ROLE_NAMES

    execution = iam.get_role(RoleName="gamepulse-dev-execution")["Role"]
    assert normalise_policy(execution["AssumeRolePolicyDocument"]) == normalise_policy(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                                                 "Action": "sts:AssumeRole",
                                                 "Condition": {"StringEquals": {"aws:SourceAccount": ACCOUNT}}}]})
    tags = {t["Key"]: t["Value"] for t in execution["Tags"]}
    assert tags["orchestrator:step"] == "iam" and tags["orchestrator:env"] == "dev" and tags["project"] == "gamepulse"
    attached = iam.list_attached_role_policies(RoleName="gamepulse-dev-execution")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [EXECUTION_POLICY]
    secrets_policy = inline(iam, "gamepulse-dev-execution", "read-secrets")
    assert secrets_policy["Statement"][0]["Resource"] == sorted(SECRET_ARNS.values())
    assert iam.list_role_policies(RoleName="gamepulse-dev-task-loki")["PolicyNames"] == ["grants"]
    assert iam.list_attached_role_policies(RoleName="gamepulse-dev-task-loki")["AttachedPolicies"] == []

    assert outputs["execution_role_arn"] == execution["Arn"]
    assert sorted(outputs["task_role_arns"]) == TASK_ROLES
    assert outputs["task_role_arns"]["loki"] == iam.get_role(RoleName="gamepulse-dev-task-loki")["Role"]["Arn"]
    assert outputs["role_names"] == ROLE_NAMES
    assert sorted(set(harness.mutations(aws))) == ["iam:AttachRolePolicy", "iam:CreateRole", "iam:PutRolePolicy"]

    writes, before = len(harness.mutations(aws)), len(aws.ledger.calls)
    recorded = {c.key: c.record for c in applied if c.record is not None}
    again, outputs_again, _ = harness.run_step(STEP, manifest, aws, upstream=UPSTREAM, recorded=recorded)
    assert again == [] and len(harness.mutations(aws)) == writes and outputs_again == outputs
    # Read by name, four reads a role (each role has one inline policy), plus the one page of role names.
    assert Counter(c.operation for c in harness.calls_since(aws, before, STEP.name)) == {
        "ListRoles": 1, "GetRole": 7, "ListRolePolicies": 7, "GetRolePolicy": 7, "ListAttachedRolePolicies": 7}


@needs_managed_policies
def test_drift_is_shown_by_plan_then_repaired(manifest, aws, iam):
    harness.run_step(STEP, manifest, aws, upstream=UPSTREAM)
    loki = inline(iam, "gamepulse-dev-task-loki", "grants")
    loki["Statement"].append({"Effect": "Allow", "Action": "s3:*", "Resource": "*"})
    iam.put_role_policy(RoleName="gamepulse-dev-task-loki", PolicyName="grants", PolicyDocument=json.dumps(loki))
    iam.put_role_policy(RoleName="gamepulse-dev-task-grafana", PolicyName="debug", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iam:*", "Resource": "*"}]}))
    iam.detach_role_policy(RoleName="gamepulse-dev-execution", PolicyArn=EXECUTION_POLICY)
    iam.attach_role_policy(RoleName="gamepulse-dev-task-jaeger", PolicyArn="arn:aws:iam::aws:policy/ReadOnlyAccess")
    iam.update_assume_role_policy(RoleName="gamepulse-dev-task-gamepulse", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"},
                                                 "Action": "sts:AssumeRole"}]}))
    writes = len(harness.mutations(aws))

    plan = harness.plan_step(STEP, manifest, aws, upstream=UPSTREAM)
    assert len(harness.mutations(aws)) == writes
    assert sorted((c.action, c.key) for c in plan) == [
        ("create", "managed_policy/gamepulse-dev-execution/AmazonECSTaskExecutionRolePolicy"),
        ("delete", "inline_policy/gamepulse-dev-task-grafana/debug"),
        ("delete", "managed_policy/gamepulse-dev-task-jaeger/ReadOnlyAccess"),
        ("update", "inline_policy/gamepulse-dev-task-loki/grants"),
        ("update", "role/gamepulse-dev-task-gamepulse")]

    harness.run_step(STEP, manifest, aws, upstream=UPSTREAM)
    assert "s3:*" not in json.dumps(inline(iam, "gamepulse-dev-task-loki", "grants"))
    assert iam.list_role_policies(RoleName="gamepulse-dev-task-grafana")["PolicyNames"] == ["grants"]
    assert [p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName="gamepulse-dev-execution")[
        "AttachedPolicies"]] == [EXECUTION_POLICY]
    assert iam.list_attached_role_policies(RoleName="gamepulse-dev-task-jaeger")["AttachedPolicies"] == []
    trust = iam.get_role(RoleName="gamepulse-dev-task-gamepulse")["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert harness.plan_step(STEP, manifest, aws, upstream=UPSTREAM) == []


@needs_managed_policies
def test_destroy_removes_our_roles_only(manifest, aws, iam):
    harness.run_step(STEP, manifest, aws, upstream=UPSTREAM)
    trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    iam.create_role(RoleName="gamepulse-dev-task-legacy", AssumeRolePolicyDocument=trust)  # look-alike, untagged
    iam.put_role_policy(RoleName="gamepulse-dev-task-legacy", PolicyName="grants", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}))
    iam.create_role(RoleName="gamepulse-dev-autoscaling", AssumeRolePolicyDocument=trust, Tags=[
        {"Key": "orchestrator:app", "Value": "gamepulse"}, {"Key": "orchestrator:env", "Value": "dev"},
        {"Key": "orchestrator:step", "Value": "services"}])  # another step's role

    deleted, _, _ = harness.run_step(STEP, manifest, aws, destroy=True)
    assert [c.name for c in deleted if c.kind == "role"] == ROLE_NAMES
    assert role_names(iam) == ["gamepulse-dev-autoscaling", "gamepulse-dev-task-legacy"]
    assert iam.list_role_policies(RoleName="gamepulse-dev-task-legacy")["PolicyNames"] == ["grants"]
    assert harness.run_step(STEP, manifest, aws, destroy=True)[0] == []


def test_a_role_of_our_name_made_by_hand_is_refused_untouched(manifest, aws, iam):
    trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    iam.create_role(RoleName="gamepulse-dev-execution", AssumeRolePolicyDocument=trust)
    writes = len(harness.mutations(aws))
    with pytest.raises(OrchestratorError, match="IAM role gamepulse-dev-execution exists but does not carry this environment.s ownership tags"):
        harness.run_step(STEP, manifest, aws, upstream=UPSTREAM)
    assert len(harness.mutations(aws)) == writes


def test_applying_before_upstream_values_are_known_fails_clearly(manifest, aws, iam):
    with pytest.raises(OrchestratorError, match="inline policy read-secrets of IAM role gamepulse-dev-execution "
                                                "refers to values not known yet"):
        harness.run_step(STEP, manifest, aws, upstream={})
    assert iam.list_role_policies(RoleName="gamepulse-dev-execution")["PolicyNames"] == []


@needs_managed_policies
def test_a_run_killed_after_any_mutating_call_converges_without_duplicates(manifest, aws, iam):
    smaller = manifest.model_copy(update={"iam": LOKI_ONLY})
    crashing, rerun = harness.forget_crash(aws), harness.forget_crash(aws)
    calls = 5  # 2 × CreateRole, 2 × PutRolePolicy, 1 × AttachRolePolicy
    for n in range(1, calls + 1):
        env = smaller.model_copy(update={"environment": f"crash{n}"})  # a clean slate, cheaper than a reset
        accepted = harness.crash_after(crashing, n)
        with pytest.raises(harness.Crash):
            harness.run_step(STEP, env, crashing, upstream=UPSTREAM)

        writes = len(harness.mutations(rerun))
        harness.run_step(STEP, env, rerun, upstream=UPSTREAM)
        # The roles are made together: the calls in flight beside the n-th were made as well.
        assert accepted() >= n
        assert len(harness.mutations(rerun)) - writes == calls - accepted()
        assert role_names(iam, f"gamepulse-crash{n}-") == [f"gamepulse-crash{n}-execution",
                                                            f"gamepulse-crash{n}-task-loki"]
        assert iam.list_role_policies(RoleName=f"gamepulse-crash{n}-task-loki")["PolicyNames"] == ["grants"]
        assert len(iam.list_attached_role_policies(RoleName=f"gamepulse-crash{n}-execution")["AttachedPolicies"]) == 1
        assert harness.plan_step(STEP, env, rerun, upstream=UPSTREAM) == []


@needs_managed_policies
def test_a_tag_added_by_someone_else_survives_an_apply(manifest, aws, iam):
    applied, _, _ = harness.run_step(STEP, manifest, aws, upstream=UPSTREAM)
    recorded = {c.key: c.record for c in applied if c.record is not None}
    iam.tag_role(RoleName="gamepulse-dev-task-loki", Tags=[{"Key": "compliance:scope", "Value": "pci"}])
    assert harness.plan_step(STEP, manifest, aws, upstream=UPSTREAM, recorded=recorded) == []
    assert harness.run_step(STEP, manifest, aws, upstream=UPSTREAM, recorded=recorded)[0] == []
    tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName="gamepulse-dev-task-loki")["Tags"]}
    assert tags["compliance:scope"] == "pci"


def lagging_role_list(aws, roles: int) -> None:
    """The next observe of `roles` roles sees none of them, as IAM's eventually consistent reads
    may just after a change: ListRoles answers no role, GetRole NoSuchEntity."""
    calls = Counter()

    def stale_list(**kwargs):
        calls["ListRoles"] += 1
        if calls["ListRoles"] == 1:
            return AWSResponse("https://iam.amazonaws.com/", 200, {}, None), {"Roles": [], "IsTruncated": False}
        return None

    def stale_get(**kwargs):
        calls["GetRole"] += 1
        if calls["GetRole"] <= roles:
            return AWSResponse("https://iam.amazonaws.com/", 404, {}, None), {
                "Error": {"Code": "NoSuchEntity", "Message": "The role cannot be found."},
                "ResponseMetadata": {"HTTPStatusCode": 404}}
        return None

    aws.register("before-call.iam.ListRoles", stale_list)
    aws.register("before-call.iam.GetRole", stale_get)


@needs_managed_policies
def test_a_quick_re_apply_on_a_lagging_list_adopts_our_roles(manifest, aws, iam):
    smaller = manifest.model_copy(update={"iam": LOKI_ONLY})
    _, first, _ = harness.run_step(STEP, smaller, aws, upstream=UPSTREAM)
    iam.tag_role(RoleName="gamepulse-dev-task-loki", Tags=[{"Key": "project", "Value": "hijacked"},
                                                          {"Key": "compliance:scope", "Value": "pci"}])
    writes = len(harness.mutations(aws))

    lagging_role_list(aws, roles=2)
    applied, outputs, _ = harness.run_step(STEP, smaller, aws, upstream=UPSTREAM, recovering=("TagRole",))
    assert [(c.action, c.kind) for c in applied] == [("create", "role"), ("create", "inline_policy"),
                                                     ("create", "managed_policy"), ("create", "role"),
                                                     ("create", "inline_policy")]
    assert sorted(harness.mutations(aws)[writes:]) == sorted([  # the roles are made together
        "iam:CreateRole", "iam:PutRolePolicy", "iam:AttachRolePolicy",
        "iam:CreateRole", "iam:TagRole", "iam:PutRolePolicy"])  # the adopted loki role had a tag drift
    assert outputs == first and role_names(iam) == ["gamepulse-dev-execution", "gamepulse-dev-task-loki"]
    tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName="gamepulse-dev-task-loki")["Tags"]}
    assert tags["project"] == "gamepulse" and tags["compliance:scope"] == "pci"
    assert iam.list_role_policies(RoleName="gamepulse-dev-task-loki")["PolicyNames"] == ["grants"]
    assert harness.plan_step(STEP, smaller, aws, upstream=UPSTREAM) == []


def test_a_lagging_list_hiding_a_role_of_someone_else_still_refuses_it(manifest, aws, iam):
    trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    iam.create_role(RoleName="gamepulse-dev-execution", AssumeRolePolicyDocument=trust)
    lagging_role_list(aws, roles=7)
    with pytest.raises(OrchestratorError, match="IAM role gamepulse-dev-execution exists but does not carry"):
        harness.run_step(STEP, manifest, aws, upstream=UPSTREAM)
    # By hand, then ours: refused. (The other roles, made beside it, are ours and recorded.)
    assert "iam:TagRole" not in harness.mutations(aws) and "iam:UpdateAssumeRolePolicy" not in harness.mutations(aws)
    assert "Tags" not in iam.get_role(RoleName="gamepulse-dev-execution")["Role"]
    assert iam.list_role_policies(RoleName="gamepulse-dev-execution")["PolicyNames"] == []


def foreign_roles(iam, count: int) -> None:
    """Roles of other environments and other tools, some named like ours."""
    trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    for i in range(count):
        name = (f"gamepulse-{('staging', 'prod', 'devx')[i % 3]}-task-{i}" if i % 2 else f"team-{i}-lambda-role")
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust, Tags=[
            {"Key": "orchestrator:app", "Value": "gamepulse"}, {"Key": "orchestrator:env", "Value": "staging"}])
        iam.put_role_policy(RoleName=name, PolicyName="grants", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}))


@needs_managed_policies
def test_roles_of_others_cost_no_read_and_are_never_named(manifest, aws, iam):
    harness.run_step(STEP, manifest, aws, upstream=UPSTREAM)
    before = len(aws.ledger.calls)
    harness.run_step(STEP, manifest, aws, upstream=UPSTREAM)
    alone = len(aws.ledger.calls) - before
    foreign_roles(iam, 60)
    named: list[str] = []
    aws.register("before-parameter-build.iam", lambda params, **kwargs: named.append(params.get("RoleName", "")))

    before = len(aws.ledger.calls)
    assert harness.run_step(STEP, manifest, aws, upstream=UPSTREAM)[0] == []
    assert len(aws.ledger.calls) - before == alone
    assert {name for name in named if name} == set(ROLE_NAMES)


@needs_managed_policies
def test_a_roles_reads_go_out_together_and_an_inline_policy_added_by_hand_is_still_read(manifest, aws, iam):
    """An unchanged role costs one round trip, not four in a row: its policy reads are sent while
    its GetRole is still unanswered. What the manifest cannot foresee (a policy added by hand) is
    read after ListRolePolicies names it, and planned for deletion as before."""
    harness.run_step(STEP, manifest, aws, upstream=UPSTREAM)
    iam.put_role_policy(RoleName="gamepulse-dev-task-loki", PolicyName="debug", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    sent: dict[str, set[str]] = {}  # operations sent, by role
    every_read_sent = threading.Event()  # the execution role's policy reads, beside its GetRole
    sent_lock = threading.Lock()

    def note(params, model, **kwargs):
        with sent_lock:
            sent.setdefault(params["body"].get("RoleName", ""), set()).add(model.name)
            if {"ListRolePolicies", "GetRolePolicy", "ListAttachedRolePolicies"} <= sent.get(
                    "gamepulse-dev-execution", set()):
                every_read_sent.set()

    others_came_first = []

    def answered_once_the_others_are_sent(params, **kwargs):
        if params["body"]["RoleName"] == "gamepulse-dev-execution":  # one by one, they never come first
            others_came_first.append(every_read_sent.wait(timeout=10))

    aws.register("before-call.iam", note)
    aws.register("before-call.iam.GetRole", answered_once_the_others_are_sent)
    before = len(aws.ledger.calls)
    changes = harness.plan_step(STEP, manifest, aws, upstream=UPSTREAM)
    assert others_came_first == [True]
    assert [(c.action, c.key) for c in changes] == [("delete", "inline_policy/gamepulse-dev-task-loki/debug")]
    assert Counter(c.operation for c in harness.calls_since(aws, before, STEP.name)) == {
        "ListRoles": 1, "GetRole": 7, "ListRolePolicies": 7, "GetRolePolicy": 8, "ListAttachedRolePolicies": 7}


def test_a_first_deploy_reads_each_missing_role_once(manifest, aws):
    """Roles ListRoles does not show get their GetRole only: no policy read of a role that is not there."""
    before = len(aws.ledger.calls)
    harness.plan_step(STEP, manifest, aws, upstream=UPSTREAM)
    assert Counter(c.operation for c in harness.calls_since(aws, before, STEP.name)) == {"ListRoles": 1, "GetRole": 7}


@needs_managed_policies
def test_a_role_removed_from_the_manifest_is_found_by_its_name_and_deleted(manifest, aws, iam):
    harness.run_step(STEP, manifest, aws, upstream=UPSTREAM)
    foreign_roles(iam, 6)
    smaller = manifest.model_copy(update={"iam": LOKI_ONLY})
    applied, _, _ = harness.run_step(STEP, smaller, aws, upstream=UPSTREAM)
    assert sorted(c.name for c in applied if c.kind == "role") == sorted(
        name for name in ROLE_NAMES if name not in ("gamepulse-dev-execution", "gamepulse-dev-task-loki"))
    assert role_names(iam) == ["gamepulse-dev-execution", "gamepulse-dev-task-loki"]
    assert len(role_names(iam, prefix="gamepulse-staging-")) == 1


def test_an_aws_error_of_a_role_read_at_once_surfaces_as_when_read_one_by_one(manifest, aws, iam, monkeypatch):
    from botocore.exceptions import ClientError

    from orchestrator import aws as aws_module
    from orchestrator import tags as tagging
    from orchestrator.context import StepContext

    trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    owned = [{"Key": k, "Value": v} for k, v in tagging.ownership_tags("gamepulse", "dev", "iam", {}).items()]
    for name in ROLE_NAMES:
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust, Tags=owned)
        iam.put_role_policy(RoleName=name, PolicyName="grants", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}))
    denied = ROLE_NAMES[2:]  # several roles fail; the loop met the first of them in name order first
    other_denied, first_waits = threading.Event(), threading.Event()

    def access_denied(params, **kwargs):
        role = params["body"]["RoleName"]  # the query protocol's serialised parameters
        if role == denied[0] and first_waits.is_set():
            other_denied.wait(timeout=30)  # at once, the first role's error comes after another one's
        elif role in denied:
            other_denied.set()
        if role in denied:
            return AWSResponse("https://iam.amazonaws.com/", 403, {}, None), {
                "Error": {"Code": "AccessDenied", "Message": f"not authorized to read {role}"},
                "ResponseMetadata": {"HTTPStatusCode": 403}}
        return None

    aws.register("before-call.iam.GetRolePolicy", access_denied)
    ctx = StepContext(aws=aws, manifest=manifest, step="iam")
    desired = desired_for(manifest)

    def error_of_observe() -> ClientError:
        with pytest.raises(ClientError) as raised:
            STEP.observe(ctx, desired)
        return raised.value

    monkeypatch.setitem(aws_module.CONCURRENCY, "iam", 1)  # one read at a time, as before
    one_by_one = error_of_observe()
    monkeypatch.setitem(aws_module.CONCURRENCY, "iam", 4)
    other_denied.clear()
    first_waits.set()
    at_once = error_of_observe()
    assert str(at_once) == str(one_by_one)
    assert f"not authorized to read {denied[0]}" in str(at_once) and "GetRolePolicy" in str(at_once)
