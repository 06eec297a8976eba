"""Grafana's content, per environment: every dashboard and alert query parses and names only the
metrics, labels and datasources that exist (configs/grafana/metrics.yaml, the provisioned
datasources); each alert rule fires on series above its threshold and stays quiet below; alerts
escalate warning -> Slack, critical -> Slack and email; the Slack webhook never reaches a file;
an edited dashboard or threshold is a new grafana bundle hash, and nothing else moves.

The rules are evaluated, not timed: the PromQL subset they use is computed over given samples
(`promql`), and the Grafana expressions after it (reduce, math, threshold) over the results
(`run_rule`), the way Grafana's alerting does at one evaluation.
"""
from __future__ import annotations

import ast
import functools
import json
import math
import operator
import re
from pathlib import Path

import promql_parser
import pytest
import yaml

from orchestrator.errors import ManifestError, OrchestratorError
from orchestrator.manifest import load_manifest
from steps import bundles, grafana_content
from tests import promtool
from steps.bundles import Facts

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
NAMES = yaml.safe_load((ROOT / "configs" / "grafana" / "metrics.yaml").read_text())
ENVIRONMENTS = ["dev", "staging", "prod"]
# Grafana replaces these before a query reaches Prometheus; a valid stand-in keeps the parser honest.
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
SEVERITIES = ["warning", "critical"]


@functools.cache
def manifest(env: str):
    return load_manifest(MANIFESTS, env)  # frozen: safe to share between tests


def render(env: str, the_manifest=None) -> dict[str, bundles.Bundle]:
    return bundles.render(the_manifest or manifest(env), Facts(
        loki_bucket=f"gamepulse-{env}-loki-chunks", namespace=f"gamepulse-{env}.local", region="us-east-1",
        cluster_arn=f"arn:aws:ecs:us-east-1:123456789012:cluster/gamepulse-{env}",
        load_balancer_dns=f"gamepulse-{env}-1.us-east-1.elb.amazonaws.com"))


@functools.cache
def grafana_files(env: str) -> dict[str, bytes]:
    """The shipped manifest's grafana bundle (tests that change the content call `render`)."""
    return render(env)["grafana"].files


def dashboards(env: str) -> dict[str, dict]:
    return {path: json.loads(content) for path, content in grafana_files(env).items() if path.endswith(".json")}


def panels(env: str) -> list[dict]:
    return [panel for board in dashboards(env).values() for panel in board["panels"] if panel["type"] != "row"]


def rules(env: str) -> dict[str, dict]:
    (group,) = yaml.safe_load(grafana_files(env)["alerting/rules.yaml"])["groups"]
    return {rule["uid"]: rule for rule in group["rules"]}


def queries(env: str, datasource: str) -> list[dict]:
    """Every dashboard target and alert query model of one datasource."""
    found = [target for panel in panels(env) for target in panel["targets"]
             if target["datasource"]["uid"] == datasource]
    found += [query["model"] for rule in rules(env).values() for query in rule["data"]
              if query["datasourceUid"] == datasource]
    return found


def parse(query: str):
    for macro, value in GRAFANA_MACROS.items():
        query = query.replace(macro, value)
    return promql_parser.parse(query)


# --- names and datasources ----------------------------------------------------------------------

FAMILIES = {family["name"]: family for family in NAMES["prometheus"]}
SERIES_SUFFIXES = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("",), "gauge": ("",)}
SERIES = {name + suffix: family for name, family in FAMILIES.items() for suffix in SERIES_SUFFIXES[family["type"]]}
TARGET_LABELS = set(NAMES["translation"]["target_labels"])


def series_labels(series_name: str) -> set[str]:
    family = SERIES[series_name]
    return set(family["labels"]) | TARGET_LABELS | ({"le"} if series_name.endswith("_bucket") else set())


def selectors(node) -> list:
    found = []
    promql_parser.walk(node, lambda child: found.append(child) if isinstance(child, promql_parser.VectorSelector)
                       else None, None)
    return found


