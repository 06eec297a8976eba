"""Grafana's content for one environment: dashboards, alert rules, contact points and the
notification policy, built in code and delivered in the grafana bundle.

`files(manifest)` gives {path under Grafana's provisioning folder: bytes}; `bundles.render` adds
them to the grafana bundle, so an edited dashboard or threshold is a new bundle hash that `plan`
shows and `apply` rolls out. Same manifest, same bytes: JSON with sorted keys, YAML in a fixed
order. The grafana container's settings for delivering notifications (the Slack webhook's
variable, the mail server) are `steps/grafana_delivery.py`'s, which needs no SDK: a plan whose
rendered files were kept from an earlier run never imports this module.

Dashboards and alert queries are built with Grafana's grafana-foundation-sdk. The alerting files
are written in Grafana's file-provisioning format (apiVersion 1: `groups`, `contactPoints`,
`policies`; grafana/grafana pkg/services/provisioning/alerting), which is not the HTTP API shape
the SDK models, so only their queries, expressions and policy tree come from the SDK.

Every query names metrics listed in configs/grafana/metrics.yaml (with where each name comes
from) and a datasource by the fixed uid of configs/grafana/provisioning/datasources/datasources.yaml.
Why CPU, memory and network come from Container Insights: docs/grafana-content.md.
"""
from __future__ import annotations

import json

from grafana_foundation_sdk.builders import alerting, expr
from grafana_foundation_sdk.builders.cloudwatch import CloudWatchMetricsQuery
from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
from grafana_foundation_sdk.builders.histogram import Panel as Histogram
from grafana_foundation_sdk.builders.logs import Panel as Logs
from grafana_foundation_sdk.builders.loki import Dataquery as LokiQuery
from grafana_foundation_sdk.builders.prometheus import Dataquery as PrometheusQuery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.table import Panel as Table
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.alerting import RelativeTimeRange
from grafana_foundation_sdk.models.cloudwatch import CloudWatchQueryMode, MetricEditorMode, MetricQueryType
from grafana_foundation_sdk.models.common import LogsSortOrder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from steps.bundles import dump_yaml
from steps.grafana_delivery import SLACK_WEBHOOK_VARIABLE  # the contact points name it

# Datasources by the uids datasources.yaml provisions; expressions and mixed panels use Grafana's own.
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="prometheus")
LOKI = DataSourceRef(type_val="loki", uid="loki")
JAEGER = DataSourceRef(type_val="jaeger", uid="jaeger")
CLOUDWATCH = DataSourceRef(type_val="cloudwatch", uid="cloudwatch")
EXPRESSION = DataSourceRef(type_val="__expr__", uid="__expr__")
MIXED = DataSourceRef(type_val="datasource", uid="-- Mixed --")

#: The Grafana folder of the dashboards (providers.yaml) and of the alert rules.
FOLDER = "GamePulse"
SLACK, CRITICAL = "gamepulse-slack", "gamepulse-slack-and-email"

REQUESTS = "http_server_request_duration_seconds"
SERVER_ERROR = 'http_response_status_code=~"5.."'
QUANTILES = (0.5, 0.95, 0.99)
ALERT_WINDOW = "5m"
RATE = "$__rate_interval"  # Grafana's window for rate(): at least four scrape intervals
JSON = JSONEncoder(sort_keys=True, indent=2)


def files(manifest) -> dict[str, bytes]:
    """The dashboards (under the provider's folder `dashboards/<app>/`) and, when the manifest has
    an `alerting` section, the alerting files (`alerting/`)."""
    content = {f"dashboards/{manifest.app}/{board.uid}.json": (JSON.encode(board) + "\n").encode()
               for board in (_numbered(builder.build(), _min_interval(manifest)) for builder in _dashboards(manifest))}
    if manifest.alerting is not None:
        content["alerting/rules.yaml"] = _yaml(manifest, {"apiVersion": 1, "groups": [_rule_group(manifest)]})
        content["alerting/contact-points.yaml"] = _yaml(manifest, {"apiVersion": 1,
                                                                   "contactPoints": _contact_points(manifest)})
        content["alerting/policies.yaml"] = _yaml(manifest, {"apiVersion": 1, "policies": [_policy()]})
    return content


