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

from ops.http import HttpError
from ops.report import Report
from orchestrator import waiters
from orchestrator.errors import OrchestratorError

#: Grafana answers a secure setting (a Slack URL) as this. The test sends each integration's uid
#: without it: Grafana loads the stored secure settings by uid before testing (grafana/grafana
#: pkg/services/ngalert/api/api_alertmanager.go, RoutePostTestReceivers: ProcessSecureSettings).
REDACTED = "[REDACTED]"


def drill(deployed, scenario: str, *, timeout: float = 900.0) -> Report:
    report = Report(f"drill {scenario} {deployed.manifest.environment} ({deployed.manifest.prefix})")
    {"notify": notify, "task-failure": task_failure, "alert": alert}[scenario](report, deployed, timeout)
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


# -- the error-rate rule, watched during a drill -----------------------------------------------

#: The Grafana rule a failing task or the alert drill moves: error rate, at each severity
#: (steps/grafana_content.py); there is no Grafana rule on unhealthy hosts (CloudWatch's alarm is).
ALERT_RULE = "error-rate"


class RuleWatch:
    """The error-rate rules' states, polled during a drill: when each state was first seen."""

    def __init__(self, grafana, manifest, started: float):
        from ops.verify import provisioned
        _, rules, _ = provisioned(manifest)
        self.grafana, self.started = grafana, started
        self.titles = {rule["labels"]["severity"]: rule["title"] for rule in rules
                       if rule["uid"].startswith(f"{manifest.app}-{ALERT_RULE}-")}
        self.seen: dict[str, dict[str, float]] = {severity: {} for severity in self.titles}

    def poll(self) -> dict[str, str]:
        found = {rule.get("name"): rule.get("state", "?") for rule in self.grafana.rule_states()}
        now = round(waiters.clock() - self.started, 1)
        states = {severity: found.get(title, "?") for severity, title in self.titles.items()}
        for severity, state in states.items():
            self.seen[severity].setdefault(state, now)
        return states

    def report(self, report: Report) -> None:
        for severity, title in sorted(self.titles.items()):
            report.note(f"rule {title}", ", ".join(f"{state} at +{at:.0f}s" for state, at in self.seen[severity].items()))


def rule_watch(report: Report, deployed, started: float):
    """A RuleWatch, or None (with a note) when Grafana cannot be reached: the drill goes on."""
    try:
        watch = RuleWatch(deployed.grafana(), deployed.manifest, started)
        watch.poll()
        return watch
    except (OrchestratorError, HttpError) as error:
        report.note("Grafana rules", f"not watched: {error}")
        return None


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
    watch = rule_watch(report, deployed, started)

    def replaced() -> tuple[bool, str]:
        if watch:
            watch.poll()
        state = ecs.describe_services(cluster=cluster, services=[service])["services"][0]
        running = [arn for arn in ecs.list_tasks(cluster=cluster, serviceName=service,
                                                 desiredStatus="RUNNING")["taskArns"] if arn != victim]
        return (len(running) >= state["desiredCount"] and state["runningCount"] >= state["desiredCount"],
                f"{len(running)}/{state['desiredCount']} running without the stopped task")

    def healthy() -> tuple[bool, str]:
        if watch:
            watch.poll()
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
                       f"{cluster} --services {service}) and docs/incidents.md, unhealthy hosts")
            break
    _alarm_path(report, deployed, service, wall)
    if watch:
        watch.report(report)


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


# -- alert ------------------------------------------------------------------------------------


def alert(report: Report, deployed, timeout: float) -> None:
    """Errors on the drill route until the warning rule fires, then silence until it resolves."""
    import tempfile
    from pathlib import Path

    from ops import k6
    manifest = deployed.manifest
    route = manifest.loadtest.drill_route if manifest.loadtest else None
    if not route:
        raise OrchestratorError("the alert drill needs loadtest.drill_route in the manifest: a route the app answers "
                                "with 5xx for drills and no user calls; nothing was changed")
    grafana = deployed.grafana()
    policy = grafana.get("/api/v1/provisioning/policies")
    binary = k6.find()
    script = Path(tempfile.mkdtemp(prefix="drill-")) / "alert.js"
    script.write_text(k6.drill_script(deployed.alb_url, route, manifest.loadtest.drill_rate, f"{int(timeout)}s"))
    started = waiters.clock()
    watch = RuleWatch(grafana, manifest, started)

    def fired() -> tuple[bool, str]:
        now = watch.poll()
        return now.get("warning") == "firing", ", ".join(f"{key} {value}" for key, value in sorted(now.items()))

    def resolved() -> tuple[bool, str]:
        now = watch.poll()
        return all(value in ("inactive", "normal") for value in now.values()), \
            ", ".join(f"{key} {value}" for key, value in sorted(now.items()))

    process = k6.start(binary, str(script), _free_port())
    report.note("errors sent", f"{manifest.loadtest.drill_rate}/s to {deployed.alb_url}{route}")
    try:
        _step(report, "firing", fired, timeout, started)
    finally:
        if process.poll() is None:
            process.terminate()
        process.communicate(timeout=60)
    report.add("traffic stopped", process.returncode is not None, "the drill's k6 has exited")
    watch.report(report)
    for severity, path in sorted(watch.seen.items()):
        if "firing" in path:
            report.add(f"routed {severity}", True, f"severity={severity} goes to {_receiver(policy, severity)} "
                       "(notification policy)")
    report.add("pending before firing", "pending" in watch.seen.get("warning", {}),
               "the rule waited its pending period (for: 5m)" if "pending" in watch.seen.get("warning", {}) else
               "the rule was never seen pending", "the rule fired without its pending period: check its `for`")
    _step(report, "resolved", resolved, timeout, started)


def _step(report: Report, name: str, check, timeout: float, started: float) -> None:
    try:
        evidence = waiters.wait_until(f"alert drill: {name}", check, timeout=timeout, max_delay=15.0)
        report.facts[f"{name}_seconds"] = round(waiters.clock() - started, 1)
        report.add(name, True, f"at +{waiters.clock() - started:.0f}s: {evidence}")
    except waiters.WaitTimeout as error:
        report.add(name, False, str(error), "the error-rate rule did not move: check its query in Grafana > Alerting "
                   "and that the drill route answers 5xx")


def _receiver(policy: dict, severity: str) -> str:
    """The contact point Grafana's notification policy tree routes `severity` to (first match)."""
    for route in policy.get("routes") or []:
        if ["severity", "=", severity] in (route.get("object_matchers") or []):
            return route.get("receiver") or policy.get("receiver", "?")
    return policy.get("receiver", "?")


def _free_port() -> int:
    from orchestrator.sandbox import free_port
    return free_port()
