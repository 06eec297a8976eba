"""Step alb: pure planner tests, then moto-backed apply / drift / HTTPS / replacement / destroy /
crash tests."""
from __future__ import annotations

import dataclasses
import datetime

import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.model import KNOWN_AFTER_APPLY, Unknown
from orchestrator.tags import tag_dict
from steps.alb import (REDIRECT_TO_HTTPS, Action, AlbFacts, AlbStep, ObservedListener, ObservedLoadBalancer,
                       ObservedRule, ObservedTargetGroup)
from tests import harness

STEP = AlbStep()
OWNERSHIP = {"orchestrator:app": "gamepulse", "orchestrator:env": "dev", "orchestrator:step": "alb"}
UPSTREAM = {"vpc": {"vpc_id": "vpc-1", "public_subnet_ids": ["subnet-b", "subnet-a"],
                    "private_subnet_ids": ["subnet-c", "subnet-d"],
                    "security_groups": {"alb": "sg-alb", "app": "sg-app"}}}
CERT = "arn:aws:acm:us-east-1:123456789012:certificate/11111111-2222-4333-8444-555555555555"


def with_lb(manifest, **update):
    return manifest.model_copy(update={"load_balancer": manifest.load_balancer.model_copy(update=update)})


def with_target_group(manifest, name, **update):
    spec = manifest.load_balancer
    groups = {**spec.target_groups, name: spec.target_groups[name].model_copy(update=update)}
    return with_lb(manifest, target_groups=groups)


def with_health_check(manifest, name, **update):
    health = manifest.load_balancer.target_groups[name].health_check.model_copy(update=update)
    return with_target_group(manifest, name, health_check=health)


def desired_for(manifest, upstream=UPSTREAM):
    return STEP.desired(manifest, harness.inputs(STEP, upstream))


def observed_matching(desired) -> AlbFacts:
    """What AWS would report once `desired` is applied."""
    lb, tags = desired.load_balancer, desired.tags
    facts = AlbFacts(load_balancer=ObservedLoadBalancer(
        "arn:lb", lb.name, "dns", "zone", True, lb.subnets, lb.security_groups, lb.idle_timeout_seconds,
        lb.deletion_protection, dict(tags)))
    for group in desired.target_groups:
        facts.target_groups[group.name] = ObservedTargetGroup(
            f"arn:tg/{group.name}", group.name, group.protocol, group.port, group.vpc_id, True,
            group.health_check, group.deregistration_delay_seconds, dict(tags))
    for listener in desired.listeners:
        facts.listeners[listener.port] = ObservedListener(
            f"arn:listener/{listener.port}", listener.port, listener.protocol, listener.default_action, True,
            listener.certificate_arn, listener.ssl_policy, dict(tags))
    facts.rules = [ObservedRule(f"arn:rule/{rule.priority}", rule.port, rule.priority, rule.paths, rule.action, True,
                                dict(tags))
                   for rule in desired.rules]
    return facts


def summary(changes) -> list[tuple]:
    return [(c.action, c.kind, c.name, c.calls) for c in changes]


# --- pure planning ---------------------------------------------------------------------------


def test_desired_resolves_names_subnets_and_the_http_listener(manifest):
    desired = desired_for(manifest)
    lb = desired.load_balancer
    assert (lb.name, lb.subnets, lb.security_groups) == ("gamepulse-dev", ("subnet-a", "subnet-b"), ("sg-alb",))
    assert (lb.idle_timeout_seconds, lb.deletion_protection) == (60, False)
    gamepulse, grafana = desired.target_groups
    assert gamepulse.name.startswith("gamepulse-dev-gamepulse-") and len(gamepulse.name) <= 32
    assert (gamepulse.port, gamepulse.protocol, gamepulse.health_check.path) == (8080, "HTTP", "/health")
    assert (grafana.port, grafana.health_check.path, grafana.health_check.matcher) == (3000, "/grafana/api/health", "200")
    [http] = desired.listeners
    assert (http.port, http.protocol, http.default_action) == (80, "HTTP", Action("forward", gamepulse.name))
    [rule] = desired.rules
    assert (rule.port, rule.priority, rule.paths, rule.action) == \
        (80, 10, ("/grafana*",), Action("forward", grafana.name))


def test_target_group_names_change_exactly_with_protocol_port_or_vpc(manifest):
    name = desired_for(manifest).target_groups[0].name
    assert desired_for(with_health_check(manifest, "gamepulse", path="/ready")).target_groups[0].name == name
    assert desired_for(with_target_group(manifest, "gamepulse", port=8081)).target_groups[0].name != name
    other_vpc = {"vpc": {**UPSTREAM["vpc"], "vpc_id": "vpc-2"}}
    assert desired_for(manifest, other_vpc).target_groups[0].name != name