def _dashboards(manifest) -> list[Dashboard]:
    return [_application(manifest), _infrastructure(manifest), _database(manifest), _logs_and_traces(manifest)]


# -- dashboards ---------------------------------------------------------------------------------


def _min_interval(manifest) -> str:
    """No panel asks Prometheus for steps finer than its scrape interval (which the app's SDK
    exports at): `$__rate_interval` then spans at least four samples."""
    return f"{manifest.observability.scrape_interval_seconds}s"


def _dashboard(manifest, uid: str, title: str) -> Dashboard:
    return (Dashboard(f"{manifest.app} {title} ({manifest.environment})")
            .uid(f"{manifest.app}-{uid}")
            .tags([manifest.app, manifest.environment])
            .time("now-1h", "now").refresh("30s").timezone("browser"))


def _application(manifest) -> Dashboard:
    """Requests by route and status code: rate, p50/p95/p99 latency, error rate (ASP.NET Core's
    http.server.request.duration), and the calls the app makes (HttpClient)."""
    return (_dashboard(manifest, "application", "application")
            .with_row(Row("Overview"))
            .with_panel(_stat("Requests / s", "reqps", f"sum(rate({REQUESTS}_count[{RATE}]))"))
            .with_panel(_stat("Errors (5xx)", "percent", _error_percent("", RATE)))
            .with_panel(_stat("p95 latency", "s", _quantile(0.95, "", RATE)))
            .with_row(Row("By route"))
            .with_panel(_timeseries("Request rate by route and status code", "reqps", _prometheus(
                f"sum by (http_route, http_response_status_code) (rate({REQUESTS}_count[{RATE}]))",
                "{{http_route}} {{http_response_status_code}}")))
            .with_panel(_timeseries("Error rate by route (5xx share)", "percent", _prometheus(
                _error_percent("http_route", RATE), "{{http_route}}")))
            .with_panel(_timeseries("Latency by route: p50, p95, p99", "s", *(
                _prometheus(_quantile(q, "http_route", RATE), f"p{round(q * 100)} {{{{http_route}}}}",
                            ref_id=chr(ord("A") + i)) for i, q in enumerate(QUANTILES))))
            .with_panel(_timeseries("Requests by status code", "reqps", _prometheus(
                f"sum by (http_response_status_code) (rate({REQUESTS}_count[{RATE}]))",
                "{{http_response_status_code}}")))
            .with_row(Row("Calls out (HttpClient)"))
            .with_panel(_timeseries("Outgoing p95 latency by server", "s", _prometheus(
                "histogram_quantile(0.95, sum by (le, server_address) "
                f"(rate(http_client_request_duration_seconds_bucket[{RATE}])))", "{{server_address}}")))
            .with_panel(_timeseries("Requests in flight", "short", _prometheus(
                "sum(http_server_active_requests)", "server"), _prometheus(
                "sum(http_client_active_requests)", "client", ref_id="B"))))


def _infrastructure(manifest) -> Dashboard:
    """CPU, memory and network of every service from Container Insights; the .NET runtime's own
    view of the app beside it."""
    cluster = manifest.prefix
    return (_dashboard(manifest, "infrastructure", "infrastructure")
            .with_row(Row("Services (Container Insights)"))
            .with_panel(_share_of_reservation("CPU used / reserved by service", cluster, "Cpu"))
            .with_panel(_share_of_reservation("Memory used / reserved by service", cluster, "Memory"))
            .with_panel(_timeseries("Network received by service", "Bps",
                                    _container_insights("A", cluster, "NetworkRxBytes"), datasource=CLOUDWATCH))
            .with_panel(_timeseries("Network sent by service", "Bps",
                                    _container_insights("A", cluster, "NetworkTxBytes"), datasource=CLOUDWATCH))
            .with_panel(_timeseries("Running tasks by service", "short",
                                    _container_insights("A", cluster, "RunningTaskCount"), datasource=CLOUDWATCH))
            .with_row(Row(f"{manifest.app} .NET runtime"))
            .with_panel(_timeseries("Process CPU by task (cores)", "short", _prometheus(
                f"sum by (instance) (rate(dotnet_process_cpu_time_seconds_total[{RATE}]))", "{{instance}}")))
            .with_panel(_timeseries("Working set by task", "bytes", _prometheus(
                "sum by (instance) (dotnet_process_memory_working_set_bytes)", "{{instance}}")))
            .with_panel(_timeseries("GC collections by generation", "short", _prometheus(
                f"sum by (gc_heap_generation) (rate(dotnet_gc_collections_total[{RATE}]))",
                "{{gc_heap_generation}}")))
            .with_panel(_timeseries("Thread pool threads by task", "short", _prometheus(
                "sum by (instance) (dotnet_thread_pool_thread_count_total)", "{{instance}}"))))


