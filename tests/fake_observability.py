"""A local stand-in, on 127.0.0.1, for what sits behind the load balancer: the app's routes and
Grafana with its datasource proxy to Prometheus, Loki and Jaeger. It answers each project's
documented response shapes, so verify's and the drills' query builders, parsing, waits and
failure reports run for real; `omit` drops one signal at a time.

Sources of the shapes (each project's own API docs or source):
- Grafana /api/health: grafana/grafana docs/sources/developer-resources/api-reference/http-api/other.md
  ("Returns health information about Grafana": commit, database, version).
- /api/search and /api/dashboards/uid/<uid>: same folder, folder_dashboard_search.md and dashboard.md
  (a list of {uid, title, type: dash-db, tags, ...}; {"dashboard": {...}, "meta": {...}}).
- /api/ds/query: same folder, data_source.md "Query a data source": {"results": {refId: {"frames":
  [{"schema": {...}, "data": {"values": [[...], [...]]}}]}}}; an error is the result's "error" and
  "status" (@grafana/runtime utils/queryResponse.ts, DataResponse).
- /api/v1/provisioning/alert-rules and /contact-points: alerting_provisioning.md (lists of rules
  with uid, title, ...; of contact points with uid, name, type, settings).
- /api/prometheus/grafana/api/v1/rules: pkg/services/ngalert/api/tooling/definitions/prom.go
  (RuleResponse: status, data.groups[].rules[] with name, state, health, lastError, type).
- /api/alertmanager/grafana/config/api/v1/receivers/test: definitions/alertmanager.go
  (TestReceiversResult: alert, receivers[].grafana_managed_receiver_configs[] {name, uid, status,
  error}, notified_at; 207 when some failed).
- Prometheus /api/v1/query: prometheus/prometheus docs/querying/api.md ("resultType": "vector",
  "result": [{"metric": {...}, "value": [time, "string"]}]).
- Loki /loki/api/v1/query_range: grafana/loki docs/sources/reference/loki-http-api.md
  ("resultType": "streams", "result": [{"stream": {labels}, "values": [["<ns>", "<line>"]]}]).
- Jaeger GET /api/traces/{traceID} (v2 serves the same query API): jaegertracing/jaeger
  cmd/query/app/http_handler.go (structuredResponse {data, total, limit, offset, errors}; 404
  with errors [{code, msg}] for a trace it does not have); spans as model/json (traceID, spanID,
  operationName, processID, ...), processes by id.
"""
from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

#: What `omit` can leave out, one at a time.
SIGNALS = ("trace", "loki_label", "panel", "rule", "metric")
REQUESTS = "http_server_request_duration_seconds_count"