def grouping_labels(node) -> list[tuple[set[str], set[str]]]:
    """(labels an aggregation groups by, labels its input series have), for each aggregation."""
    found = []

    def visit(child):
        if isinstance(child, promql_parser.AggregateExpr) and child.modifier is not None:
            available = set.union(*(series_labels(s.name) for s in selectors(child.expr)))
            found.append((set(child.modifier.labels), available))

    promql_parser.walk(node, visit, None)
    return found


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_prometheus_query_names_listed_metrics_and_labels(env):
    expressions = [query["expr"] for query in queries(env, "prometheus")]
    assert len(expressions) >= 25  # the four dashboards and the latency and error rules
    for expression in expressions:
        tree = parse(expression)
        for selector in selectors(tree):
            assert selector.name in SERIES, f"{selector.name} (in {expression}) is not in configs/grafana/metrics.yaml"
            for matcher in selector.matchers.matchers:
                assert matcher.name in series_labels(selector.name), f"{matcher.name} in {expression}"
        for grouped, available in grouping_labels(tree):
            assert grouped <= available, f"{expression} groups by {grouped - available}, which its series lack"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_legends_name_labels_their_query_keeps(env):
    for panel in panels(env):
        for target in panel["targets"]:
            if "legendFormat" not in target:
                continue
            kept = set.union(set(), *(grouped for grouped, _ in grouping_labels(parse(target["expr"]))))
            assert set(re.findall(r"{{(\w+)}}", target["legendFormat"])) <= kept, (panel["title"], target)


def test_a_query_with_an_unlisted_metric_or_label_is_caught():
    """The checks above can fail: a pre-1.5 instrumentation name and an old label are refused."""
    assert "http_server_duration_milliseconds_bucket" not in SERIES
    (selector,) = selectors(parse('rate(http_server_request_duration_seconds_count{http_status_code="500"}[5m])'))
    assert "http_status_code" not in series_labels(selector.name)
    old_label = "sum by (http_method) (rate(http_server_request_duration_seconds_count[5m]))"
    ((grouped, available),) = grouping_labels(parse(old_label))
    assert not grouped <= available


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_panel_and_query_uses_a_provisioned_datasource(env):
    provisioned = {source["uid"]: source["type"] for source in
                   yaml.safe_load(grafana_files(env)["datasources/datasources.yaml"])["datasources"]}
    expression = grafana_content.EXPRESSION.uid
    for panel in panels(env):
        uid = panel["datasource"]["uid"]
        assert uid in provisioned or uid == grafana_content.MIXED.uid, panel["title"]
        for target in panel["targets"]:
            source = target["datasource"]
            assert source["uid"] in provisioned or source["uid"] == expression, panel["title"]
            assert source["type"] == provisioned.get(source["uid"], expression)
            if uid != grafana_content.MIXED.uid:
                assert source["uid"] in (uid, expression), panel["title"]
    for rule in rules(env).values():
        for query in rule["data"]:
            assert query["datasourceUid"] in provisioned or query["datasourceUid"] == expression, rule["uid"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_cloudwatch_queries_name_container_insights_metrics_of_this_cluster(env):
    cloudwatch = NAMES["cloudwatch"]
    found = queries(env, "cloudwatch")
    assert {query["metricName"] for query in found} == set(cloudwatch["metrics"])
    for query in found:
        assert query["namespace"] == cloudwatch["namespace"]
        assert list(query["dimensions"]) == cloudwatch["dimensions"]
        assert query["dimensions"]["ClusterName"] == f"gamepulse-{env}"  # the ecs step's cluster


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_log_and_trace_queries_name_what_loki_and_jaeger_have(env):
    loki = NAMES["loki"]
    log_queries = [query["expr"] for query in queries(env, "loki")]
    assert len(log_queries) == 2
    for query in log_queries:
        selector, _, pipeline = query.partition("}")
        assert {label for label, _ in re.findall(r'(\w+)\s*=~?\s*"([^"]*)"', selector)} <= set(loki["labels"])
        assert 'service_name="gamepulse"' in selector
        assert set(re.findall(r"\|\s*(\w+)\s*[=!<>]", pipeline)) <= set(loki["structured_metadata"])
    assert any("severity_number >= 17" in query for query in log_queries)  # ERROR and above
    trace_queries = queries(env, "jaeger")
    assert {query["queryType"] for query in trace_queries} == set(NAMES["jaeger"]["query_types"])
    assert {query.get("service") for query in trace_queries if query["queryType"] == "search"} == {"gamepulse"}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_dashboards_show_what_the_issue_asks_for(env):
    boards = {board["uid"]: board for board in dashboards(env).values()}
    assert set(boards) == {"gamepulse-application", "gamepulse-infrastructure", "gamepulse-database",
                           "gamepulse-logs-traces"}
    titles = {uid: " | ".join(panel["title"] for panel in board["panels"]).lower() for uid, board in boards.items()}
    for uid, words in {"gamepulse-application": ["request rate", "p50, p95, p99", "error rate", "status code"],
                       "gamepulse-infrastructure": ["cpu", "memory", "network"],
                       "gamepulse-database": ["connections", "query duration"],
                       "gamepulse-logs-traces": ["live logs", "errors", "trace latency"]}.items():
        assert all(word in titles[uid] for word in words), (uid, titles[uid])
    # No service map: it needs the collector's servicegraph connector, and the pinned
    # aws-otel-collector v0.49.0 is built with no connector (pkg/defaultcomponents/defaults.go).
    assert "service map" not in titles["gamepulse-logs-traces"]
    latency = next(panel for panel in boards["gamepulse-application"]["panels"] if panel["title"].startswith("Latency"))
    assert [parse(target["expr"]).args[0].val for target in latency["targets"]] == [0.5, 0.95, 0.99]
    for board in boards.values():  # provisioned panels need unique ids
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids))