def _database(manifest) -> Dashboard:
    """The app's connection pool and command durations, as the database client (Npgsql) reports them."""
    return (_dashboard(manifest, "database", "database")
            .with_panel(_timeseries("Connections by state", "short", _prometheus(
                "sum by (state) (db_client_connections_usage)", "{{state}}"), _prometheus(
                "sum(db_client_connections_max)", "max", ref_id="B")))
            .with_panel(_timeseries("Waiting for a connection", "short", _prometheus(
                "sum(db_client_connections_pending_requests)", "pending"), _prometheus(
                f"sum(rate(db_client_connections_timeouts_total[{RATE}]))", "timeouts / s", ref_id="B")))
            .with_panel(_timeseries("Query duration: p50, p95, p99", "s", *(
                _prometheus(f"histogram_quantile({q}, sum by (le) "
                            f"(rate(db_client_commands_duration_seconds_bucket[{RATE}])))",
                            f"p{round(q * 100)}", ref_id=chr(ord("A") + i)) for i, q in enumerate(QUANTILES))))
            .with_panel(_timeseries("Commands executing and failing", "short", _prometheus(
                "sum(db_client_commands_executing)", "executing"), _prometheus(
                f"sum(rate(db_client_commands_failed_total[{RATE}]))", "failed / s", ref_id="B"))))


def _logs_and_traces(manifest) -> Dashboard:
    """Live logs and errors (a log's trace id opens the trace: Loki datasource's derived field);
    trace latency and recent traces (a span opens its logs: Jaeger datasource's traces-to-logs).
    No service map: it needs the collector's servicegraph connector, and the pinned collector
    (aws-otel-collector v0.49.0, pkg/defaultcomponents/defaults.go) is built with no connector."""
    app = manifest.app
    stream = f'{{service_name="{app}"}}'
    return (_dashboard(manifest, "logs-traces", "logs and traces")
            .with_panel(_logs("Live logs", stream))
            .with_panel(_logs("Errors (severity ERROR and above)", f"{stream} | severity_number >= 17"))
            .with_panel(Histogram().title("Trace latency distribution (recent traces)").unit("ms")
                        .height(8).span(12).datasource(JAEGER).with_target(_jaeger("A", "search", app, limit=500)))
            .with_panel(Table().title("Recent traces (open one for its logs)").height(8).span(12)
                        .datasource(JAEGER).with_target(_jaeger("A", "search", app, limit=50))))


def _numbered(board, min_interval: str):
    """Panel ids 1, 2, ... in layout order: stable, and unique as links and alert rules need them;
    every panel that queries Prometheus gets the manifest's minimum interval."""
    for number, panel in enumerate(board.panels, start=1):
        panel.id_val = number
        if getattr(panel, "datasource", None) is not None and panel.datasource.uid == PROMETHEUS.uid:
            panel.interval = min_interval
    return board


# -- panels and queries -------------------------------------------------------------------------


def _timeseries(title: str, unit: str, *targets, datasource: DataSourceRef = PROMETHEUS) -> Timeseries:
    panel = Timeseries().title(title).unit(unit).height(8).span(12).datasource(datasource)
    for target in targets:
        panel = panel.with_target(target)
    return panel