def test_with_a_certificate_http_redirects_and_https_carries_the_rules(manifest):
    desired = desired_for(with_lb(manifest, certificate_arn=CERT))
    http, https = desired.listeners
    assert (http.port, http.default_action) == (80, REDIRECT_TO_HTTPS)
    assert (https.port, https.protocol, https.certificate_arn, https.ssl_policy) == \
        (443, "HTTPS", CERT, "ELBSecurityPolicy-TLS13-1-2-2021-06")
    assert [rule.port for rule in desired.rules] == [443]


def test_a_name_longer_than_aws_allows_is_refused_by_name(manifest):
    spec = manifest.load_balancer
    long = with_lb(manifest, target_groups={**spec.target_groups,
                                            "a-very-long-target-name": spec.target_groups["grafana"]})
    with pytest.raises(OrchestratorError, match="target group name 'gamepulse-dev-a-very-long-target-name-0000'"):
        desired_for(long)


def test_plan_from_nothing_creates_in_dependency_order_with_unknowns(manifest):
    changes = STEP.plan(desired_for(manifest, {}), AlbFacts(), {})
    assert [(c.action, c.kind, c.name) for c in changes] == [
        ("create", "load_balancer", "gamepulse-dev"), ("create", "target_group", "gamepulse"),
        ("create", "target_group", "grafana"), ("create", "listener", "http"), ("create", "rule", "http-10")]
    [subnets] = {d.field: d.new for d in changes[0].diffs}["subnets"]  # never sent: a list of one Unknown
    assert isinstance(subnets, Unknown) and subnets.source == "vpc.public_subnet_ids"
    assert {d.field: d.new for d in changes[1].diffs}["name"] == KNOWN_AFTER_APPLY


def test_plan_is_empty_when_everything_matches(manifest):
    desired = desired_for(manifest)
    assert STEP.plan(desired, observed_matching(desired), {}) == []


def test_health_check_and_deregistration_delay_changes_are_modified_in_place(manifest):
    changed = with_target_group(with_health_check(manifest, "grafana", path="/healthz", interval_seconds=10),
                                "grafana", deregistration_delay_seconds=5)
    observed = observed_matching(desired_for(manifest))
    [change] = STEP.plan(desired_for(changed), observed, {})
    assert (change.action, change.kind, change.name) == ("update", "target_group", "grafana")
    assert change.calls == ("elbv2:ModifyTargetGroup", "elbv2:ModifyTargetGroupAttributes")
    assert {(d.field, d.old, d.new) for d in change.diffs} == {
        ("health_check.path", "/grafana/api/health", "/healthz"), ("health_check.interval_seconds", 30, 10),
        ("deregistration_delay_seconds", 30, 5)}


def test_a_port_change_replaces_the_target_group_and_moves_traffic_before_deleting(manifest):
    before = desired_for(manifest)
    after = desired_for(with_target_group(manifest, "gamepulse", port=8081))
    old_name, new_name = before.target_groups[0].name, after.target_groups[0].name
    changes = STEP.plan(after, observed_matching(before), {})
    assert summary(changes) == [
        ("replace", "target_group", "gamepulse", ("elbv2:CreateTargetGroup", "elbv2:ModifyTargetGroupAttributes")),
        ("update", "listener", "http", ("elbv2:ModifyListener",)),
        ("delete", "target_group", old_name, ("elbv2:DeleteTargetGroup",))]
    assert {(d.field, d.old, d.new) for d in changes[0].diffs} == {("name", old_name, new_name), ("port", 8080, 8081)}
    assert old_name in changes[0].note
    assert changes[1].diffs[0].new == Action("forward", new_name)


def test_load_balancer_drift_maps_to_the_calls_that_repair_it(manifest):
    desired = desired_for(with_lb(manifest, idle_timeout_seconds=120))
    observed = observed_matching(desired_for(manifest))
    observed.load_balancer.subnets = ("subnet-a",)
    [change] = STEP.plan(desired, observed, {})
    assert (change.action, change.calls) == ("update", ("elbv2:SetSubnets", "elbv2:ModifyLoadBalancerAttributes"))


