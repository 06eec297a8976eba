"""CloudWatch's content for one environment, beside Grafana's (steps/grafana_content.py): the
alarms and the dashboard body the dashboards step puts in place, built from the manifest's
thresholds and the alb and services steps' outputs. Pure: no AWS call, the same inputs give the
same alarms and body.

- Alarms on the load balancer's own 5XX answers, each target group's response time and unhealthy
  hosts, and each ECS service's CPU and memory, each notifying the alert topic (alarm and
  recovery). Names are PREFIX-SUBJECT-CHECK; `status --live` reads back what an alarm watches
  from its name (`subject_and_check`).
- A dashboard body for the AWS-level view, as plain data in the form CloudWatch keeps it, so that
  the body read back compares equal.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from orchestrator.model import is_unknown

#: Every alarm: minute values, at or above the threshold in 3 of the last 5 minutes.
PERIOD, EVALUATION_PERIODS, DATAPOINTS = 60, 5, 3
#: Every field of an alarm that AWS keeps and a plan compares.
ALARM_FIELDS = ("namespace", "metric", "statistic", "dimensions", "period", "evaluation_periods",
                "datapoints_to_alarm", "threshold", "comparison", "treat_missing_data", "actions_enabled",
                "alarm_actions", "ok_actions", "insufficient_data_actions", "description")
#: Alarm names: PREFIX-SUBJECT-CHECK; what `status --live` shows is read back from them.
SUBJECTS = {"alb": "load balancer", "tg": "target group", "svc": "service"}


@dataclass(frozen=True)
class Alarm:
    name: str  # PREFIX-SUBJECT-CHECK: `status --live` reads what it watches from it
    namespace: str
    metric: str
    statistic: str
    dimensions: tuple[tuple[str, str], ...]  # sorted (name, value)
    threshold: float
    alarm_actions: tuple[str, ...]  # the topic: it hears of trouble…
    description: str
    period: int = PERIOD
    evaluation_periods: int = EVALUATION_PERIODS
    datapoints_to_alarm: int = DATAPOINTS
    comparison: str = "GreaterThanOrEqualToThreshold"
    # No data is no trouble: no 5XX answers, no requests, a service scaled to nothing.
    treat_missing_data: str = "notBreaching"
    actions_enabled: bool = True
    insufficient_data_actions: tuple[str, ...] = ()

    @property
    def ok_actions(self) -> tuple[str, ...]:
        return self.alarm_actions  # …and of its end


@dataclass(frozen=True)
class Dashboard:
    name: str
    body: dict


def service_name(arn: str) -> str:
    """CloudWatch's ServiceName dimension: the name at the end of the service's ARN."""
    return arn if is_unknown(arn) else arn.rsplit("/", 1)[-1]


def alarms(prefix: str, limits, topic_arn: str, lb_suffix: str, groups: dict[str, str], cluster: str,
           services: dict[str, str]) -> tuple[Alarm, ...]:
    """The environment's alarms: `limits` are the manifest's `alerting.cloudwatch` thresholds,
    `groups` the target groups' ARN suffixes by key, `services` the ServiceName dimensions by task."""
    actions = (topic_arn,)
    lb = ("LoadBalancer", lb_suffix)
    found = [Alarm(f"{prefix}-alb-5xx", "AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", "Sum", (lb,),
                   float(limits.alb_5xx_count), actions,
                   "The load balancer itself answers 5XX (no healthy target, timeouts)")]
    for key, suffix in groups.items():
        dims = tuple(sorted((lb, ("TargetGroup", suffix))))
        found += [
            Alarm(f"{prefix}-tg-{key}-response-time", "AWS/ApplicationELB", "TargetResponseTime", "Average", dims,
                  float(limits.response_time_seconds), actions,
                  f"Targets of {key} answer slowly (seconds)"),
            Alarm(f"{prefix}-tg-{key}-unhealthy-hosts", "AWS/ApplicationELB", "UnHealthyHostCount", "Maximum", dims,
                  float(limits.unhealthy_hosts), actions,
                  f"Targets of {key} fail their health check")]
    for name, service in services.items():
        dims = (("ClusterName", cluster), ("ServiceName", service))
        found += [
            Alarm(f"{prefix}-svc-{name}-cpu", "AWS/ECS", "CPUUtilization", "Average", dims,
                  float(limits.cpu_percent), actions, f"ECS service {name} uses much of its CPU (percent)"),
            Alarm(f"{prefix}-svc-{name}-memory", "AWS/ECS", "MemoryUtilization", "Average", dims,
                  float(limits.memory_percent), actions,
                  f"ECS service {name} uses much of its memory (percent)")]
    return tuple(found)


