"""Step dashboards (AWS-side alerting): pure planner tests, then moto-backed create / unchanged /
threshold change / drift / destroy tests, and one over the real platform for the dimensions and
Application Auto Scaling's own alarms."""
from __future__ import annotations

import json

import boto3
import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.model import KNOWN_AFTER_APPLY
from orchestrator.permissions import Scope
from steps.dashboards import PENDING, DashboardsFacts, DashboardsStep, ObservedKey, ObservedTopic, _as_observed
from tests import harness
from tests.test_policy import record_calls, refusals

STEP = DashboardsStep()
ACCOUNT = harness.ACCOUNT
SERVICES = ["gamepulse", "prometheus", "loki", "jaeger", "grafana"]
LB_SUFFIX = "app/gamepulse-dev/0123456789abcdef"
UPSTREAM = {
    "alb": {"arn_suffix": LB_SUFFIX, "url": "http://gamepulse-dev-1.us-east-1.elb.amazonaws.com",
            "target_group_arn_suffixes": {"gamepulse": "targetgroup/gamepulse-dev-gamepulse-1a2b/1111111111111111",
                                          "grafana": "targetgroup/gamepulse-dev-grafana-3c4d/2222222222222222"}},
    "services": {"cluster_name": "gamepulse-dev",
                 "services": {name: f"arn:aws:ecs:us-east-1:{ACCOUNT}:service/gamepulse-dev/{name}"
                              for name in SERVICES}}}
TOPIC = f"arn:aws:sns:us-east-1:{ACCOUNT}:gamepulse-dev-alerts"
KEY = "alias/gamepulse-dev-alerts"
OWNERSHIP = {"orchestrator:app": "gamepulse", "orchestrator:env": "dev", "orchestrator:step": "dashboards"}
#: 5XX of the load balancer, response time and unhealthy hosts per target group, CPU and memory per service.
ALARMS = 1 + 2 * 2 + 2 * len(SERVICES)


def desired_for(manifest, upstream=UPSTREAM):
    return STEP.desired(manifest, harness.inputs(STEP, upstream))


def with_cloudwatch(manifest, **thresholds):
    alerting = manifest.alerting
    cloudwatch = alerting.cloudwatch.model_copy(update=thresholds)
    return manifest.model_copy(update={"alerting": alerting.model_copy(update={"cloudwatch": cloudwatch})})


def with_emails(manifest, *emails):
    alerting = manifest.alerting.model_copy(update={"email_addresses": list(emails)})
    return manifest.model_copy(update={"alerting": alerting})


def matching(desired) -> DashboardsFacts:
    """What AWS holds right after a complete apply of `desired`, with the address confirmed."""
    return DashboardsFacts(
        key=ObservedKey("key-1", "arn:key/key-1", desired.key.alias, True, True, json.loads(json.dumps(
            desired.key.policy)), dict(desired.tags)),
        topic=ObservedTopic(desired.topic.arn, desired.topic.kms_key, True, dict(desired.tags)),
        subscriptions={email: f"{desired.topic.arn}:sub-{n}" for n, email in enumerate(desired.emails)},
        alarms={a.name: _as_observed(a, dict(desired.tags), f"arn:alarm:{a.name}", "OK") for a in desired.alarms},
        dashboard_name=desired.dashboard.name, dashboard=json.loads(json.dumps(desired.dashboard.body)))


# --- pure planning ---------------------------------------------------------------------------


def test_desired_names_and_dimensions_come_from_the_manifest_and_upstream_outputs(manifest):
    desired = desired_for(manifest)
    assert (desired.topic.name, desired.topic.arn, desired.topic.kms_key) == ("gamepulse-dev-alerts", TOPIC, KEY)
    assert desired.emails == ("platform-oncall@gamepulse.example",)
    alarms = {a.name: a for a in desired.alarms}
    assert len(alarms) == ALARMS
    assert alarms["gamepulse-dev-alb-5xx"].dimensions == (("LoadBalancer", LB_SUFFIX),)
    assert alarms["gamepulse-dev-tg-gamepulse-unhealthy-hosts"].dimensions == (
        ("LoadBalancer", LB_SUFFIX), ("TargetGroup", "targetgroup/gamepulse-dev-gamepulse-1a2b/1111111111111111"))
    assert alarms["gamepulse-dev-svc-loki-memory"].dimensions == (
        ("ClusterName", "gamepulse-dev"), ("ServiceName", "loki"))
    assert {a.alarm_actions for a in desired.alarms} == {(TOPIC,)}
    assert {a.ok_actions for a in desired.alarms} == {(TOPIC,)}
    assert desired.dashboard.name == "gamepulse-dev"
    assert desired.grafana_url == "http://gamepulse-dev-1.us-east-1.elb.amazonaws.com/grafana/"


