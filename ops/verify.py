"""`orchestrator verify ENV`: the deployed platform works end to end.

Checks, in order: the load balancer answers the app's health route; every service runs what it
should (running = desired, rollout COMPLETED, targets healthy); one request verify sends with its
own W3C trace id shows up as a trace in Jaeger, as log lines carrying that trace_id in Loki and as
an increase of its route's request-duration histogram in Prometheus (all read through Grafana);
every provisioned dashboard loads and each panel's queries return data; every alert rule is
loaded and healthy; every contact point exists; no CloudWatch alarm is in ALARM.
"""
from __future__ import annotations

import secrets
import time

import yaml

from ops.http import HttpError, request
from ops.report import EMPTY, INFO, Check, Report
from orchestrator import waiters
from orchestrator.errors import OrchestratorError

REQUESTS = "http_server_request_duration_seconds_count"
EXPRESSION_UID = "__expr__"


def verify(deployed, *, wait_seconds: float = 180.0, allow_empty: bool = False) -> Report:
    manifest = deployed.manifest
    if manifest.services is None:
        raise OrchestratorError(f"{manifest.environment} deploys no services: nothing to verify")
    report = Report(f"verify {manifest.environment} ({manifest.prefix}, {manifest.region})")
    check_load_balancer(report, deployed)
    check_services(report, deployed)
    grafana = grafana_or_fail(report, deployed)
    if grafana is not None:
        check_telemetry(report, deployed, grafana, wait_seconds)
        check_dashboards(report, deployed, grafana, allow_empty)
        check_alerting(report, deployed, grafana)
    check_alarms(report, deployed)
    return report


# -- traffic and services -------------------------------------------------------------------


def check_load_balancer(report: Report, deployed) -> None:
    manifest = deployed.manifest
    spec = manifest.load_balancer.target_groups[manifest.services.tasks[deployed.app_service].target_group]
    url = f"{deployed.alb_url}{spec.health_check.path}"
    try:
        answer = request("GET", url)
        ok = str(answer.status) in spec.health_check.matcher.split(",")
        report.add("load balancer", ok, f"GET {url} answered {answer.status}",
                   "the targets answer the health check but not through the load balancer: check its listeners "
                   "and rules (orchestrator status --live)")
    except HttpError as error:
        report.add("load balancer", False, str(error),
                   "the load balancer does not answer: check its security group and listeners, and DNS")


def check_services(report: Report, deployed) -> None:
    """What `status --live` reads of each service (steps/services.py `live`), judged."""
    from orchestrator.context import StepContext
    from steps.services import STEP
    view = STEP().live(StepContext(aws=deployed.aws, manifest=deployed.manifest, step="services"),
                       deployed.outputs.get("services") or {})
    for name, state in (view.get("services") or {}).items():
        if "desired" not in state:
            report.add(f"service {name}", False, state["line"], f"orchestrator apply {deployed.manifest.environment}")
            continue
        targets = state["targets"]
        has_targets = deployed.manifest.services.tasks[name].target_group is not None
        healthy = not has_targets or (targets.get("healthy", 0) > 0 and set(targets) == {"healthy"})
        ok = state["running"] == state["desired"] and state["rollout"] == "COMPLETED" and healthy
        report.add(f"service {name}", ok, state["line"],
                   f"read the service's events and stopped tasks (aws ecs describe-services --cluster "
                   f"{deployed.cluster} --services {name}); docs/incidents.md, unhealthy hosts")


def grafana_or_fail(report: Report, deployed):
    try:
        grafana = deployed.grafana()
        health = grafana.health()
    except HttpError as error:
        report.add("grafana", False, str(error), "Grafana does not answer behind the load balancer: check the grafana "
                   "service and its target group")
        return None
    report.add("grafana", health.get("database") == "ok",
               f"{deployed.grafana_url}/api/health: version {health.get('version', '?')}, database "
               f"{health.get('database', '?')}", "Grafana's database is not ok: read the grafana log group")
    return grafana


# -- one request through all three signals --------------------------------------------------


def probe_route(manifest) -> tuple[str, str]:
    """(route template, path to request): the heaviest loadtest route, `{id}` as 1."""
    routes = manifest.loadtest.routes if manifest.loadtest else []
    template = max(routes, key=lambda route: route.weight).path if routes else "/"
    return template, template.replace("{id}", "1")