# --- alert rules: fire above the threshold, quiet below -----------------------------------------

STEP, SPAN = 15, 600  # samples every 15 s over the last 10 minutes
BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]  # ASP.NET Core's defaults


def counter(labels: dict, per_second: float) -> tuple[dict, list[tuple[float, float]]]:
    return labels, [(t, per_second * t) for t in range(0, SPAN + 1, STEP)]


def error_samples(error_percent: float) -> list:
    name = "http_server_request_duration_seconds_count"
    return [counter({"__name__": name, "http_route": "/scores", "http_response_status_code": "200"},
                    10 * (1 - error_percent / 100)),
            counter({"__name__": name, "http_route": "/scores", "http_response_status_code": "500"},
                    10 * error_percent / 100)]


def latency_samples(slow_seconds: float) -> list:
    """90 % of requests take 8 ms, 10 % take `slow_seconds`: the p95 is in the slow request's bucket."""
    def per_second_at_or_below(bound: float) -> float:
        return 9 * (bound >= 0.008) + 1 * (bound >= slow_seconds)
    name = "http_server_request_duration_seconds_bucket"
    return [counter({"__name__": name, "le": "+Inf" if math.isinf(bound) else format(bound, "g")},
                    per_second_at_or_below(bound)) for bound in [*BUCKETS, math.inf]]


def usage_results(used_percent: dict[str, float]) -> dict[str, dict]:
    """What Container Insights answers for A (used) and B (reserved): a minute's averages per service."""
    reserved = 1024.0
    return {"A": {(("ServiceName", service),): [reserved * share / 100] * 10
                  for service, share in used_percent.items()},
            "B": {(("ServiceName", service),): [reserved] * 10 for service in used_percent}}


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("severity", SEVERITIES)
def test_error_rate_rule_fires_above_its_threshold_only(env, severity):
    threshold = getattr(manifest(env).alerting.thresholds.error_rate_percent, severity)
    rule = rules(env)[f"gamepulse-error-rate-{severity}"]
    assert run_rule(rule, prometheus_samples=error_samples(threshold * 1.5)) == {()}
    assert run_rule(rule, prometheus_samples=error_samples(threshold * 0.5)) == set()


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("severity", SEVERITIES)
def test_p95_latency_rule_fires_above_its_threshold_only(env, severity):
    threshold_ms = getattr(manifest(env).alerting.thresholds.p95_latency_ms, severity)
    rule = rules(env)[f"gamepulse-p95-latency-{severity}"]
    assert run_rule(rule, prometheus_samples=latency_samples(threshold_ms / 1000 * 2)) == {()}
    assert run_rule(rule, prometheus_samples=latency_samples(threshold_ms / 1000 / 2)) == set()


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("resource", ["cpu", "memory"])
def test_usage_rules_fire_for_the_service_above_the_threshold_only(env, severity, resource):
    threshold = getattr(getattr(manifest(env).alerting.thresholds, f"{resource}_percent"), severity)
    rule = rules(env)[f"gamepulse-{resource}-{severity}"]
    hot = run_rule(rule, query_results=usage_results({"gamepulse": min(threshold * 1.05, 100), "loki": threshold / 2}))
    assert hot == {(("ServiceName", "gamepulse"),)}
    assert run_rule(rule, query_results=usage_results({"gamepulse": threshold * 0.95, "loki": 1})) == set()