def test_listener_default_action_drift_is_a_modify_listener(manifest):
    desired = desired_for(manifest)
    observed = observed_matching(desired)
    observed.listeners[80].default_action = Action("fixed-response")
    assert summary(STEP.plan(desired, observed, {})) == [("update", "listener", "http", ("elbv2:ModifyListener",))]


def test_rules_are_modified_in_their_slot_moved_to_a_new_priority_or_recreated(manifest):
    desired = desired_for(manifest)
    observed = observed_matching(desired)
    observed.rules[0].paths = ("/old*",)
    assert summary(STEP.plan(desired, observed, {})) == [("update", "rule", "http-10", ("elbv2:ModifyRule",))]

    observed = observed_matching(desired)
    observed.rules[0].priority = 7
    [move] = STEP.plan(desired, observed, {})
    assert (move.name, move.calls, move.diffs[0].old, move.diffs[0].new) == \
        ("http-10", ("elbv2:SetRulePriorities",), 7, 10)

    observed = observed_matching(desired)
    observed.rules = []
    assert summary(STEP.plan(desired, observed, {})) == [("create", "rule", "http-10", ("elbv2:CreateRule",))]


def test_a_changed_manifest_tag_retags_every_resource_and_foreign_tags_are_no_difference(manifest):
    observed = observed_matching(desired_for(manifest))
    observed.load_balancer.tags["by-hand"] = "yes"  # someone else's tag: not ours to remove
    assert STEP.plan(desired_for(manifest), observed, {}) == []

    retagged = desired_for(manifest.model_copy(update={"tags": {**manifest.tags, "owner": "games-team"}}))
    changes = STEP.plan(retagged, observed, {})
    assert summary(changes) == [
        ("update", "load_balancer", "gamepulse-dev", ("elbv2:AddTags",)),
        ("update", "target_group", "gamepulse", ("elbv2:AddTags",)),
        ("update", "target_group", "grafana", ("elbv2:AddTags",)),
        ("update", "listener", "http", ("elbv2:AddTags",)),
        ("update", "rule", "http-10", ("elbv2:AddTags",))]
    for change in changes:
        assert [(d.field, d.old, d.new) for d in change.diffs] == \
            [("tags", {"owner": "platform-team"}, {"owner": "games-team"})]


def test_tags_ride_along_with_the_other_changes_of_a_resource(manifest):
    retagged = manifest.model_copy(update={"tags": {**manifest.tags, "owner": "games-team"}})
    desired = desired_for(with_lb(retagged, idle_timeout_seconds=120))
    observed = observed_matching(desired_for(manifest))
    observed.listeners[80].default_action = Action("fixed-response")
    observed.rules[0].priority = 7  # found unchanged in another slot: moved, and retagged
    changes = {(c.kind, c.name): c for c in STEP.plan(desired, observed, {})}
    assert changes["load_balancer", "gamepulse-dev"].calls == \
        ("elbv2:ModifyLoadBalancerAttributes", "elbv2:AddTags")
    assert changes["listener", "http"].calls == ("elbv2:ModifyListener", "elbv2:AddTags")
    assert changes["rule", "http-10"].calls == ("elbv2:SetRulePriorities", "elbv2:AddTags")


def test_adding_a_certificate_creates_https_moves_rules_then_deletes_the_old_ones(manifest):
    observed = observed_matching(desired_for(manifest))
    changes = STEP.plan(desired_for(with_lb(manifest, certificate_arn=CERT)), observed, {})
    assert [(c.action, c.kind, c.name) for c in changes] == [
        ("update", "listener", "http"), ("create", "listener", "https"), ("create", "rule", "https-10"),
        ("delete", "rule", "http-10")]
    assert changes[0].diffs[0].new == REDIRECT_TO_HTTPS


def test_foreign_resources_are_refused_by_name_or_left_alone(manifest):
    desired = desired_for(manifest)
    observed = observed_matching(desired)
    observed.load_balancer.owned = False
    with pytest.raises(OrchestratorError, match="load balancer gamepulse-dev exists but does not carry"):
        STEP.plan(desired, observed, {})

    observed = observed_matching(desired)
    observed.target_groups["gamepulse-dev-legacy-0000"] = ObservedTargetGroup(
        "arn:tg/legacy", "gamepulse-dev-legacy-0000", "HTTP", 80, "vpc-1", False)
    observed.rules.append(ObservedRule("arn:rule/99", 80, 99, ("/x",), Action("fixed-response"), False))
    assert STEP.plan(desired, observed, {}) == []
    assert "gamepulse-dev-legacy-0000" not in {c.name for c in STEP.plan_destroy(observed)}


