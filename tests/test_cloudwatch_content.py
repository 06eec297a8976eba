"""CloudWatch's content, built without AWS: the alarms, the names `status --live` reads back, the
parameters PutMetricAlarm is given, and a dashboard body that reads back equal."""
from __future__ import annotations

import json

from orchestrator.model import Unknown
from orchestrator.schema import CloudWatchThresholds
from steps import cloudwatch_content
from steps.cloudwatch_content import Alarm

TOPIC = "arn:aws:sns:us-east-1:123456789012:gp-dev-alerts"
LB = "app/gp-dev/0123456789abcdef"
GROUPS = {"game-api": "targetgroup/gp-dev-game-api/1111111111111111"}
SERVICES = {"game-api": "game-api", "otel-gateway": "otel-gateway"}
LIMITS = CloudWatchThresholds(alb_5xx_count=7, response_time_seconds=0.5, unhealthy_hosts=2, cpu_percent=80,
                              memory_percent=85)


def built() -> dict[str, Alarm]:
    alarms = cloudwatch_content.alarms("gp-dev", LIMITS, TOPIC, LB, GROUPS, "gp-dev", SERVICES)
    return {alarm.name: alarm for alarm in alarms}


def test_each_load_balancer_target_group_and_service_gets_its_alarms_with_the_manifests_thresholds():
    assert {name: alarm.threshold for name, alarm in built().items()} == {
        "gp-dev-alb-5xx": 7.0,
        "gp-dev-tg-game-api-response-time": 0.5, "gp-dev-tg-game-api-unhealthy-hosts": 2.0,
        "gp-dev-svc-game-api-cpu": 80.0, "gp-dev-svc-game-api-memory": 85.0,
        "gp-dev-svc-otel-gateway-cpu": 80.0, "gp-dev-svc-otel-gateway-memory": 85.0}


def test_status_live_reads_what_each_alarm_watches_from_its_name_even_with_hyphenated_names():
    assert {name: cloudwatch_content.subject_and_check(name, "gp-dev-") for name in built()} == {
        "gp-dev-alb-5xx": ("load balancer", "5xx"),
        "gp-dev-tg-game-api-response-time": ("target group game-api", "response-time"),
        "gp-dev-tg-game-api-unhealthy-hosts": ("target group game-api", "unhealthy-hosts"),
        "gp-dev-svc-game-api-cpu": ("service game-api", "cpu"),
        "gp-dev-svc-game-api-memory": ("service game-api", "memory"),
        "gp-dev-svc-otel-gateway-cpu": ("service otel-gateway", "cpu"),
        "gp-dev-svc-otel-gateway-memory": ("service otel-gateway", "memory")}


def test_put_metric_alarm_is_given_every_field_a_plan_compares():
    alarm = built()["gp-dev-tg-game-api-unhealthy-hosts"]
    assert cloudwatch_content.alarm_params(alarm) == {
        "AlarmName": "gp-dev-tg-game-api-unhealthy-hosts",
        "AlarmDescription": "Targets of game-api fail their health check",
        "ActionsEnabled": True, "AlarmActions": [TOPIC], "OKActions": [TOPIC], "InsufficientDataActions": [],
        "Namespace": "AWS/ApplicationELB", "MetricName": "UnHealthyHostCount", "Statistic": "Maximum",
        "Dimensions": [{"Name": "LoadBalancer", "Value": LB},
                       {"Name": "TargetGroup", "Value": "targetgroup/gp-dev-game-api/1111111111111111"}],
        "Period": 60, "EvaluationPeriods": 5, "DatapointsToAlarm": 3, "Threshold": 2.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "notBreaching"}
    assert len(cloudwatch_content.ALARM_FIELDS) == len(cloudwatch_content.alarm_params(alarm)) - 1  # and the name


def test_the_dashboard_body_reads_back_equal_so_an_unchanged_apply_puts_nothing():
    arns = [f"arn:aws:cloudwatch:us-east-1:123456789012:alarm:{name}" for name in built()]
    body = cloudwatch_content.dashboard_body("us-east-1", LB, GROUPS, "gp-dev", SERVICES, arns)
    assert json.loads(cloudwatch_content.canonical(body)) == body
    assert cloudwatch_content.widget_titles(body) == [
        "Load balancer: requests and 5XX", "Target response time (s)", "Healthy and unhealthy targets",
        "ECS CPU (%)", "ECS memory (%)", "Alarms"]
    assert body["widgets"][-1]["properties"]["alarms"] == arns


def test_a_service_not_yet_created_keeps_its_dimension_unknown():
    unknown = Unknown("services.services.game-api")
    assert cloudwatch_content.service_name(unknown) is unknown
    assert cloudwatch_content.service_name("arn:aws:ecs:us-east-1:123456789012:service/gp-dev/game-api") == "game-api"