def test_an_error_rate_without_traffic_is_not_an_alert():
    """0/0 is NaN: the reduce step drops it instead of firing (and noDataState is OK)."""
    rule = rules("dev")["gamepulse-error-rate-warning"]
    idle = [counter({"__name__": "http_server_request_duration_seconds_count", "http_response_status_code": code}, 0)
            for code in ("200", "503")]
    assert run_rule(rule, prometheus_samples=idle) == set()
    assert rule["noDataState"] == "OK"  # silence has its own rule: the no-telemetry rule


def run_rule(rule: dict, prometheus_samples: list | None = None, query_results: dict | None = None) -> set:
    """The label sets of the alert instances the rule's condition makes firing at this evaluation."""
    results = dict(query_results or {})
    for query in rule["data"]:
        model, ref = query["model"], query["refId"]
        if query["datasourceUid"] == "prometheus":
            assert model["instant"] is True
            results[ref] = {labels: [value] for labels, value in promql(parse(model["expr"]), prometheus_samples)}
        elif query["datasourceUid"] == "__expr__":
            results[ref] = EXPRESSIONS[model["type"]](model, results)
        else:
            assert ref in results, f"the test gives no result for {ref} ({query['datasourceUid']})"
    return {labels for labels, values in results[rule["condition"]].items() if values == [1.0]}


def reduce_expression(model: dict, results: dict) -> dict:
    reducers = {"last": lambda values: values[-1], "mean": lambda values: sum(values) / len(values),
                "max": max, "min": min, "sum": sum}
    assert model["settings"]["mode"] == "dropNN"
    reduced = {}
    for labels, values in results[model["expression"]].items():
        numbers = [value for value in values if not math.isnan(value)]
        if numbers:
            reduced[labels] = [float(reducers[model["reducer"]](numbers))]
    return reduced


def math_expression(model: dict, results: dict) -> dict:
    """`$A / $B * 100`-style arithmetic, series joined on equal labels (Grafana's math)."""
    formula = model["expression"]
    refs = re.findall(r"\$(\w+)", formula)
    tree = ast.parse(re.sub(r"\$(\w+)", r"\1", formula), mode="eval").body
    binary = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

    def evaluate(node, values):
        if isinstance(node, ast.BinOp):
            return binary[type(node.op)](evaluate(node.left, values), evaluate(node.right, values))
        if isinstance(node, ast.Name):
            return values[node.id]
        return float(node.value)

    combined = {}
    for labels in results[refs[0]]:
        if all(labels in results[ref] for ref in refs):
            combined[labels] = [evaluate(tree, {ref: results[ref][labels][0] for ref in refs})]
    return combined


def threshold_expression(model: dict, results: dict) -> dict:
    (condition,) = model["conditions"]
    kind, (limit, *_) = condition["evaluator"]["type"], condition["evaluator"]["params"]
    test = {"gt": operator.gt, "lt": operator.lt}[kind]
    return {labels: [1.0 if test(values[0], limit) else 0.0] for labels, values in results[model["expression"]].items()}


EXPRESSIONS = {"reduce": reduce_expression, "math": math_expression, "threshold": threshold_expression}


# --- the PromQL subset the rules use, evaluated at the end of the samples -----------------------