def test_plan_destroy_goes_rules_listeners_load_balancer_target_groups(manifest):
    changes = STEP.plan_destroy(observed_matching(desired_for(manifest)))
    assert [(c.action, c.kind) for c in changes] == [
        ("delete", "rule"), ("delete", "listener"), ("delete", "load_balancer"),
        ("delete", "target_group"), ("delete", "target_group")]
    assert {c.blocked for c in changes} == {None}


def test_plan_destroy_refuses_everything_while_deletion_protection_is_on(manifest):
    protected = desired_for(with_lb(manifest, deletion_protection=True))
    changes = STEP.plan_destroy(observed_matching(protected))
    assert len(changes) == 5
    assert {c.blocked for c in changes} == {"delete-protected"}
    assert all(c.holds_dependencies for c in changes), "the network must stay for the load balancer"
    assert "deletion protection on" in changes[0].note


# --- against moto ----------------------------------------------------------------------------


def make_network() -> dict:
    """What the vpc step hands over: a VPC, 2 public and 2 private subnets, security groups."""
    import boto3
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]

    def subnet(cidr, zone):
        return ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=zone)["Subnet"]["SubnetId"]

    groups = {name: ec2.create_security_group(GroupName=f"gamepulse-dev-{name}", Description=name,
                                              VpcId=vpc)["GroupId"] for name in ("alb", "app", "monitoring")}
    return {"vpc_id": vpc, "zones": ["us-east-1a", "us-east-1b"],
            "public_subnet_ids": [subnet("10.20.32.0/24", "us-east-1a"), subnet("10.20.33.0/24", "us-east-1b")],
            "private_subnet_ids": [subnet("10.20.0.0/20", "us-east-1a"), subnet("10.20.16.0/20", "us-east-1b")],
            "security_groups": groups}


def self_signed_certificate(domain: str = "gamepulse.example.com") -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()))


@dataclasses.dataclass
class Environment:
    aws: object
    upstream: dict
    first_apply: list
    outputs: dict = dataclasses.field(default_factory=dict)  # as of the latest apply


@pytest.fixture(scope="module")
def environment():
    """One moto account for the module (a fresh one costs about a second), with the network and
    the step applied once. Every test leaves it converged again, so order does not matter."""
    from moto import mock_aws

    from orchestrator.aws import Aws
    from orchestrator.manifest import load_manifest
    from tests.conftest import FAKE_ENV, MANIFESTS

    with pytest.MonkeyPatch.context() as patch:
        for key, value in FAKE_ENV.items():
            patch.setenv(key, value)
        with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
            aws = Aws("us-east-1")
            upstream = {"vpc": make_network()}
            first = harness.run_step(STEP, load_manifest(MANIFESTS, "dev"), aws, upstream)[0]
            yield Environment(aws, upstream, first)


@pytest.fixture
def env(environment, manifest):
    """The shared environment, checked converged before the test starts, with fresh outputs."""
    assert harness.plan_step(STEP, manifest, environment.aws, environment.upstream) == []
    environment.outputs = harness.run_step(STEP, manifest, environment.aws, environment.upstream)[1]
    return environment


def elb(env):
    return env.aws.client("elbv2")


def listeners_by_port(env) -> dict[int, dict]:
    found = elb(env).describe_listeners(LoadBalancerArn=env.outputs["load_balancer_arn"])["Listeners"]
    return {listener["Port"]: listener for listener in found}


def custom_rules(env, listener_arn) -> list[dict]:
    return [r for r in elb(env).describe_rules(ListenerArn=listener_arn)["Rules"] if not r["IsDefault"]]


def target_group(env, key) -> dict:
    return elb(env).describe_target_groups(TargetGroupArns=[env.outputs["target_groups"][key]])["TargetGroups"][0]