def test_thresholds_are_the_environments(tmp_path):
    from orchestrator.manifest import load_manifest
    from tests.conftest import MANIFESTS

    def thresholds(env):
        return {a.name.split("-", 2)[2]: a.threshold for a in desired_for(load_manifest(MANIFESTS, env)).alarms}

    dev, prod = thresholds("dev"), thresholds("prod")
    assert (dev["alb-5xx"], dev["tg-gamepulse-response-time"], dev["svc-gamepulse-cpu"]) == (10, 1.0, 90)
    assert (prod["alb-5xx"], prod["tg-gamepulse-response-time"]) == (5, 0.6)


def test_plan_from_nothing_creates_every_resource_with_dimensions_known_after_apply(manifest):
    desired = STEP.desired(manifest, harness.inputs(STEP))
    changes = STEP.plan(desired, DashboardsFacts(), {})
    assert [(c.action, c.kind) for c in changes] == \
        [("create", "key"), ("create", "topic"), ("create", "subscription")] + [("create", "alarm")] * ALARMS + \
        [("create", "dashboard")]
    assert "confirmation" in changes[2].note
    five_xx = next(c for c in changes if c.name == "gamepulse-dev-alb-5xx")
    [dimensions] = [d.new for d in five_xx.diffs if d.field == "dimensions"]
    assert dict(dimensions)["LoadBalancer"] == KNOWN_AFTER_APPLY