def check_telemetry(report: Report, deployed, grafana, wait_seconds: float) -> None:
    manifest = deployed.manifest
    template, path = probe_route(manifest)
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    counter = f'sum({REQUESTS}{{http_route="{template}"}})'
    try:
        before = _value(grafana.prometheus(counter))
    except HttpError as error:
        before = None
        report.add("metrics (Prometheus)", False, str(error), "Grafana cannot reach Prometheus: check the prometheus "
                   "service and the Prometheus datasource")
    sent_ns = time.time_ns()
    url = f"{deployed.alb_url}{path}"
    try:
        answer = request("GET", url, headers={"traceparent": f"00-{trace_id}-{span_id}-01"})
        report.add("probe request", answer.status < 500, f"GET {url} with trace id {trace_id}: {answer.status}",
                   "the app answers errors: docs/incidents.md, 'High error rate'")
    except HttpError as error:
        report.add("probe request", False, str(error), "the load balancer does not answer")
        return
    deadline = waiters.clock() + wait_seconds
    _await(report, "trace (Jaeger)", deadline, lambda: _trace(grafana, trace_id),
           f"no trace {trace_id} in Jaeger: check the collector sidecar's traces pipeline (otlp exporter to jaeger) "
           "and the sampling ratio (observability.trace_sampling; verify's request asks to be sampled)")
    _await(report, "logs (Loki)", deadline, lambda: _logs(grafana, manifest.app, trace_id, sent_ns),
           "no log line with this trace_id: check the collector's logs pipeline to Loki and that the trace id "
           "stays structured metadata named trace_id (Loki's OTLP ingestion)")
    if before is not None:
        _await(report, "metrics (Prometheus)", deadline, lambda: _metric(grafana, counter, before),
               f"{REQUESTS} for route {template} did not grow: check Prometheus's scrape of the collector sidecar "
               "(port 8889) and the metric names in configs/grafana/metrics.yaml")


def _await(report: Report, name: str, deadline: float, check, action: str) -> None:
    """Poll `check` (→ (found, evidence)) until found or the shared deadline; one line either way."""
    try:
        evidence = waiters.wait_until(name, check, timeout=max(deadline - waiters.clock(), 0.0), max_delay=10.0)
        report.add(name, True, evidence)
    except waiters.WaitTimeout as timeout:
        report.add(name, False, str(timeout), action)
    except HttpError as error:
        report.add(name, False, str(error), action)


def _trace(grafana, trace_id: str) -> tuple[bool, str]:
    spans = grafana.jaeger_trace(trace_id)
    if not spans:
        return False, f"trace {trace_id} not in Jaeger yet"
    services = sorted({span.get("processID", "") for span in spans})
    return True, f"trace {trace_id}: {len(spans)} span(s) from {len(services)} process(es)"


def _logs(grafana, app: str, trace_id: str, since_ns: int) -> tuple[bool, str]:
    start, end = since_ns - 300 * 10**9, time.time_ns() + 60 * 10**9
    streams = grafana.loki(f'{{service_name="{app}"}} | trace_id="{trace_id}"', start, end)
    lines = sum(len(stream.get("values", [])) for stream in streams)
    if lines:
        return True, f"{lines} log line(s) with trace_id={trace_id}"
    recent = grafana.loki(f'{{service_name="{app}"}}', start, end, limit=20)
    labels = sorted({label for stream in recent for label in stream.get("stream", {})})
    return False, (f"no line with trace_id={trace_id}; recent {app} lines carry: {', '.join(labels)}" if labels
                   else f"no {app} log lines at all since the request")


def _metric(grafana, counter: str, before: float) -> tuple[bool, str]:
    now = _value(grafana.prometheus(counter))
    if now > before:
        return True, f"{counter}: {before:g} -> {now:g}"
    return False, f"{counter} still {now:g}"


def _value(samples: list[dict]) -> float:
    """An instant vector's single value (Prometheus `value: [time, "number"]`); none is 0."""
    return sum(float(sample["value"][1]) for sample in samples)


# -- dashboards, rules, contact points ------------------------------------------------------


def provisioned(manifest) -> tuple[dict[str, str], list[dict], list[str]]:
    """What the grafana bundle provisions (steps/grafana_content.py): dashboard uid → title,
    the alert rules, the contact point names."""
    import json
    from steps import grafana_content
    files = grafana_content.files(manifest)
    boards = {}
    for path, content in files.items():
        if path.startswith("dashboards/"):
            board = json.loads(content)
            boards[board["uid"]] = board["title"]
    rules = [rule for group in yaml.safe_load(files.get("alerting/rules.yaml", b"groups: []"))["groups"]
             for rule in group["rules"]]
    points = [point["name"] for point in
              yaml.safe_load(files.get("alerting/contact-points.yaml", b"contactPoints: []"))["contactPoints"]]
    return boards, rules, points


def check_dashboards(report: Report, deployed, grafana, allow_empty: bool) -> None:
    boards, _, _ = provisioned(deployed.manifest)
    try:
        found = {item["uid"] for item in grafana.dashboards(deployed.manifest.app)}
    except HttpError as error:
        report.add("dashboards", False, str(error), "Grafana's search API failed")
        return
    for uid, title in boards.items():
        if uid not in found:
            report.add(f"dashboard {title}", False, f"uid {uid} not provisioned in Grafana",
                       "read the grafana log group for provisioning errors; the bundle holds "
                       f"dashboards/{deployed.manifest.app}/{uid}.json")
            continue
        board = grafana.dashboard(uid)
        for panel in panels(board):
            check_panel(report, grafana, board, panel, allow_empty)