def test_apply_creates_the_load_balancer_target_groups_listener_and_rule(env):
    assert [(c.action, c.kind) for c in env.first_apply] == [
        ("create", "load_balancer"), ("create", "target_group"), ("create", "target_group"),
        ("create", "listener"), ("create", "rule")]
    network = env.upstream["vpc"]
    [lb] = elb(env).describe_load_balancers(Names=["gamepulse-dev"])["LoadBalancers"]
    assert (lb["Scheme"], lb["Type"], lb["State"]["Code"]) == ("internet-facing", "application", "active")
    assert sorted(z["SubnetId"] for z in lb["AvailabilityZones"]) == sorted(network["public_subnet_ids"])
    assert lb["SecurityGroups"] == [network["security_groups"]["alb"]]
    attributes = {a["Key"]: a["Value"] for a in
                  elb(env).describe_load_balancer_attributes(LoadBalancerArn=lb["LoadBalancerArn"])["Attributes"]}
    assert (attributes["idle_timeout.timeout_seconds"], attributes["deletion_protection.enabled"]) == ("60", "false")

    gamepulse, grafana = target_group(env, "gamepulse"), target_group(env, "grafana")
    assert (gamepulse["Port"], gamepulse["TargetType"], gamepulse["VpcId"]) == (8080, "ip", network["vpc_id"])
    assert (gamepulse["HealthCheckPath"], gamepulse["Matcher"]) == ("/health", {"HttpCode": "200"})
    assert (grafana["Port"], grafana["HealthCheckPath"]) == (3000, "/grafana/api/health")
    delay = {a["Key"]: a["Value"] for a in elb(env).describe_target_group_attributes(
        TargetGroupArn=gamepulse["TargetGroupArn"])["Attributes"]}["deregistration_delay.timeout_seconds"]
    assert delay == "30"

    http = listeners_by_port(env)[80]
    assert http["DefaultActions"] == [{"Type": "forward", "TargetGroupArn": gamepulse["TargetGroupArn"]}]
    [rule] = custom_rules(env, http["ListenerArn"])
    assert (rule["Priority"], rule["Conditions"][0]["PathPatternConfig"]["Values"]) == ("10", ["/grafana*"])
    assert rule["Actions"][0]["TargetGroupArn"] == grafana["TargetGroupArn"]

    arns = [lb["LoadBalancerArn"], gamepulse["TargetGroupArn"], grafana["TargetGroupArn"], http["ListenerArn"],
            rule["RuleArn"]]
    for description in elb(env).describe_tags(ResourceArns=arns)["TagDescriptions"]:
        assert tag_dict(description["Tags"]).items() >= {**OWNERSHIP, "project": "gamepulse"}.items()

    outputs = env.outputs
    assert outputs["dns_name"] == lb["DNSName"] and outputs["url"] == f"http://{lb['DNSName']}"
    assert outputs["zone_id"] == lb["CanonicalHostedZoneId"]
    assert outputs["arn_suffix"].startswith("app/gamepulse-dev/")
    assert outputs["target_group_arn_suffixes"]["grafana"].startswith("targetgroup/gamepulse-dev-grafana-")
    assert outputs["listener_arns"] == {"http": http["ListenerArn"]}


def test_second_apply_makes_no_mutating_call_and_one_read_per_kind(env, manifest):
    before = len(env.aws.ledger.calls)
    changes, outputs, _ = harness.run_step(STEP, manifest, env.aws, env.upstream)
    assert changes == [] and outputs == env.outputs
    reads = [c.operation for c in harness.calls_since(env.aws, before, STEP.name)]
    # Our other target groups by tag: one tagging-API query; everything else is a describe.
    assert [r for r in reads if not r.startswith("Describe")] == ["GetResources"]
    # load balancer, its attributes, target groups (by name), listeners, rules (one listener),
    # tags (one batch) and the attributes of each of the two target groups.
    assert len(reads) == 9


def test_what_is_found_by_name_or_tag_alone_is_read_in_one_round_trip(env, manifest):
    """The load balancer, the wanted target groups (by name) and our other target groups (by
    tag) need no answer of another: each is sent while the others are unanswered, not one after
    another. The plan and the reads are those of an unchanged step (9, as above)."""
    from orchestrator.aws import Aws
    aws = Aws("us-east-1")  # hooks of its own, the module's clients left as they are
    waited = harness.held_until_sent_together(aws, {"DescribeLoadBalancers", "DescribeTargetGroups", "GetResources"})
    assert harness.plan_step(STEP, manifest, aws, env.upstream) == []
    assert waited == [True, True, True]
    assert aws.ledger.count(step=STEP.name) == 9