def _stat(title: str, unit: str, query: str) -> Stat:
    return Stat().title(title).unit(unit).height(4).span(8).datasource(PROMETHEUS).with_target(
        _prometheus(query, title))


def _logs(title: str, query: str) -> Logs:
    return (Logs().title(title).height(12).span(12).datasource(LOKI)
            .show_time(True).wrap_log_message(True).enable_log_details(True).sort_order(LogsSortOrder.DESCENDING)
            .with_target(LokiQuery().ref_id("A").expr(query).datasource(LOKI)))


def _prometheus(query: str, legend: str, ref_id: str = "A") -> PrometheusQuery:
    return PrometheusQuery().ref_id(ref_id).expr(query).legend_format(legend).datasource(PROMETHEUS)


def _quantile(quantile: float, by: str, window: str) -> str:
    labels = ", ".join(["le", by] if by else ["le"])
    return f"histogram_quantile({quantile}, sum by ({labels}) (rate({REQUESTS}_bucket[{window}])))"


def _error_percent(by: str, window: str) -> str:
    grouping = f" by ({by}) " if by else ""
    return (f"100 * sum{grouping}(rate({REQUESTS}_count{{{SERVER_ERROR}}}[{window}]))"
            f" / sum{grouping}(rate({REQUESTS}_count[{window}]))")


def _container_insights(ref_id: str, cluster: str, metric: str, hide: bool = False) -> CloudWatchMetricsQuery:
    """One series per ECS service of the cluster (the ClusterName, ServiceName metrics of
    Container Insights), averaged over a minute."""
    return (CloudWatchMetricsQuery().ref_id(ref_id).hide(hide).datasource(CLOUDWATCH)
            .query_mode(CloudWatchQueryMode.METRICS).metric_query_type(MetricQueryType.SEARCH)
            .metric_editor_mode(MetricEditorMode.BUILDER).region("default")
            .namespace("ECS/ContainerInsights").metric_name(metric)
            .dimensions({"ClusterName": cluster, "ServiceName": "*"}).match_exact(True)
            .statistic("Average").period("60").label("${PROP('Dim.ServiceName')}"))


def _share_of_reservation(title: str, cluster: str, resource: str) -> Timeseries:
    """`<resource>Utilized / <resource>Reserved` in percent, per service (a server-side expression)."""
    return _timeseries(
        title, "percent",
        _container_insights("A", cluster, f"{resource}Utilized", hide=True),
        _container_insights("B", cluster, f"{resource}Reserved", hide=True),
        expr.TypeMath().ref_id("C").datasource(EXPRESSION).expression("$A / $B * 100"),
        datasource=MIXED)


class _JaegerQuery(cogvariants.Dataquery):
    """The Jaeger datasource's query (grafana/grafana public/app/plugins/datasource/jaeger/types.ts:
    queryType 'search' | 'dependencyGraph'); the SDK has no builder for it."""

    def __init__(self, ref_id: str, query_type: str, service: str | None, limit: int | None):
        self.fields = {"refId": ref_id, "queryType": query_type, "service": service, "limit": limit,
                       "datasource": JAEGER.to_json()}

    def to_json(self) -> dict:
        return {key: value for key, value in self.fields.items() if value is not None}


class _Built(cogbuilder.Builder):
    def __init__(self, built):
        self.built = built

    def build(self):
        return self.built


def _jaeger(ref_id: str, query_type: str, service: str | None = None, limit: int | None = None) -> _Built:
    return _Built(_JaegerQuery(ref_id, query_type, service, limit))


# -- alerting -----------------------------------------------------------------------------------


#: What each rule does when its query returns nothing, and why (Grafana's noDataState).
NO_DATA = {
    # No requests: no rate and no quantile to judge. Silence itself is the no-telemetry rule's.
    "error-rate": "OK",
    "p95-latency": "OK",
    # Container Insights has no series for a service with no running task (or with Container
    # Insights off): Grafana raises it as DatasourceNoData, at the rule's severity.
    "cpu": "NoData",
    "memory": "NoData",
    # Its query counts the app's series, or 0 (`or vector(0)`): nothing at all can only mean
    # Prometheus answered nothing, which is as blind as no telemetry.
    "no-telemetry": "Alerting",
}
#: A series every running task of the app exports whether or not it serves requests (the .NET
#: runtime's System.Runtime meter: configs/grafana/metrics.yaml).
HEARTBEAT = "dotnet_process_memory_working_set_bytes"
NO_TELEMETRY_QUERY = f"count({HEARTBEAT}) or vector(0)"