def panels(board: dict) -> list[dict]:
    """Every panel that queries something, rows' own panels included."""
    found = []
    for panel in board.get("panels", []):
        if panel.get("type") == "row":
            found += [inner for inner in panel.get("panels", []) if inner.get("targets")]
        elif panel.get("targets"):
            found.append(panel)
    return found


def check_panel(report: Report, grafana, board: dict, panel: dict, allow_empty: bool) -> None:
    name = f"panel {board.get('title', '?')} / {panel.get('title', '?')}"
    series, errors, queries = 0, [], []
    for target in panel["targets"]:
        datasource = target.get("datasource") or panel.get("datasource") or {}
        if datasource.get("uid") == EXPRESSION_UID:
            continue  # computed from the panel's other queries
        queries.append(_describe(target))
        try:
            result = grafana.query({**target, "datasource": datasource}).get(target.get("refId", "A"), {})
        except HttpError as error:
            result = {"error": str(error)}
        if result.get("error"):
            errors.append(f"{target.get('refId', 'A')}: {result['error']}")
        series += sum(1 for frame in result.get("frames", []) if _has_values(frame))
    if errors:
        report.add(name, False, "; ".join(errors), "fix the query or its datasource (Grafana > Explore shows it)")
    elif series:
        report.add(name, True, f"{series} series")
    else:
        check = Check(name, EMPTY, f"no data for {' | '.join(queries)}",
                      "" if allow_empty else "send traffic first (orchestrator loadtest), or check the metric "
                      "exists (configs/grafana/metrics.yaml); --allow-empty lists empty panels without failing")
        if allow_empty:
            check.result = INFO
        report.checks.append(check)


def _describe(target: dict) -> str:
    for key in ("expr", "query", "metricName", "queryType"):
        if target.get(key):
            return str(target[key])
    return target.get("refId", "?")


def _has_values(frame: dict) -> bool:
    values = (frame.get("data") or {}).get("values") or []
    return any(len(column) for column in values)


def check_alerting(report: Report, deployed, grafana) -> None:
    _, rules, points = provisioned(deployed.manifest)
    if not rules:
        return
    try:
        loaded = {rule.get("uid") for rule in grafana.alert_rules()}
        states = {rule.get("name"): rule for rule in grafana.rule_states()}
        names = {point.get("name") for point in grafana.contact_points()}
    except HttpError as error:
        report.add("alerting", False, str(error), "Grafana's alerting API failed")
        return
    for rule in rules:
        state = states.get(rule["title"])
        if rule["uid"] not in loaded or state is None:
            report.add(f"rule {rule['title']}", False, f"rule {rule['uid']} is not loaded",
                       "read the grafana log group for alerting provisioning errors")
        elif state.get("health") == "error":
            report.add(f"rule {rule['title']}", False, f"health error: {state.get('lastError', '?')}",
                       "a datasource error: check the rule's datasource (docs/incidents.md, 'A rule in error')")
        else:
            report.add(f"rule {rule['title']}", True, f"{state.get('state', '?')}, health {state.get('health', '?')}")
    for point in points:
        report.add(f"contact point {point}", point in names,
                   "exists" if point in names else f"missing; Grafana has: {', '.join(sorted(filter(None, names)))}",
                   "read the grafana log group for alerting provisioning errors")


# -- CloudWatch -----------------------------------------------------------------------------


def check_alarms(report: Report, deployed) -> None:
    names = (deployed.outputs.get("dashboards") or {}).get("alarm_names") or []
    if not names:
        return
    cloudwatch = deployed.aws.client("cloudwatch")
    found = {}
    for start in range(0, len(names), 100):
        for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmNames=names[start:start + 100],
                                                                         AlarmTypes=["MetricAlarm"]):
            found.update({alarm["AlarmName"]: alarm["StateValue"] for alarm in page["MetricAlarms"]})
    missing = sorted(set(names) - set(found))
    firing = sorted(name for name, state in found.items() if state == "ALARM")
    counts = {}
    for state in found.values():
        counts[state] = counts.get(state, 0) + 1
    evidence = f"{len(found)} alarm(s): " + ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
    if firing:
        evidence += f"; in ALARM: {', '.join(firing)}"
    if missing:
        evidence += f"; missing: {', '.join(missing)}"
    report.add("CloudWatch alarms", not firing and not missing, evidence,
               "see docs/incidents.md for each alarm" if firing else
               f"orchestrator apply {deployed.manifest.environment} --target dashboards")