def test_drift_made_by_hand_is_shown_by_plan_then_repaired(env, manifest):
    client = elb(env)
    gamepulse, grafana = env.outputs["target_groups"]["gamepulse"], env.outputs["target_groups"]["grafana"]
    http = env.outputs["listener_arns"]["http"]
    client.modify_target_group(TargetGroupArn=gamepulse, HealthCheckPath="/by-hand")
    client.delete_rule(RuleArn=custom_rules(env, http)[0]["RuleArn"])
    client.modify_listener(ListenerArn=http, DefaultActions=[{"Type": "forward", "TargetGroupArn": grafana}])
    client.modify_load_balancer_attributes(LoadBalancerArn=env.outputs["load_balancer_arn"],
                                           Attributes=[{"Key": "idle_timeout.timeout_seconds", "Value": "10"}])

    planned = harness.plan_step(STEP, manifest, env.aws, env.upstream)
    assert summary(planned) == [
        ("update", "load_balancer", "gamepulse-dev", ("elbv2:ModifyLoadBalancerAttributes",)),
        ("update", "target_group", "gamepulse", ("elbv2:ModifyTargetGroup",)),
        ("update", "listener", "http", ("elbv2:ModifyListener",)),
        ("create", "rule", "http-10", ("elbv2:CreateRule",))]
    assert ("health_check.path", "/by-hand", "/health") in {(d.field, d.old, d.new) for d in planned[1].diffs}

    harness.run_step(STEP, manifest, env.aws, env.upstream)
    assert target_group(env, "gamepulse")["HealthCheckPath"] == "/health"
    assert listeners_by_port(env)[80]["DefaultActions"][0]["TargetGroupArn"] == gamepulse
    assert [r["Actions"][0]["TargetGroupArn"] for r in custom_rules(env, http)] == [grafana]


def test_a_changed_manifest_tag_is_put_on_every_resource_and_foreign_tags_stay(env, manifest):
    client = elb(env)
    http = env.outputs["listener_arns"]["http"]
    arns = [env.outputs["load_balancer_arn"], *env.outputs["target_groups"].values(), http,
            custom_rules(env, http)[0]["RuleArn"]]
    client.add_tags(ResourceArns=arns, Tags=[{"Key": "by-hand", "Value": "yes"}])
    assert harness.plan_step(STEP, manifest, env.aws, env.upstream) == [], "a tag someone else added is no difference"

    retagged = manifest.model_copy(update={"tags": {**manifest.tags, "owner": "games-team"}})
    planned = harness.plan_step(STEP, retagged, env.aws, env.upstream)
    assert [(c.action, c.kind, c.calls) for c in planned] == \
        [("update", kind, ("elbv2:AddTags",))
         for kind in ("load_balancer", "target_group", "target_group", "listener", "rule")]
    assert {(d.field, d.old["owner"], d.new["owner"]) for c in planned for d in c.diffs} == \
        {("tags", "platform-team", "games-team")}

    before = len(env.aws.ledger.calls)
    harness.run_step(STEP, retagged, env.aws, env.upstream)
    assert [c.operation for c in harness.calls_since(env.aws, before, STEP.name) if c.mutating] == ["AddTags"] * 5
    for description in client.describe_tags(ResourceArns=arns)["TagDescriptions"]:
        tags = tag_dict(description["Tags"])
        assert (tags["owner"], tags["by-hand"], tags["project"]) == ("games-team", "yes", "gamepulse")
        assert tags.items() >= OWNERSHIP.items()
    assert harness.plan_step(STEP, retagged, env.aws, env.upstream) == []

    harness.run_step(STEP, manifest, env.aws, env.upstream)  # back to the manifest's owner
    client.remove_tags(ResourceArns=arns, TagKeys=["by-hand"])


def test_a_certificate_turns_http_into_a_redirect_to_https(env, manifest):
    cert, key = self_signed_certificate()
    arn = env.aws.client("acm").import_certificate(Certificate=cert, PrivateKey=key)["CertificateArn"]
    secure = with_lb(manifest, certificate_arn=arn)

    changes, outputs, _ = harness.run_step(STEP, secure, env.aws, env.upstream)
    assert [(c.action, c.kind, c.name) for c in changes] == [
        ("update", "listener", "http"), ("create", "listener", "https"), ("create", "rule", "https-10"),
        ("delete", "rule", "http-10")]
    listeners = listeners_by_port(env)
    redirect = listeners[80]["DefaultActions"][0]
    assert (redirect["Type"], redirect["RedirectConfig"]["Protocol"], redirect["RedirectConfig"]["Port"],
            redirect["RedirectConfig"]["StatusCode"]) == ("redirect", "HTTPS", "443", "HTTP_301")
    https = listeners[443]
    assert (https["Protocol"], https["SslPolicy"], https["Certificates"][0]["CertificateArn"]) == \
        ("HTTPS", "ELBSecurityPolicy-TLS13-1-2-2021-06", arn)
    assert https["DefaultActions"][0]["TargetGroupArn"] == outputs["target_groups"]["gamepulse"]
    assert custom_rules(env, listeners[80]["ListenerArn"]) == []
    assert [r["Priority"] for r in custom_rules(env, https["ListenerArn"])] == ["10"]
    assert outputs["url"].startswith("https://") and set(outputs["listener_arns"]) == {"http", "https"}
    assert harness.plan_step(STEP, secure, env.aws, env.upstream) == []

    changes, _, _ = harness.run_step(STEP, manifest, env.aws, env.upstream)
    assert [(c.action, c.kind, c.name) for c in changes] == [
        ("update", "listener", "http"), ("create", "rule", "http-10"), ("delete", "rule", "https-10"),
        ("delete", "listener", "https")]
    assert set(listeners_by_port(env)) == {80}


