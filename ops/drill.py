"""`orchestrator drill ENV SCENARIO`: rehearse what happens when things go wrong, on purpose and
bounded, and report as verify does.

- notify: a test notification through each Grafana contact point (Grafana's receiver test API)
  and a test message to the environment's SNS alert topic; what each channel answered.
- task-failure: stop one task of the app service; how long until ECS replaced it and the load
  balancer's targets were healthy again; whether the unhealthy-host alarm fired and resolved.
- alert: errors on the manifest's drill route (`loadtest.drill_route`, answered 5xx by the app for
  drills; no user request fails) until the error-rate rule fires; its path pending, firing, the
  contact point the notification policy routes it to, resolved.

Each refuses prod unless --allow-prod, and leaves things as they were: the stopped task is replaced
by ECS (the drill waits for it), the alert drill's traffic stops before it waits for resolved.
"""
from __future__ import annotations

import datetime as dt
import time

from ops.http import HttpError
from ops.report import Report
from orchestrator import waiters
from orchestrator.errors import OrchestratorError

SCENARIOS = ("notify", "task-failure")
#: Grafana answers a provisioned secure setting (a Slack URL) as this; a test sends the stored one.
REDACTED = "[REDACTED]"


def drill(deployed, scenario: str, *, timeout: float = 900.0) -> Report:
    report = Report(f"drill {scenario} {deployed.manifest.environment} ({deployed.manifest.prefix})")
    {"notify": notify, "task-failure": task_failure}[scenario](report, deployed, timeout)
    return report


# -- notify -----------------------------------------------------------------------------------


def notify(report: Report, deployed, timeout: float) -> None:
    grafana = deployed.grafana()
    by_name: dict[str, list[dict]] = {}
    for point in grafana.contact_points():
        by_name.setdefault(point["name"], []).append(point)
    for name, integrations in sorted(by_name.items()):
        configs = [{"uid": item["uid"], "name": name, "type": item["type"],
                    "settings": {key: value for key, value in (item.get("settings") or {}).items() if value != REDACTED},
                    "disableResolveMessage": item.get("disableResolveMessage", False)} for item in integrations]
        try:
            answers = grafana.test_receiver(name, configs)
        except HttpError as error:
            report.add(f"contact point {name}", False, str(error), "Grafana's receiver test API failed")
            continue
        for answer in answers:
            kind = next((item["type"] for item in integrations if item["uid"] == answer.get("uid")), "?")
            report.add(f"contact point {name} ({kind})", answer.get("status") == "ok",
                       f"{answer.get('status')}{': ' + answer['error'] if answer.get('error') else ''}",
                       f"check the {kind} settings (a Slack webhook comes from the slack-webhook secret; email needs "
                       "Grafana's SMTP settings)")
    topic = deployed.output("dashboards", "topic_arn")
    sns = deployed.aws.client("sns")
    message_id = sns.publish(TopicArn=topic, Subject=f"[drill] {deployed.manifest.prefix} notification test",
                             Message="A test from `orchestrator drill notify`: alerting reaches this address.")["MessageId"]
    subscriptions = [sub for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic)
                     for sub in page["Subscriptions"]]
    confirmed = [sub["Endpoint"] for sub in subscriptions if sub["SubscriptionArn"].startswith("arn:")]
    pending = [sub["Endpoint"] for sub in subscriptions if not sub["SubscriptionArn"].startswith("arn:")]
    report.add("SNS topic", bool(confirmed), f"message {message_id} published; confirmed: "
               f"{', '.join(confirmed) or 'none'}" + (f"; pending confirmation: {', '.join(pending)}" if pending else ""),
               "no confirmed subscription receives the alarms: confirm the email sent to each address")


# -- task-failure ------------------------------------------------------------------------------


def task_failure(report: Report, deployed, timeout: float) -> None:
    ecs, elb = deployed.aws.client("ecs"), deployed.aws.client("elbv2")
    cluster, service = deployed.cluster, deployed.app_service
    tasks = ecs.list_tasks(cluster=cluster, serviceName=service, desiredStatus="RUNNING")["taskArns"]
    if not tasks:
        raise OrchestratorError(f"service {service} runs no task to stop; nothing was changed")
    victim = sorted(tasks)[0]
    started, wall = waiters.clock(), dt.datetime.now(dt.timezone.utc)
    ecs.stop_task(cluster=cluster, task=victim, reason="orchestrator drill task-failure")
    report.note("stopped", f"task {victim.rsplit('/', 1)[-1]} of {service}")
    group = deployed.target_group(service)

    def replaced() -> tuple[bool, str]:
        state = ecs.describe_services(cluster=cluster, services=[service])["services"][0]
        running = [arn for arn in ecs.list_tasks(cluster=cluster, serviceName=service,
                                                 desiredStatus="RUNNING")["taskArns"] if arn != victim]
        return (len(running) >= state["desiredCount"] and state["runningCount"] >= state["desiredCount"],
                f"{len(running)}/{state['desiredCount']} running without the stopped task")

    def healthy() -> tuple[bool, str]:
        states = [t["TargetHealth"]["State"] for t in
                  elb.describe_target_health(TargetGroupArn=group)["TargetHealthDescriptions"]]
        wanted = ecs.describe_services(cluster=cluster, services=[service])["services"][0]["desiredCount"]
        return (states.count("healthy") >= wanted and set(states) <= {"healthy"},
                f"targets: {', '.join(sorted(states)) or 'none'}")

    for name, check, what in (("replaced", replaced, "ECS replaced the task"),
                              ("targets healthy", healthy, "the targets are healthy again")):
        try:
            evidence = waiters.wait_until(f"{service}: {what}", check, timeout=max(timeout - (waiters.clock() - started), 0))
            seconds = waiters.clock() - started
            report.facts[f"{name}_seconds"] = round(seconds, 1)
            report.add(name, True, f"after {seconds:.0f}s: {evidence}")
        except waiters.WaitTimeout as error:
            report.add(name, False, str(error), f"read the service's events (aws ecs describe-services --cluster "
                       f"{cluster} --services {service}) and docs/incidents.md, 'Unhealthy hosts'")
            return
    _alarm_path(report, deployed, service, wall)


def _alarm_path(report: Report, deployed, service: str, since) -> None:
    """The unhealthy-host alarm's transitions since the drill began (its history)."""
    key = deployed.manifest.services.tasks[service].target_group
    names = [name for name in (deployed.outputs.get("dashboards") or {}).get("alarm_names", [])
             if name.endswith(f"-tg-{key}-unhealthy-hosts")]
    if not names:
        report.note("unhealthy-host alarm", "none recorded for this environment")
        return
    history = deployed.aws.client("cloudwatch").describe_alarm_history(
        AlarmName=names[0], HistoryItemType="StateUpdate", StartDate=since, ScanBy="TimestampAscending")
    moves = [item["HistorySummary"] for item in history["AlarmHistoryItems"]]
    fired = any("to ALARM" in move for move in moves)
    report.note("unhealthy-host alarm", f"{names[0]}: " + ("; ".join(moves) if moves else
                "no state change (the replacement was quicker than the alarm's 3 of 5 minutes)")
                + ("" if not fired else ("" if "to OK" in moves[-1] else " (still in ALARM)")))