def subject_and_check(name: str, prefix: str) -> tuple[str, str]:
    """`gamepulse-dev-svc-grafana-cpu` → ("service grafana", "cpu"), from the names `alarms` gives."""
    kind, _, rest = name.removeprefix(prefix).partition("-")
    if kind == "alb":
        return SUBJECTS["alb"], rest
    for check in ("response-time", "unhealthy-hosts", "cpu", "memory"):
        if rest.endswith(f"-{check}"):
            return f"{SUBJECTS.get(kind, kind)} {rest.removesuffix(f'-{check}')}", check
    return SUBJECTS.get(kind, kind), rest


def alarm_params(alarm: Alarm) -> dict:
    """PutMetricAlarm's parameters for `alarm` (without Tags: the step adds them on creation)."""
    return {"AlarmName": alarm.name, "AlarmDescription": alarm.description, "ActionsEnabled": alarm.actions_enabled,
            "AlarmActions": list(alarm.alarm_actions), "OKActions": list(alarm.ok_actions),
            "InsufficientDataActions": list(alarm.insufficient_data_actions),
            "Namespace": alarm.namespace, "MetricName": alarm.metric, "Statistic": alarm.statistic,
            "Dimensions": [{"Name": name, "Value": value} for name, value in alarm.dimensions],
            "Period": alarm.period, "EvaluationPeriods": alarm.evaluation_periods,
            "DatapointsToAlarm": alarm.datapoints_to_alarm, "Threshold": alarm.threshold,
            "ComparisonOperator": alarm.comparison, "TreatMissingData": alarm.treat_missing_data}


def dashboard_body(region: str, lb_suffix: str, groups: dict[str, str], cluster: str, services: dict[str, str],
                   alarm_arns: list[str]) -> dict:
    """The AWS-level view: the load balancer's traffic and errors, each target group's response
    time and hosts, each service's CPU and memory, and the state of every alarm. Plain data in
    the form CloudWatch keeps it, so that the body read back compares equal."""
    def metric_widget(title: str, metrics: list, y: int, x: int = 0, stat: str = "Sum") -> dict:
        return {"type": "metric", "x": x, "y": y, "width": 12, "height": 6,
                "properties": {"title": title, "region": region, "view": "timeSeries", "stacked": False,
                               "period": PERIOD, "stat": stat, "metrics": metrics}}

    elb = "AWS/ApplicationELB"
    widgets = [
        metric_widget("Load balancer: requests and 5XX", [
            [elb, "RequestCount", "LoadBalancer", lb_suffix],
            [elb, "HTTPCode_ELB_5XX_Count", "LoadBalancer", lb_suffix],
            [elb, "HTTPCode_Target_5XX_Count", "LoadBalancer", lb_suffix]], y=0),
        metric_widget("Target response time (s)", [
            [elb, "TargetResponseTime", "LoadBalancer", lb_suffix, "TargetGroup", suffix, {"label": key}]
            for key, suffix in groups.items()], y=0, x=12, stat="Average"),
        metric_widget("Healthy and unhealthy targets", [
            [elb, metric, "LoadBalancer", lb_suffix, "TargetGroup", suffix, {"label": f"{key} {label}"}]
            for key, suffix in groups.items()
            for metric, label in (("HealthyHostCount", "healthy"), ("UnHealthyHostCount", "unhealthy"))],
            y=6, stat="Maximum"),
        metric_widget("ECS CPU (%)", [["AWS/ECS", "CPUUtilization", "ClusterName", cluster, "ServiceName", service,
                                       {"label": name}] for name, service in services.items()],
                      y=6, x=12, stat="Average"),
        metric_widget("ECS memory (%)", [["AWS/ECS", "MemoryUtilization", "ClusterName", cluster, "ServiceName",
                                          service, {"label": name}] for name, service in services.items()],
                      y=12, stat="Average")]
    if alarm_arns:
        widgets.append({"type": "alarm", "x": 12, "y": 12, "width": 12, "height": 6,
                        "properties": {"title": "Alarms", "alarms": alarm_arns}})
    return {"widgets": widgets}


def canonical(body: dict) -> str:
    """The dashboard body as PutDashboard is given it: the same body, the same bytes."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def widget_titles(body: dict | None) -> list[str] | None:
    """The titles of a dashboard body's widgets (what a plan shows of a long body), or None."""
    if body is None:
        return None
    return [widget.get("properties", {}).get("title", "") for widget in body.get("widgets", [])]