def _rule_group(manifest) -> dict:
    thresholds = manifest.alerting.thresholds
    rules = [_no_telemetry_rule(manifest)]
    for severity in ("warning", "critical"):
        rules += [
            _prometheus_rule(manifest, "error-rate", "High error rate", severity,
                             _error_percent("", ALERT_WINDOW), getattr(thresholds.error_rate_percent, severity),
                             "{{ humanize $values.B.Value }}% of requests answered 5xx over the last 5 minutes"),
            _prometheus_rule(manifest, "p95-latency", "High p95 latency", severity,
                             f"{_quantile(0.95, '', ALERT_WINDOW)} * 1000",
                             getattr(thresholds.p95_latency_ms, severity),
                             "p95 request duration is {{ humanize $values.B.Value }} ms over the last 5 minutes"),
            _usage_rule(manifest, "Cpu", "High CPU", severity, getattr(thresholds.cpu_percent, severity)),
            _usage_rule(manifest, "Memory", "High memory", severity, getattr(thresholds.memory_percent, severity)),
        ]
    return {"orgId": 1, "name": manifest.app, "folder": FOLDER, "interval": "1m", "rules": rules}


def _prometheus_rule(manifest, name: str, title: str, severity: str, query: str, threshold: float,
                     summary: str) -> dict:
    """A: the PromQL (one instant value), B: its last value, C: B above the threshold."""
    data = [
        _alert_query("A", PROMETHEUS.uid, PrometheusQuery().ref_id("A").expr(query).instant().datasource(PROMETHEUS)),
        _alert_query("B", EXPRESSION.uid, _reduce("B", "A", "last")),
        _alert_query("C", EXPRESSION.uid, _above("C", "B", threshold)),
    ]
    return _rule(manifest, name, title, severity, data, "C", threshold, summary)


def _no_telemetry_rule(manifest) -> dict:
    """Fires when Prometheus holds no series of the app's runtime for 5 minutes: the app, its
    collector sidecar or the scrape is broken, and every other rule is blind (docs/incidents.md)."""
    data = [
        _alert_query("A", PROMETHEUS.uid, PrometheusQuery().ref_id("A").expr(NO_TELEMETRY_QUERY).instant()
                     .datasource(PROMETHEUS)),
        _alert_query("B", EXPRESSION.uid, _reduce("B", "A", "last")),
        _alert_query("C", EXPRESSION.uid, _threshold("C", "B", "lt", 1)),
    ]
    rule = _rule(manifest, "no-telemetry", f"No telemetry from {manifest.app}", "critical", data, "C", 1,
                 f"Prometheus has received no metrics from any {manifest.app} task for 5 minutes: dashboards and "
                 "the other alert rules are blind")
    rule["annotations"]["runbook"] = f"docs/incidents.md#no-telemetry-from-{manifest.app}"
    return rule


def _usage_rule(manifest, resource: str, title: str, severity: str, threshold: float) -> dict:
    """A, B: used and reserved per service; C, D: their means over the range; E: C / D in percent;
    F: E above the threshold. One alert instance per service (the ServiceName label)."""
    cluster = manifest.prefix
    data = [
        _alert_query("A", CLOUDWATCH.uid, _container_insights("A", cluster, f"{resource}Utilized")),
        _alert_query("B", CLOUDWATCH.uid, _container_insights("B", cluster, f"{resource}Reserved")),
        _alert_query("C", EXPRESSION.uid, _reduce("C", "A", "mean")),
        _alert_query("D", EXPRESSION.uid, _reduce("D", "B", "mean")),
        _alert_query("E", EXPRESSION.uid, expr.TypeMath().ref_id("E").datasource(EXPRESSION)
                     .expression("$C / $D * 100")),
        _alert_query("F", EXPRESSION.uid, _above("F", "E", threshold)),
    ]
    summary = ("{{ $labels.ServiceName }} uses {{ humanize $values.E.Value }}% of its reserved "
               + resource.lower())
    return _rule(manifest, resource.lower(), title, severity, data, "F", threshold, summary)