def test_a_port_change_replaces_the_target_group_without_leaving_the_old_one(env, manifest):
    old_arn = env.outputs["target_groups"]["grafana"]
    moved = with_target_group(manifest, "grafana", port=3001)
    changes, outputs, _ = harness.run_step(STEP, moved, env.aws, env.upstream)
    assert [(c.action, c.kind) for c in changes] == [
        ("replace", "target_group"), ("update", "rule"), ("delete", "target_group")]
    new_arn = outputs["target_groups"]["grafana"]
    [new] = elb(env).describe_target_groups(TargetGroupArns=[new_arn])["TargetGroups"]
    assert new_arn != old_arn and new["Port"] == 3001
    http = env.outputs["listener_arns"]["http"]
    assert [r["Actions"][0]["TargetGroupArn"] for r in custom_rules(env, http)] == [new_arn]
    names = [g["TargetGroupName"] for g in elb(env).describe_target_groups()["TargetGroups"]]
    assert sum(name.startswith("gamepulse-dev-grafana-") for name in names) == 1

    harness.run_step(STEP, manifest, env.aws, env.upstream)


def test_destroy_is_refused_under_deletion_protection_then_removes_only_what_is_owned(env, manifest):
    client = elb(env)
    look_alike = client.create_target_group(Name="gamepulse-dev-legacy-0000", Protocol="HTTP", Port=80,
                                            VpcId=env.upstream["vpc"]["vpc_id"], TargetType="ip")
    look_alike_arn = look_alike["TargetGroups"][0]["TargetGroupArn"]
    assert harness.plan_step(STEP, manifest, env.aws, env.upstream) == [], "apply leaves the look-alike alone"

    protected = with_lb(manifest, deletion_protection=True)
    harness.run_step(STEP, protected, env.aws, env.upstream)
    applied, _, _ = harness.run_step(STEP, protected, env.aws, env.upstream, destroy=True)
    assert applied == [], "moto does not enforce deletion protection: the step must refuse by itself"
    assert len(client.describe_load_balancers(Names=["gamepulse-dev"])["LoadBalancers"]) == 1
    assert len(listeners_by_port(env)) == 1

    harness.run_step(STEP, manifest, env.aws, env.upstream)
    applied, _, _ = harness.run_step(STEP, manifest, env.aws, env.upstream, destroy=True)
    assert [(c.action, c.kind) for c in applied] == [
        ("delete", "rule"), ("delete", "listener"), ("delete", "load_balancer"),
        ("delete", "target_group"), ("delete", "target_group")]
    assert client.describe_load_balancers()["LoadBalancers"] == []
    assert [g["TargetGroupArn"] for g in client.describe_target_groups()["TargetGroups"]] == [look_alike_arn]

    client.delete_target_group(TargetGroupArn=look_alike_arn)
    harness.run_step(STEP, manifest, env.aws, env.upstream)