def test_the_topics_key_lets_cloudwatch_publish_this_environments_alarms_and_no_others(manifest):
    """With the AWS managed key alias/aws/sns, whose policy nobody can change, CloudWatch is
    denied the key and no alarm notification is ever delivered."""
    [account, cloudwatch_publishes] = desired_for(manifest).key.policy["Statement"]
    assert account["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    assert cloudwatch_publishes["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert cloudwatch_publishes["Action"] == ["kms:Decrypt", "kms:GenerateDataKey*"]
    assert cloudwatch_publishes["Condition"] == {
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
        "ArnLike": {"aws:SourceArn": f"arn:aws:cloudwatch:us-east-1:{ACCOUNT}:alarm:gamepulse-dev-*"}}


def test_plan_is_empty_when_everything_matches(manifest):
    desired = desired_for(manifest)
    assert STEP.plan(desired, matching(desired), {}) == []


def test_threshold_change_is_one_put_metric_alarm_per_alarm_it_moves(manifest):
    desired = desired_for(manifest)
    observed = matching(desired)
    changes = STEP.plan(desired_for(with_cloudwatch(manifest, alb_5xx_count=25)), observed, {})
    assert [(c.action, c.name, c.calls) for c in changes] == \
        [("update", "gamepulse-dev-alb-5xx", ("cloudwatch:PutMetricAlarm",))]
    assert [(d.field, d.old, d.new) for d in changes[0].diffs] == [("threshold", 10.0, 25.0)]


def test_every_alarm_field_is_compared(manifest):
    desired = desired_for(manifest)
    observed = matching(desired)
    seen = observed.alarms["gamepulse-dev-svc-gamepulse-cpu"]
    seen.dimensions = (("ClusterName", "gamepulse-dev"), ("ServiceName", "someone-else"))
    seen.ok_actions = ()
    seen.actions_enabled = False
    seen.datapoints_to_alarm = 5
    [change] = STEP.plan(desired, observed, {})
    assert {d.field for d in change.diffs} == {"dimensions", "ok_actions", "actions_enabled", "datapoints_to_alarm"}


def test_an_unconfirmed_address_shows_as_pending_in_the_outputs(manifest):
    desired = desired_for(manifest)
    observed = matching(desired)
    observed.subscriptions["platform-oncall@gamepulse.example"] = PENDING
    assert STEP.outputs(desired, observed).subscriptions == {
        "platform-oncall@gamepulse.example": "pending confirmation"}


def test_an_email_dropped_from_the_manifest_is_unsubscribed_unless_still_unconfirmed(manifest):
    desired = desired_for(with_emails(manifest, "new@gamepulse.example"))
    observed = matching(desired_for(manifest))
    observed.subscriptions["pending@gamepulse.example"] = PENDING
    changes = STEP.plan(desired, observed, {})
    assert [(c.action, c.kind, c.name) for c in changes] == [
        ("create", "subscription", "new@gamepulse.example"),
        ("delete", "subscription", "platform-oncall@gamepulse.example")]


def test_a_dashboard_edited_by_hand_is_put_back(manifest):
    desired = desired_for(manifest)
    observed = matching(desired)
    observed.dashboard["widgets"].pop()
    [change] = STEP.plan(desired, observed, {})
    assert (change.action, change.kind, change.calls) == ("update", "dashboard", ("cloudwatch:PutDashboard",))


def test_an_alarm_of_our_name_without_our_tags_is_refused(manifest):
    desired = desired_for(manifest)
    observed = matching(desired)
    observed.alarms["gamepulse-dev-alb-5xx"].owned = False
    with pytest.raises(OrchestratorError, match="CloudWatch alarm gamepulse-dev-alb-5xx exists but does not carry"):
        STEP.plan(desired, observed, {})


def test_ours_no_longer_wanted_are_deleted_in_one_call_and_others_left_alone(manifest):
    desired = desired_for(manifest)
    observed = matching(desired)
    extra = _as_observed(desired.alarms[0], dict(desired.tags), "arn:alarm:x", "OK")
    observed.alarms["gamepulse-dev-svc-retired-cpu"] = extra
    observed.alarms["gamepulse-dev-someone-elses"] = _as_observed(desired.alarms[0], {}, "arn:alarm:y", "OK")
    observed.alarms["gamepulse-dev-someone-elses"].owned = False
    [change] = STEP.plan(desired, observed, {})
    assert (change.action, change.payload, change.calls) == \
        ("delete", ("gamepulse-dev-svc-retired-cpu",), ("cloudwatch:DeleteAlarms",))


# --- against moto ----------------------------------------------------------------------------


def run(manifest, aws, recorded, upstream=UPSTREAM, **kwargs):
    return harness.run_step(STEP, manifest, aws, upstream=upstream, recorded=recorded, **kwargs)


def cloudwatch():
    return boto3.client("cloudwatch", region_name="us-east-1")


def sns():
    return boto3.client("sns", region_name="us-east-1")


def kms():
    return boto3.client("kms", region_name="us-east-1")


def key_id() -> str:
    return kms().describe_key(KeyId=KEY)["KeyMetadata"]["KeyId"]  # GetKeyPolicy takes no alias


def key_policy() -> dict:
    return json.loads(kms().get_key_policy(KeyId=key_id(), PolicyName="default")["Policy"])


def usable_keys() -> list[str]:
    """The enabled keys the step made (not the state table's)."""
    keys = [kms().describe_key(KeyId=k["KeyId"])["KeyMetadata"] for k in kms().list_keys()["Keys"]]
    return [k["KeyId"] for k in keys if k["KeyState"] == "Enabled" and k["Description"].startswith("gamepulse-dev:")]


def our_alarms() -> dict[str, dict]:
    pages = cloudwatch().get_paginator("describe_alarms").paginate(AlarmNamePrefix="gamepulse-dev-")
    return {a["AlarmName"]: a for page in pages for a in page["MetricAlarms"]}


def test_create_then_unchanged_apply_makes_no_mutating_call(aws, manifest):
    recorded: dict = {}
    applied, outputs, _ = run(manifest, aws, recorded)
    assert len(applied) == 3 + ALARMS + 1

    attributes = sns().get_topic_attributes(TopicArn=TOPIC)["Attributes"]
    assert attributes["KmsMasterKeyId"] == KEY
    policy = key_policy()
    assert {"Service": "cloudwatch.amazonaws.com"} in [s["Principal"] for s in policy["Statement"]]
    assert {t["Key"]: t["Value"] for t in sns().list_tags_for_resource(ResourceArn=TOPIC)["Tags"]} == OWNERSHIP | \
        manifest.tags
    [subscription] = sns().list_subscriptions_by_topic(TopicArn=TOPIC)["Subscriptions"]
    assert (subscription["Protocol"], subscription["Endpoint"]) == ("email", "platform-oncall@gamepulse.example")
    alarms = our_alarms()
    assert len(alarms) == ALARMS
    cpu = alarms["gamepulse-dev-svc-gamepulse-cpu"]
    assert (cpu["Namespace"], cpu["MetricName"], cpu["Statistic"], cpu["Threshold"]) == \
        ("AWS/ECS", "CPUUtilization", "Average", 90.0)
    assert {(d["Name"], d["Value"]) for d in cpu["Dimensions"]} == {("ClusterName", "gamepulse-dev"),
                                                                     ("ServiceName", "gamepulse")}
    assert (cpu["AlarmActions"], cpu["OKActions"]) == ([TOPIC], [TOPIC])
    tags = cloudwatch().list_tags_for_resource(ResourceARN=cpu["AlarmArn"])["Tags"]
    assert {t["Key"]: t["Value"] for t in tags}["orchestrator:step"] == "dashboards"
    body = json.loads(cloudwatch().get_dashboard(DashboardName="gamepulse-dev")["DashboardBody"])
    assert "Alarms" in [w["properties"]["title"] for w in body["widgets"]]
    assert outputs["topic_arn"] == TOPIC
    assert outputs["dashboard_name"] == "gamepulse-dev"
    assert sorted(outputs["alarm_names"]) == sorted(alarms)
    assert outputs["grafana_url"].endswith("elb.amazonaws.com/grafana/")
    # moto confirms an email subscription at once (MOTO-NOTES: SNS); on AWS the address must follow a link.
    assert outputs["subscriptions"] == {"platform-oncall@gamepulse.example": "confirmed"}

    before = len(aws.ledger.calls)
    applied, _, _ = run(manifest, aws, recorded)
    assert applied == []
    calls = harness.calls_since(aws, before, "dashboards")
    assert [c.operation for c in calls if c.mutating] == []
    assert sorted(c.operation for c in calls) == ["DescribeAlarms", "DescribeKey", "GetDashboard", "GetKeyPolicy",
                                                  "GetResources", "GetTopicAttributes", "ListSubscriptionsByTopic"]


def test_threshold_change_is_exactly_one_put_metric_alarm(aws, manifest):
    recorded: dict = {}
    run(manifest, aws, recorded)
    before = len(aws.ledger.calls)
    applied, _, _ = run(with_cloudwatch(manifest, response_time_seconds=2.5), aws, recorded)
    assert [c.name for c in applied] == ["gamepulse-dev-tg-gamepulse-response-time",
                                         "gamepulse-dev-tg-grafana-response-time"]
    assert [c.operation for c in harness.calls_since(aws, before, "dashboards") if c.mutating] == \
        ["PutMetricAlarm", "PutMetricAlarm"]
    assert our_alarms()["gamepulse-dev-tg-grafana-response-time"]["Threshold"] == 2.5
    applied, _, _ = run(with_cloudwatch(manifest, unhealthy_hosts=2, response_time_seconds=2.5), aws, recorded)
    assert len(applied) == 2  # both target groups' unhealthy-host alarms; nothing else


def test_drift_made_by_hand_is_repaired(aws, manifest):
    recorded: dict = {}
    run(manifest, aws, recorded)
    alarm = our_alarms()["gamepulse-dev-svc-loki-memory"]
    cloudwatch().put_metric_alarm(  # someone raises a threshold and drops the notification
        AlarmName=alarm["AlarmName"], Namespace=alarm["Namespace"], MetricName=alarm["MetricName"],
        Statistic="Average", Dimensions=alarm["Dimensions"], Period=60, EvaluationPeriods=5, Threshold=99,
        ComparisonOperator="GreaterThanOrEqualToThreshold", AlarmActions=[])
    cloudwatch().put_dashboard(DashboardName="gamepulse-dev", DashboardBody=json.dumps({"widgets": []}))
    [subscription] = sns().list_subscriptions_by_topic(TopicArn=TOPIC)["Subscriptions"]
    sns().unsubscribe(SubscriptionArn=subscription["SubscriptionArn"])
    drift_topic_and_a_tag()

    applied, _, _ = run(manifest, aws, recorded)
    assert sorted((c.action, c.kind, c.name) for c in applied) == [
        ("create", "subscription", "platform-oncall@gamepulse.example"),
        ("update", "alarm", "gamepulse-dev-alb-5xx"), ("update", "alarm", "gamepulse-dev-svc-loki-memory"),
        ("update", "dashboard", "gamepulse-dev"), ("update", "key", KEY), ("update", "topic", "gamepulse-dev-alerts")]
    repaired = our_alarms()["gamepulse-dev-svc-loki-memory"]
    assert (repaired["Threshold"], repaired["AlarmActions"], repaired["DatapointsToAlarm"]) == (90.0, [TOPIC], 3)
    assert sns().get_topic_attributes(TopicArn=TOPIC)["Attributes"]["KmsMasterKeyId"] == KEY
    policy = key_policy()
    assert len(policy["Statement"]) == 2
    five_xx = our_alarms()["gamepulse-dev-alb-5xx"]["AlarmArn"]
    assert {t["Key"] for t in cloudwatch().list_tags_for_resource(ResourceARN=five_xx)["Tags"]} >= set(OWNERSHIP)
    assert run(manifest, aws, recorded)[0] == []


def drift_topic_and_a_tag():
    """Someone turns the topic's encryption off, takes CloudWatch out of the key's policy and
    removes a tag of ours from an alarm."""
    sns().set_topic_attributes(TopicArn=TOPIC, AttributeName="KmsMasterKeyId", AttributeValue="")
    policy = key_policy()
    kms().put_key_policy(KeyId=key_id(), PolicyName="default",
                         Policy=json.dumps({**policy, "Statement": policy["Statement"][:1]}))
    five_xx = our_alarms()["gamepulse-dev-alb-5xx"]["AlarmArn"]
    cloudwatch().untag_resource(ResourceARN=five_xx, TagKeys=["project"])


def test_destroy_deletes_alarms_dashboard_subscriptions_and_topic_but_nothing_else(aws, manifest):
    recorded: dict = {}
    run(manifest, aws, recorded)
    cloudwatch().put_metric_alarm(AlarmName="gamepulse-dev-made-by-hand", MetricName="CPUUtilization",
                                  Namespace="AWS/ECS", Statistic="Average", Period=60, EvaluationPeriods=1,
                                  Threshold=1, ComparisonOperator="GreaterThanThreshold")
    applied, outputs, _ = run(manifest, aws, recorded, destroy=True)
    assert [(c.kind, c.action) for c in applied] == [("alarms", "delete"), ("dashboard", "delete"),
                                                     ("subscription", "delete"), ("topic", "delete"), ("key", "delete")]
    assert usable_keys() == [] and KEY not in [a["AliasName"] for a in kms().list_aliases()["Aliases"]]
    assert list(our_alarms()) == ["gamepulse-dev-made-by-hand"]
    assert cloudwatch().list_dashboards()["DashboardEntries"] == []
    assert sns().list_topics()["Topics"] == []
    assert run(manifest, aws, recorded, destroy=True)[0] == []


def test_every_call_is_in_the_steps_deploy_policy(aws, manifest):
    calls = record_calls(aws)
    recorded: dict = {}
    run(manifest, aws, recorded)
    drift_topic_and_a_tag()
    run(with_emails(with_cloudwatch(manifest, cpu_percent=80), "new@gamepulse.example"), aws, recorded)
    run(manifest, aws, recorded, destroy=True)
    policy = {"Statement": STEP.permissions(manifest, Scope(ACCOUNT, "us-east-1", "aws"))}
    ours = [call for call in calls if call[0] in ("kms", "sns", "cloudwatch", "tag")]  # not the state table's
    assert {operation for _, operation, _ in ours} >= {
        "CreateKey", "CreateAlias", "PutKeyPolicy", "ScheduleKeyDeletion", "CreateTopic", "SetTopicAttributes",
        "TagResource", "Subscribe", "Unsubscribe", "PutMetricAlarm", "PutDashboard",
        "DeleteAlarms", "DeleteDashboards", "DeleteTopic"}
    assert refusals(policy, ours) == []


@pytest.fixture
def platform(aws, manifest, monkeypatch):
    """Every step the dashboards step depends on, applied (autoscaling's alarms included)."""
    return harness.apply_dependencies(STEP, manifest, aws, monkeypatch)


@pytest.mark.managed_policies
def test_alarms_point_at_the_real_platform_and_autoscalings_alarms_are_never_touched(aws, manifest, platform):
    autoscaling = {a["AlarmName"]: a for a in cloudwatch().describe_alarms(
        AlarmNamePrefix="TargetTracking-")["MetricAlarms"]}
    assert autoscaling  # the gamepulse service's target tracking made its two alarms
    recorded: dict = {}
    run(manifest, aws, recorded, upstream=platform)

    elb = boto3.client("elbv2", region_name="us-east-1")
    [lb] = elb.describe_load_balancers(Names=["gamepulse-dev"])["LoadBalancers"]
    groups = {g["TargetGroupName"].split("-")[2]: g["TargetGroupArn"] for g in elb.describe_target_groups(
        LoadBalancerArn=lb["LoadBalancerArn"])["TargetGroups"]}
    service = boto3.client("ecs", region_name="us-east-1").describe_services(
        cluster="gamepulse-dev", services=["grafana"])["services"][0]
    alarms = our_alarms()
    dims = {name: {d["Name"]: d["Value"] for d in alarm["Dimensions"]} for name, alarm in alarms.items()}
    assert dims["gamepulse-dev-alb-5xx"]["LoadBalancer"] == lb["LoadBalancerArn"].split(":loadbalancer/")[1]
    assert dims["gamepulse-dev-tg-grafana-unhealthy-hosts"]["TargetGroup"] == groups["grafana"].split(":")[-1]
    assert dims["gamepulse-dev-svc-grafana-cpu"] == {"ClusterName": service["clusterArn"].split("/")[-1],
                                                     "ServiceName": service["serviceName"]}

    run(manifest, aws, recorded, upstream=platform, destroy=True)
    after = {a["AlarmName"]: a for a in cloudwatch().describe_alarms(AlarmNamePrefix="TargetTracking-")["MetricAlarms"]}
    assert after == autoscaling
    assert our_alarms() == {}


def test_status_live_shows_each_alarm_state_by_what_it_watches_and_the_urls(aws, manifest):
    from orchestrator.context import StepContext
    from orchestrator.render import live_text
    recorded: dict = {}
    _, outputs, _ = run(manifest, aws, recorded)
    cloudwatch().set_alarm_state(AlarmName="gamepulse-dev-svc-gamepulse-memory", StateValue="ALARM",
                                 StateReason="test")
    before = len(aws.ledger.calls)
    view = STEP.live(StepContext(aws=aws, manifest=manifest, step="dashboards"), outputs)
    assert [c.operation for c in aws.ledger.calls[before:]] == ["DescribeAlarms"]
    lines = live_text({"dashboards": view}).splitlines()
    assert "    Grafana        http://gamepulse-dev-1.us-east-1.elb.amazonaws.com/grafana/" in lines
    assert "    load balancer  http://gamepulse-dev-1.us-east-1.elb.amazonaws.com" in lines
    assert any(line.split() == ["service", "gamepulse", "cpu", "OK,", "memory", "ALARM"] for line in lines), lines
    assert any(line.split() == ["target", "group", "grafana", "response-time", "OK,", "unhealthy-hosts", "OK"]
               for line in lines), lines
    assert any(line.split() == ["load", "balancer", "5xx", "OK"] for line in lines), lines


def test_killed_after_any_mutating_call_the_next_apply_converges_with_one_of_everything(aws, manifest):
    crashing, rerun = harness.forget_crash(aws), harness.forget_crash(aws)
    points = harness.kill_points(crashing, reset=lambda: harness.run_step(STEP, manifest, aws, UPSTREAM, {},
                                                                          destroy=True),
                                 run=lambda killed: harness.run_step(STEP, manifest, killed, UPSTREAM, {}))
    for n in points:
        harness.run_step(STEP, manifest, rerun, UPSTREAM, {})
        assert harness.plan_step(STEP, manifest, rerun, UPSTREAM) == [], f"not converged after crash {n}"
        assert [t["TopicArn"] for t in sns().list_topics()["Topics"]] == [TOPIC]
        assert len(sns().list_subscriptions_by_topic(TopicArn=TOPIC)["Subscriptions"]) == 1
        assert len(our_alarms()) == ALARMS
        assert [key_id()] == usable_keys()
        assert [d["DashboardName"] for d in cloudwatch().list_dashboards()["DashboardEntries"]] == ["gamepulse-dev"]
    assert n == 3 + ALARMS + 2, "key and alias, topic, subscription, an alarm each, dashboard: a cold apply's calls"