class FakePlatform:
    """The app's routes at /, Grafana at /grafana. `omit`: a signal from SIGNALS that is missing
    or wrong; `empty_query`: a substring of the panel query answered without data (omit="panel");
    `failing_receiver`: the integration type whose receiver test fails."""

    def __init__(self, manifest, *, omit: str | None = None, error_paths: tuple[str, ...] = (),
                 trace_delay_polls: int = 0):
        from steps import grafana_content
        self.manifest, self.omit, self.error_paths = manifest, omit, error_paths
        self.trace_delay_polls, self.trace_polls = trace_delay_polls, 0  # Jaeger has a trace only after N reads
        files = grafana_content.files(manifest)
        self.boards = {json.loads(content)["uid"]: json.loads(content)
                       for path, content in files.items() if path.startswith("dashboards/")}
        self.rules = [rule for group in yaml.safe_load(files["alerting/rules.yaml"])["groups"]
                      for rule in group["rules"]]
        self.points = yaml.safe_load(files["alerting/contact-points.yaml"])["contactPoints"]
        self.policy = yaml.safe_load(files["alerting/policies.yaml"])["policies"][0]
        self.last_error_at = 0.0  # when the app last answered 500 (drives the error-rate rules)
        self.empty_query = "dotnet_gc_collections_total"
        self.failing_receiver: str | None = None
        self.hits: Counter = Counter()  # path → requests the app routes answered
        self.traces: dict[str, dict] = {}
        self.logs: list[tuple[dict, int, str]] = []
        self.route_counts: Counter = Counter()
        self.tested_receivers: list[dict] = []
        self._lock = threading.Lock()
        platform = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                platform.handle(self, "GET", None)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                platform.handle(self, "POST", json.loads(self.rfile.read(length) or b"null"))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- dispatch -----------------------------------------------------------------------------

    def handle(self, handler, method: str, body) -> None:
        parts = urllib.parse.urlsplit(handler.path)
        path, query = parts.path, urllib.parse.parse_qs(parts.query)
        if path.startswith("/grafana/"):
            status, answer = self.grafana(method, path[len("/grafana"):], query, body)
        else:
            status, answer = self.app(path, handler.headers.get("traceparent"))
        payload = json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    # -- the app behind the load balancer ---------------------------------------------------

    def app(self, path: str, traceparent: str | None):
        route = re.sub(r"^/api/games/\d+$", "/api/games/{id}", path)
        status = 500 if path in self.error_paths else 200
        with self._lock:
            self.hits[path] += 1
            if status == 500:
                self.last_error_at = time.monotonic()
            if self.omit != "metric":
                self.route_counts[route] += 1
        if traceparent:
            self.record_telemetry(route, traceparent)
        return status, {"ok": status == 200}

    def record_telemetry(self, route: str, traceparent: str) -> None:
        _, trace_id, span_id, _ = traceparent.split("-")
        if self.omit != "trace":
            self.traces[trace_id] = {
                "traceID": trace_id, "processes": {"p1": {"serviceName": self.manifest.app, "tags": []}},
                "spans": [{"traceID": trace_id, "spanID": "a1b2c3d4e5f60718", "operationName": f"GET {route}",
                           "references": [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": span_id}],
                           "startTime": time.time_ns() // 1000, "duration": 1200, "tags": [], "logs": [],
                           "processID": "p1", "warnings": None}],
                "warnings": None}
        label = "traceid" if self.omit == "loki_label" else "trace_id"
        self.logs.append(({"service_name": self.manifest.app, "severity_text": "Information", label: trace_id},
                          time.time_ns(), f"Request finished HTTP/1.1 GET {route} - 200"))

    # -- Grafana -------------------------------------------------------------------------------

    def grafana(self, method: str, path: str, query: dict, body):
        if path == "/api/health":
            return 200, {"commit": "0000000", "database": "ok", "version": "13.2.0"}
        if path == "/api/search":
            return 200, [{"uid": uid, "title": board["title"], "type": "dash-db", "tags": board.get("tags", []),
                          "url": f"/grafana/d/{uid}", "folderTitle": "GamePulse"} for uid, board in self.boards.items()]
        if path.startswith("/api/dashboards/uid/"):
            board = self.boards.get(path.rsplit("/", 1)[-1])
            return (200, {"dashboard": board, "meta": {"provisioned": True}}) if board else \
                (404, {"message": "Dashboard not found"})
        if path == "/api/ds/query":
            return 200, {"results": {q.get("refId", "A"): self.frames(q) for q in body["queries"]}}
        if path == "/api/v1/provisioning/alert-rules":
            return 200, [{"uid": rule["uid"], "title": rule["title"], "folderUID": "gamepulse",
                          "ruleGroup": self.manifest.app, "condition": rule["condition"], "data": rule["data"]}
                         for rule in self.rules]
        if path == "/api/prometheus/grafana/api/v1/rules":
            return 200, {"status": "success", "data": {"groups": [{
                "name": self.manifest.app, "file": "GamePulse", "interval": 60,
                "lastEvaluation": "2026-12-06T12:00:00Z", "evaluationTime": 0.01,
                "rules": [self.rule_state(rule) for rule in self.rules]}]}}
        if path == "/api/v1/provisioning/policies":  # the notification policy tree (a Route)
            return 200, {key: value for key, value in self.policy.items() if key != "orgId"}
        if path == "/api/v1/provisioning/contact-points":  # secure settings read back redacted
            return 200, [{"uid": receiver["uid"], "name": point["name"], "type": receiver["type"],
                          "settings": {key: "[REDACTED]" if key == "url" and receiver["type"] == "slack" else value
                                       for key, value in receiver["settings"].items()},
                          "disableResolveMessage": False}
                         for point in self.points for receiver in point["receivers"]]
        if path == "/api/alertmanager/grafana/config/api/v1/receivers/test":
            return self.test_receivers(body)
        if path.startswith("/api/datasources/proxy/uid/"):
            return self.proxy(path[len("/api/datasources/proxy/uid/"):], query)
        return 404, {"message": "Not found"}

    def frames(self, target: dict) -> dict:
        described = json.dumps(target)
        if self.omit == "panel" and self.empty_query in described:
            return {"status": 200, "frames": []}
        return {"status": 200, "frames": [{
            "schema": {"refId": target.get("refId", "A"), "fields": [
                {"name": "Time", "type": "time", "typeInfo": {"frame": "time.Time"}},
                {"name": "Value", "type": "number", "typeInfo": {"frame": "float64", "nullable": True}}]},
            "data": {"values": [[1765022400000, 1765022460000], [1.0, 2.0]]}}]}

    def rule_state(self, rule: dict) -> dict:
        state = {"name": rule["title"], "query": "", "labels": rule.get("labels", {}), "health": "ok",
                 "type": "alerting", "state": "inactive", "lastEvaluation": "2026-12-06T12:00:00Z",
                 "evaluationTime": 0.01}
        if self.omit == "rule" and rule["uid"] == f"{self.manifest.app}-error-rate-warning":
            state.update(health="error", lastError="Post \"http://prometheus.gamepulse-dev.local:9090/api/v1/query\": "
                                                   "dial tcp: lookup prometheus.gamepulse-dev.local: no such host")
        if rule["uid"].startswith(f"{self.manifest.app}-error-rate-") and self.error_paths:
            state["state"] = self.error_rule_state(rule["labels"]["severity"])
        return state

    def error_rule_state(self, severity: str) -> str:
        """While the app answers errors: pending, then (warning only) firing once 15 errors were
        answered; inactive again once no error came for half a second."""
        errors = sum(self.hits[path] for path in self.error_paths)
        if not errors or time.monotonic() - self.last_error_at > 0.5:
            return "inactive"
        return "firing" if severity == "warning" and errors >= 15 else "pending"

    def test_receivers(self, body):
        results, failed = [], False
        for receiver in body["receivers"]:
            configs = []
            for config in receiver["grafana_managed_receiver_configs"]:
                self.tested_receivers.append(config)
                bad = config.get("type") == self.failing_receiver
                failed |= bad
                configs.append({"name": config.get("name", receiver["name"]), "uid": config.get("uid", ""),
                                "status": "failed" if bad else "ok",
                                **({"error": "the receiver timed out: context deadline exceeded"} if bad else {})})
            results.append({"name": receiver["name"], "grafana_managed_receiver_configs": configs})
        return (207 if failed else 200), {"alert": {"annotations": {"summary": "Notification test"},
                                                    "labels": {"alertname": "TestAlert"}},
                                          "receivers": results, "notified_at": "2026-12-06T12:00:00Z"}

    # -- the datasources behind Grafana's proxy -----------------------------------------------

    def proxy(self, rest: str, query: dict):
        uid, _, path = rest.partition("/")
        if uid == "prometheus" and path == "api/v1/query":
            return 200, {"status": "success", "data": {"resultType": "vector", "result": self.prometheus(query["query"][0])}}
        if uid == "loki" and path == "loki/api/v1/query_range":
            return 200, {"status": "success", "data": {"resultType": "streams", "result": self.loki(query),
                                                       "stats": {}}}
        if uid == "jaeger" and path.startswith("api/traces/"):
            self.trace_polls += 1
            trace = self.traces.get(path.rsplit("/", 1)[-1]) if self.trace_polls > self.trace_delay_polls else None
            if trace is None:
                return 404, {"data": None, "total": 0, "limit": 0, "offset": 0,
                             "errors": [{"code": 404, "msg": "trace not found"}]}
            return 200, {"data": [trace], "total": 0, "limit": 0, "offset": 0, "errors": None}
        return 404, {"message": "Not found"}

    def prometheus(self, expression: str) -> list[dict]:
        match = re.fullmatch(rf'sum\({REQUESTS}{{http_route="([^"]+)"}}\)', expression)
        if not match or not self.route_counts[match.group(1)]:
            return []
        return [{"metric": {}, "value": [time.time(), str(self.route_counts[match.group(1)])]}]

    def loki(self, query: dict) -> list[dict]:
        expression = query["query"][0]
        selector = dict(re.findall(r'(\w+)="([^"]*)"', expression.split("}")[0]))
        filters = dict(re.findall(r'\|\s*(\w+)="([^"]*)"', expression))
        start, end = int(query["start"][0]), int(query["end"][0])
        streams = []
        for labels, ts, line in self.logs:
            wanted = {**selector, **filters}
            if all(labels.get(key) == value for key, value in wanted.items()) and start <= ts <= end:
                streams.append({"stream": labels, "values": [[str(ts), line]]})
        return streams