def test_a_run_killed_after_any_mutating_call_converges_without_duplicates(env, manifest):
    # One process that gets killed and one that runs next, each reused for every crash point:
    # a crash hook armed for call n stays silent at any other count.
    crashing, rerun = harness.forget_crash(env.aws), harness.forget_crash(env.aws)
    points = harness.kill_points(crashing, reset=lambda: harness.run_step(STEP, manifest, env.aws, env.upstream,
                                                                          destroy=True),
                                 run=lambda aws: harness.run_step(STEP, manifest, aws, env.upstream))
    for n in points:
        harness.run_step(STEP, manifest, rerun, env.upstream)
        assert harness.plan_step(STEP, manifest, rerun, env.upstream) == [], f"not converged after crash {n}"
        client = rerun.client("elbv2")
        [lb] = client.describe_load_balancers()["LoadBalancers"]
        assert len(client.describe_target_groups()["TargetGroups"]) == 2
        [listener] = client.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
        assert len(client.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"]) == 2  # with the default
    assert n == 8, "8 mutating calls on a cold apply"


def test_target_groups_of_others_cost_no_read_and_a_left_over_one_of_ours_is_found_by_its_tags(env, manifest):
    client, vpc = elb(env), env.upstream["vpc"]["vpc_id"]
    before = len(env.aws.ledger.calls)
    harness.run_step(STEP, manifest, env.aws, env.upstream)
    alone = len(env.aws.ledger.calls) - before

    def target_group_named(name: str, owner: str) -> str:
        tags = [{"Key": "orchestrator:app", "Value": "gamepulse"}, {"Key": "orchestrator:env", "Value": owner},
                {"Key": "orchestrator:step", "Value": "alb"}]
        return client.create_target_group(Name=name, Protocol="HTTP", Port=8080, VpcId=vpc, TargetType="ip",
                                          Tags=tags)["TargetGroups"][0]["TargetGroupArn"]

    others = [target_group_named(f"gamepulse-{('staging', 'prod')[i % 2]}-grafana-{i:04x}", ("staging", "prod")[i % 2])
              for i in range(30)]
    before = len(env.aws.ledger.calls)
    assert harness.run_step(STEP, manifest, env.aws, env.upstream)[0] == []
    assert len(env.aws.ledger.calls) - before == alone

    left_over = target_group_named("gamepulse-dev-grafana-0bad", "dev")  # a replacement cut short
    changes = harness.run_step(STEP, manifest, env.aws, env.upstream)[0]
    assert [(c.action, c.kind, c.name) for c in changes] == [("delete", "target_group", "gamepulse-dev-grafana-0bad")]
    assert left_over not in {g["TargetGroupArn"] for g in client.describe_target_groups()["TargetGroups"]}
    for arn in others:
        client.delete_target_group(TargetGroupArn=arn)


def test_a_certificate_named_by_domain_is_the_issued_one_acm_holds(env, manifest, monkeypatch):
    import moto.settings

    from orchestrator.errors import OrchestratorError
    from orchestrator.schema import CertificateSpec
    by_domain = with_lb(manifest, certificate=CertificateSpec(domain="api.by-domain.example.com"))
    acm = env.aws.client("acm")
    monkeypatch.setattr(moto.settings, "ACM_VALIDATION_WAIT", 3600)
    acm.request_certificate(DomainName="api.by-domain.example.com", ValidationMethod="DNS")  # pending validation
    before = len(env.aws.ledger.calls)
    with pytest.raises(OrchestratorError, match=r"no ISSUED certificate for api.by-domain.example.com "
                                                r"\(load_balancer.certificate.domain\) in ACM in us-east-1"):
        harness.run_step(STEP, by_domain, env.aws, env.upstream)
    assert [c for c in env.aws.ledger.calls[before:] if c.mutating and c.step == STEP.name] == []

    # An EC key: AWS's ListCertificates lists it only when asked for its key type.
    cert, key = self_signed_certificate("api.by-domain.example.com")
    arn = acm.import_certificate(Certificate=cert, PrivateKey=key)["CertificateArn"]
    changes, outputs, _ = harness.run_step(STEP, by_domain, env.aws, env.upstream)
    assert outputs["url"] == "https://api.by-domain.example.com"  # the name the certificate is valid for
    https = next(c for c in changes if c.key == "listener/https")
    assert dict((d.field, d.new) for d in https.diffs)["certificate_arn"] == arn
    assert listeners_by_port(env)[443]["Certificates"][0]["CertificateArn"] == arn
    assert harness.plan_step(STEP, by_domain, env.aws, env.upstream) == []
    harness.run_step(STEP, manifest, env.aws, env.upstream)  # back to HTTP only


def test_a_certificate_is_named_once(manifest):
    from pydantic import ValidationError

    from orchestrator.schema import LoadBalancerSpec
    spec = manifest.load_balancer.model_dump()
    with pytest.raises(ValidationError, match="name the certificate once"):
        LoadBalancerSpec.model_validate({**spec, "certificate_arn": CERT, "certificate": {"domain": "api.example.com"}})


def test_a_certificate_that_does_not_exist_stops_apply_before_any_change(env, manifest):
    from orchestrator.errors import OrchestratorError
    missing = with_lb(manifest, certificate_arn=CERT)
    before = len(env.aws.ledger.calls)
    with pytest.raises(OrchestratorError, match=f"certificate {CERT} .* does not exist in this account and region"):
        harness.run_step(STEP, missing, env.aws, env.upstream)
    assert [c for c in env.aws.ledger.calls[before:] if c.mutating and c.step == STEP.name] == []