def promql(node, samples: list, at: float = SPAN):
    """Instant evaluation: a number, or a list of (labels, value). `rate` is the increase over the
    samples in the range divided by their time span (Prometheus also extrapolates to the range's
    edges, which changes nothing for a steady rate)."""
    if isinstance(node, promql_parser.NumberLiteral):
        return node.val
    if isinstance(node, promql_parser.ParenExpr):
        return promql(node.expr, samples, at)
    if isinstance(node, promql_parser.Call) and node.func.name == "rate":
        (matrix,) = node.args
        start = at - matrix.range.total_seconds()
        rates = []
        for labels, points in matching(matrix.vector_selector, samples):
            window = [(t, v) for t, v in points if start < t <= at]
            if len(window) >= 2:
                (t0, v0), (t1, v1) = window[0], window[-1]
                rates.append((without(labels, "__name__"), (v1 - v0) / (t1 - t0)))
        return rates
    if isinstance(node, promql_parser.Call) and node.func.name == "histogram_quantile":
        quantile, vector = promql(node.args[0], samples, at), promql(node.args[1], samples, at)
        buckets: dict = {}
        for labels, value in vector:
            buckets.setdefault(without(labels, "le"), []).append((float(dict(labels)["le"]), value))
        return [(labels, bucket_quantile(quantile, sorted(points))) for labels, points in buckets.items()]
    if isinstance(node, promql_parser.AggregateExpr) and str(node.op) == "sum":
        by = set(node.modifier.labels) if node.modifier is not None else set()
        sums: dict = {}
        for labels, value in promql(node.expr, samples, at):
            key = tuple((name, v) for name, v in labels if name in by)
            sums[key] = sums.get(key, 0.0) + value
        return list(sums.items())
    if isinstance(node, promql_parser.BinaryExpr):
        assert node.modifier is None, "vector matching modifiers are not part of the subset"
        apply = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": divide}[str(node.op)]
        left, right = promql(node.lhs, samples, at), promql(node.rhs, samples, at)
        if isinstance(left, float) and isinstance(right, float):
            return apply(left, right)
        if isinstance(left, float):
            return [(labels, apply(left, value)) for labels, value in right]
        if isinstance(right, float):
            return [(labels, apply(value, right)) for labels, value in left]
        right_by_labels = dict(right)
        return [(labels, apply(value, right_by_labels[labels])) for labels, value in left if labels in right_by_labels]
    raise AssertionError(f"not in the evaluated subset: {node}")


def matching(selector, samples: list) -> list:
    tests = {"Equal": lambda v, want: v == want, "NotEqual": lambda v, want: v != want,
             "Re": lambda v, want: re.fullmatch(want, v) is not None,
             "NotRe": lambda v, want: re.fullmatch(want, v) is None}
    found = []
    for labels, points in samples:
        if labels["__name__"] != selector.name:
            continue
        if all(tests[str(matcher.op).rpartition(".")[2]](labels.get(matcher.name, ""), matcher.value)
               for matcher in selector.matchers.matchers):
            found.append((tuple(sorted(labels.items())), points))
    return found


def without(labels: tuple, name: str) -> tuple:
    return tuple(item for item in labels if item[0] != name)


def divide(left: float, right: float) -> float:
    return left / right if right else math.nan