def _rule(manifest, name: str, title: str, severity: str, data: list[dict], condition: str, threshold: float,
          summary: str) -> dict:
    return {
        "uid": f"{manifest.app}-{name}-{severity}",
        "title": f"{title} ({severity})",
        "condition": condition,
        "data": data,
        "noDataState": NO_DATA[name],
        "execErrState": "Error",
        "for": "5m",
        "annotations": {"summary": summary, "threshold": format(threshold, "g")},
        "labels": {"severity": severity, "app": manifest.app, "environment": manifest.environment},
        "isPaused": False,
    }


def _alert_query(ref_id: str, datasource_uid: str, model) -> dict:
    query = (alerting.Query(ref_id).datasource_uid(datasource_uid).model(model)
             .relative_time_range(RelativeTimeRange(from_val=600, to=0)))
    return _plain(query.build())


def _reduce(ref_id: str, of: str, reducer: str) -> expr.TypeReduce:
    """Non-numbers (a 0/0 error rate without traffic) are dropped, not alerted on."""
    return (expr.TypeReduce().ref_id(ref_id).datasource(EXPRESSION).expression(of).reducer(reducer)
            .settings(expr.ExprTypeReduceSettings().mode("dropNN")))


def _above(ref_id: str, of: str, threshold: float) -> expr.TypeThreshold:
    return _threshold(ref_id, of, "gt", threshold)


def _threshold(ref_id: str, of: str, comparison: str, threshold: float) -> expr.TypeThreshold:
    evaluator = expr.ExprTypeThresholdConditionsEvaluator().type(comparison).params([threshold])
    return (expr.TypeThreshold().ref_id(ref_id).datasource(EXPRESSION).expression(of)
            .conditions([expr.ExprTypeThresholdConditions().evaluator(evaluator)]))


def _contact_points(manifest) -> list[dict]:
    """Slack alone (warning) and Slack plus email (critical). The webhook is Grafana's environment
    variable, filled from Secrets Manager: the file names the variable, never the URL."""
    def slack(uid: str) -> dict:
        return {"uid": uid, "type": "slack",
                "settings": {"url": f"${{{SLACK_WEBHOOK_VARIABLE}}}", "username": "Grafana"}}

    email = {"uid": f"{manifest.app}-critical-email", "type": "email",
             "settings": {"addresses": ";".join(manifest.alerting.email_addresses), "singleEmail": True}}
    return [
        {"orgId": 1, "name": SLACK, "receivers": [slack(f"{manifest.app}-slack")]},
        {"orgId": 1, "name": CRITICAL, "receivers": [slack(f"{manifest.app}-critical-slack"), email]},
    ]


def _policy() -> dict:
    """The whole notification tree: warnings to Slack every 4 hours while they last, critical
    alerts to Slack and email every hour; alerts grouped per rule and service."""
    policy = (alerting.NotificationPolicy().receiver(SLACK)
              .group_by(["alertname", "severity", "ServiceName"])
              .group_wait("30s").group_interval("5m").repeat_interval("4h")
              .routes([alerting.NotificationPolicy().receiver(CRITICAL)
                       .object_matchers([["severity", "=", "critical"]]).repeat_interval("1h"),
                       alerting.NotificationPolicy().receiver(SLACK)
                       .object_matchers([["severity", "=", "warning"]]).repeat_interval("4h")]))
    return {"orgId": 1, **_plain(policy.build())}


def _plain(model) -> dict:
    """An SDK object as plain data (what its JSON says)."""
    return json.loads(JSON.encode(model))


def _yaml(manifest, data: dict) -> bytes:
    header = f"# Generated by steps/grafana_content.py for {manifest.prefix}; change the code, not this file.\n"
    return (header + dump_yaml(data)).encode()