def bucket_quantile(quantile: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile for cumulative buckets (upper bound, count), +Inf last."""
    total = buckets[-1][1]
    if total == 0:
        return math.nan
    rank = quantile * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


# --- notifications ------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_warnings_go_to_slack_and_critical_alerts_to_slack_and_email(env):
    files = grafana_files(env)
    points = {point["name"]: point for point in yaml.safe_load(files["alerting/contact-points.yaml"])["contactPoints"]}
    (policy,) = yaml.safe_load(files["alerting/policies.yaml"])["policies"]

    def integrations(severity: str) -> set[str]:
        route = next(r for r in policy["routes"] if r["object_matchers"] == [["severity", "=", severity]])
        return {receiver["type"] for receiver in points[route["receiver"]]["receivers"]}

    assert integrations("warning") == {"slack"}
    assert integrations("critical") == {"slack", "email"}
    assert points[policy["receiver"]]["receivers"][0]["type"] == "slack"  # anything unmatched still reaches someone
    assert policy["group_by"] and policy["group_wait"] and policy["group_interval"] and policy["repeat_interval"]
    email = next(r for r in points[grafana_content.CRITICAL]["receivers"] if r["type"] == "email")
    assert email["settings"]["addresses"].split(";") == manifest(env).alerting.email_addresses
    assert {rule["labels"]["severity"] for rule in rules(env).values()} == set(SEVERITIES)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_rules_are_valid_provisioning_entries(env):
    (group,) = yaml.safe_load(grafana_files(env)["alerting/rules.yaml"])["groups"]
    (provider,) = yaml.safe_load(grafana_files(env)["dashboards/providers.yaml"])["providers"]
    assert group["folder"] == provider["folder"] and group["interval"] and group["name"]
    # error rate, p95 latency, CPU, memory, each at two severities; no telemetry (critical)
    assert len(group["rules"]) == 9
    assert {rule["noDataState"] for rule in group["rules"]} <= {"OK", "NoData", "Alerting"}
    for rule in group["rules"]:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", rule["uid"])
        assert rule["condition"] in {query["refId"] for query in rule["data"]}
        assert all(query["model"]["refId"] == query["refId"] for query in rule["data"])
    assert len(rules(env)) == len(group["rules"])


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_slack_webhook_reaches_grafana_from_secrets_manager_and_no_file(env, monkeypatch):
    webhook = "https://hooks.slack.example/services/T000/B000/never-in-a-file"
    monkeypatch.setenv("GAMEPULSE_DEV_SLACK_WEBHOOK", webhook)
    rendered = render(env)
    grafana = rendered["grafana"]
    assert grafana.container.secrets[grafana_content.SLACK_WEBHOOK_VARIABLE] == "slack-webhook"
    assert grafana_content.SLACK_WEBHOOK_VARIABLE not in grafana.container.environment
    points = yaml.safe_load(grafana.files["alerting/contact-points.yaml"])["contactPoints"]
    urls = {r["settings"]["url"] for point in points for r in point["receivers"] if r["type"] == "slack"}
    assert urls == {"${" + grafana_content.SLACK_WEBHOOK_VARIABLE + "}"}  # Grafana fills it from its environment
    for bundle in rendered.values():
        assert all(b"hooks.slack" not in content for content in bundle.files.values()), bundle.service


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_only_the_webhook_variable_meets_grafanas_environment_expansion(env):
    """Grafana expands `$NAME` in provisioned rule titles, labels and contact point settings (not in
    query models or annotations): any other `$` there would silently become ''."""
    for rule in rules(env).values():
        expanded = {key: value for key, value in rule.items() if key not in ("data", "annotations")}
        assert "$" not in json.dumps(expanded), rule["uid"]
    points = yaml.safe_load(grafana_files(env)["alerting/contact-points.yaml"])["contactPoints"]
    assert set(re.findall(r"\$\{?\w*\}?", json.dumps(points))) == {"${" + grafana_content.SLACK_WEBHOOK_VARIABLE + "}"}


def test_an_alerting_section_needs_its_slack_secret_listed():
    the_manifest = manifest("dev")
    values = {name: spec for name, spec in the_manifest.secrets.values.items() if name != "slack-webhook"}
    stripped = the_manifest.model_copy(update={"secrets": the_manifest.secrets.model_copy(update={"values": values})})
    with pytest.raises(OrchestratorError, match="slack-webhook"):
        render("dev", stripped)


def test_without_an_alerting_section_grafana_gets_dashboards_only():
    the_manifest = manifest("dev").model_copy(update={"alerting": None})
    grafana = render("dev", the_manifest)["grafana"]
    assert not [path for path in grafana.files if path.startswith("alerting/")]
    assert len([path for path in grafana.files if path.endswith(".json")]) == 4
    assert grafana_content.SLACK_WEBHOOK_VARIABLE not in grafana.container.secrets


# --- the bundle moves exactly when the content does ---------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_same_manifest_same_bytes(env):
    assert {s: b.files for s, b in render(env).items()} == {s: b.files for s, b in render(env).items()}


def test_an_edited_dashboard_is_a_new_grafana_bundle_and_nothing_else(monkeypatch):
    before = {service: bundle.hash for service, bundle in render("dev").items()}
    original = grafana_content._database
    monkeypatch.setattr(grafana_content, "_database",
                        lambda the_manifest: original(the_manifest).description("pool and queries"))
    after = {service: bundle.hash for service, bundle in render("dev").items()}
    assert after["grafana"] != before["grafana"]
    assert {s: h for s, h in after.items() if s != "grafana"} == {s: h for s, h in before.items() if s != "grafana"}


def test_a_changed_threshold_is_a_new_grafana_bundle():
    the_manifest = manifest("dev")
    thresholds = the_manifest.alerting.thresholds
    changed = thresholds.model_copy(update={"cpu_percent": thresholds.cpu_percent.model_copy(update={"warning": 70.0})})
    alerting = the_manifest.alerting.model_copy(update={"thresholds": changed})
    edited = the_manifest.model_copy(update={"alerting": alerting})
    assert render("dev", edited)["grafana"].hash != render("dev")["grafana"].hash


# --- the manifest's alerting section ------------------------------------------------------------


@pytest.mark.parametrize("line, message", [
    ("    cpu_percent: {warning: 90, critical: 80}", "alerting.thresholds.cpu_percent.critical: is below warning (90)"),
    ("    memory_percent: {warning: 80, critical: 120}", "alerting.thresholds.memory_percent.critical"),
])
def test_thresholds_are_checked_where_they_are_written(tmp_path, line, message):
    for name in ("gamepulse.yaml", "staging.yaml", "prod.yaml"):
        (tmp_path / name).write_text((MANIFESTS / name).read_text())
    (tmp_path / "dev.yaml").write_text("alerting:\n  thresholds:\n" + line + "\n")
    with pytest.raises(ManifestError, match=re.escape(message)):
        load_manifest(tmp_path, "dev")


def test_email_addresses_must_be_addresses(tmp_path):
    for name in ("gamepulse.yaml", "staging.yaml", "prod.yaml"):
        (tmp_path / name).write_text((MANIFESTS / name).read_text())
    (tmp_path / "dev.yaml").write_text("alerting:\n  email_addresses: [oncall@example.com, 'ops; team']\n")
    message = "alerting.email_addresses.1: 'ops; team' is not an email address"
    with pytest.raises(ManifestError, match=re.escape(message)):
        load_manifest(tmp_path, "dev")


# --- PromQL as Prometheus evaluates it (promtool, tests/promtool.py) ----------------------------


def rate_interval(panel: dict) -> str:
    """Grafana's $__rate_interval for a panel: four times its minimum interval (the scrape
    interval), which is more than $__interval plus one scrape at any dashboard width of 1 h."""
    return f"{4 * int(panel['interval'].rstrip('s'))}s"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_promql_expression_is_valid_for_promtool(env, tmp_path):
    expressions = [query["expr"] for query in queries(env, "prometheus")]
    assert len(expressions) > 20
    rules_file = {"groups": [{"name": "every-query", "rules": [
        {"record": f"query:{index}", "expr": expression.replace("$__rate_interval", "1m")}
        for index, expression in enumerate(expressions)]}]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules_file))
    result = promtool.run("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_prometheus_panel_asks_for_no_less_than_the_scrape_interval(env):
    scrape = f"{manifest(env).observability.scrape_interval_seconds}s"
    prometheus_panels = [panel for panel in panels(env) if panel["datasource"]["uid"] == "prometheus"]
    assert prometheus_panels and all(panel["interval"] == scrape for panel in prometheus_panels)
    assert bundles.app_environment(manifest(env))["OTEL_METRIC_EXPORT_INTERVAL"] == str(
        manifest(env).observability.scrape_interval_seconds * 1000)


def exported_counter(export_seconds: int, scrape_seconds: int, phase: int, minutes: int = 8) -> str:
    """What Prometheus stores of a counter of 10 requests/s that the SDK exports every
    `export_seconds` (starting `phase` seconds in) and the sidecar's exporter serves until the
    next export: one value per scrape, in promtool's series notation."""
    values = []
    for t in range(0, minutes * 60 + 1, scrape_seconds):
        last_export = phase + ((t - phase) // export_seconds) * export_seconds if t >= phase else 0
        values.append(str(10 * max(last_export, 0)))
    return " ".join(values)


def gap_test(env: str, export_seconds: int, workdir):
    """promtool evaluates the application dashboard's request-rate query (with Grafana's
    $__rate_interval) every 5 s for a minute, over three tasks exporting out of phase; each
    evaluation must show traffic. No evaluation time falls on a sample, so Prometheus 3's
    left-open windows and 2.42's left-closed ones hold the same samples."""
    board = next(b for b in dashboards(env).values() if b["uid"] == "gamepulse-application")
    panel = next(p for p in board["panels"] if p["title"] == "Requests / s")
    query = panel["targets"][0]["expr"].replace("$__rate_interval", rate_interval(panel))
    scrape = manifest(env).observability.scrape_interval_seconds
    series = [{"series": f'http_server_request_duration_seconds_count{{instance="task-{phase}"}}',
               "values": exported_counter(export_seconds, scrape, phase)} for phase in (1, 6, 11)]
    evaluations = [{"expr": f"({query}) > bool 0", "eval_time": f"{6 * 60 + 2 + 5 * step}s",
                    "exp_samples": [{"labels": "{}", "value": 1}]} for step in range(12)]
    return promtool.test_rules({"groups": []}, {"evaluation_interval": f"{scrape}s", "tests": [
        {"interval": f"{scrape}s", "input_series": series, "promql_expr_test": evaluations}]}, workdir)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_dashboard_rates_have_no_zero_gaps_at_the_sdks_export_interval(env, tmp_path):
    export_seconds = int(bundles.app_environment(manifest(env))["OTEL_METRIC_EXPORT_INTERVAL"]) // 1000
    result = gap_test(env, export_seconds, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_sdks_default_export_interval_would_show_zero_gaps(tmp_path):
    """The .NET SDK's default, 60 s, with a 15 s scrape: some evaluations see no change in the window."""
    result = gap_test("dev", 60, tmp_path)
    assert result.returncode != 0 and "got: {} 0E+00" in result.stdout + result.stderr, result.stdout


def no_telemetry_alert(env: str) -> dict:
    """The no-telemetry rule as a Prometheus alerting rule: its query (A), below its threshold (C)."""
    rule = rules(env)["gamepulse-no-telemetry-critical"]
    by_ref = {query["refId"]: query["model"] for query in rule["data"]}
    (condition,) = by_ref[rule["condition"]]["conditions"]
    assert by_ref["B"]["reducer"] == "last" and by_ref[rule["condition"]]["expression"] == "B"
    comparison = {"lt": "<", "gt": ">"}[condition["evaluator"]["type"]]
    return {"alert": "NoTelemetry", "for": rule["for"],
            "expr": f"({by_ref['A']['expr']}) {comparison} {condition['evaluator']['params'][0]}"}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_no_telemetry_rule_fires_when_gamepulse_sends_nothing(env, tmp_path):
    """Two tasks report for 10 minutes, then nothing (their series go stale): the rule is quiet
    while they report and fires once the silence has lasted its `for`."""
    rule = rules(env)["gamepulse-no-telemetry-critical"]
    assert rule["noDataState"] == "Alerting" and rule["labels"]["severity"] == "critical"
    assert rule["annotations"]["runbook"] == "docs/incidents.md#no-telemetry-from-gamepulse"
    series = [{"series": f'dotnet_process_memory_working_set_bytes{{instance="task-{n}"}}',
               "values": "100000000+0x40 stale"} for n in (1, 2)]
    firing = [{"exp_labels": {}, "exp_annotations": {}}]
    checks = [("9m", []), ("13m", []), ("17m", firing)]
    result = promtool.test_rules(
        {"groups": [{"name": "grafana", "interval": "1m", "rules": [no_telemetry_alert(env)]}]},
        {"evaluation_interval": "1m", "tests": [{"interval": "15s", "input_series": series, "alert_rule_test": [
            {"eval_time": at, "alertname": "NoTelemetry", "exp_alerts": alerts} for at, alerts in checks]}]},
        tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_no_telemetry_rule_fires_when_gamepulse_never_sent_anything(tmp_path):
    result = promtool.test_rules(
        {"groups": [{"name": "grafana", "interval": "1m", "rules": [no_telemetry_alert("prod")]}]},
        {"evaluation_interval": "1m", "tests": [{"interval": "15s", "input_series": [], "alert_rule_test": [
            {"eval_time": "6m", "alertname": "NoTelemetry", "exp_alerts": [{"exp_labels": {}}]}]}]}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
