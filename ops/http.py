"""A small HTTP client for the load balancer and Grafana's HTTP API (standard library only).

Everything verify and the drills ask of Prometheus, Loki and Jaeger goes through Grafana: its
datasource proxy (`/api/datasources/proxy/uid/<uid>/…`, Grafana's data_source.md "Data source
proxy calls") and its query API (`/api/ds/query`), so nothing but the load balancer needs to be
reachable. Response shapes are each project's documented ones (see tests/fake_observability.py).
"""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from orchestrator.errors import OrchestratorError

TIMEOUT = 15.0


class HttpError(OrchestratorError):
    def __init__(self, message: str, status: int | None = None, body: str = ""):
        super().__init__(message)
        self.status, self.body = status, body


@dataclass
class Response:
    status: int
    body: bytes

    def json(self):
        return json.loads(self.body or b"null")


def request(method: str, url: str, *, headers: dict | None = None, body=None, timeout: float = TIMEOUT) -> Response:
    """One request; any HTTP status is returned (the caller decides), a connection failure raises."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Accept": "application/json", **({"Content-Type": "application/json"} if data else {}),
               **(headers or {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers, method=method),
                                    timeout=timeout) as answer:
            return Response(answer.status, answer.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, error.read())
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise HttpError(f"{method} {_without_query(url)}: {reason}") from None


def _without_query(url: str) -> str:
    return urllib.parse.urlsplit(url)._replace(query="").geturl()


class Grafana:
    """Grafana's HTTP API at `base` (the load balancer's /grafana), as the admin user.

    Endpoints (Grafana's HTTP API docs, docs/sources/developer-resources/api-reference/http-api):
    /api/health (other.md), /api/search (folder_dashboard_search.md), /api/dashboards/uid/<uid>
    (dashboard.md), /api/ds/query and the datasource proxy (data_source.md),
    /api/v1/provisioning/alert-rules and /contact-points (alerting_provisioning.md); the rules'
    evaluation state /api/prometheus/grafana/api/v1/rules and the receiver test
    /api/alertmanager/grafana/config/api/v1/receivers/test are Grafana's alerting API
    (pkg/services/ngalert/api/tooling/definitions: prom.go, alertmanager.go).
    """

    def __init__(self, base: str, user: str, password: str):
        self.base = base.rstrip("/")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}

    def get(self, path: str, **params):
        return self._json("GET", path, params=params)

    def post(self, path: str, body, *, accept: tuple[int, ...] = (200,)):
        return self._json("POST", path, body=body, accept=accept)

    def _json(self, method: str, path: str, *, params: dict | None = None, body=None, accept=(200,)):
        query = f"?{urllib.parse.urlencode(params, doseq=True)}" if params else ""
        answer = request(method, f"{self.base}{path}{query}", headers=self._headers, body=body)
        if answer.status not in accept:
            text = answer.body.decode(errors="replace")[:300]
            raise HttpError(f"Grafana {method} {path} answered {answer.status}: {text}", answer.status, text)
        return answer.json()

    # -- Grafana itself ---------------------------------------------------------------------

    def health(self) -> dict:
        return self.get("/api/health")

    def dashboards(self, tag: str) -> list[dict]:
        return self.get("/api/search", type="dash-db", tag=tag)

    def dashboard(self, uid: str) -> dict:
        return self.get(f"/api/dashboards/uid/{uid}")["dashboard"]

    def query(self, target: dict, time_from: str = "now-1h", time_to: str = "now") -> dict:
        """One panel target through /api/ds/query: {refId: {frames, error, status}}. Prometheus,
        Loki, CloudWatch and Jaeger all have backends in Grafana (pkg/tsdb/*), so every panel's
        queries run there; one query per request (data_source.md: one datasource per request)."""
        body = {"queries": [{"maxDataPoints": 100, "intervalMs": 60_000, **target}], "from": time_from, "to": time_to}
        return self.post("/api/ds/query", body, accept=(200, 400, 500))["results"]

    def alert_rules(self) -> list[dict]:
        return self.get("/api/v1/provisioning/alert-rules")

    def rule_states(self) -> list[dict]:
        """Every Grafana-managed rule's evaluation state: name, state, health, lastError."""
        groups = self.get("/api/prometheus/grafana/api/v1/rules")["data"]["groups"]
        return [rule for group in groups for rule in group.get("rules", [])]

    def contact_points(self) -> list[dict]:
        return self.get("/api/v1/provisioning/contact-points")

    def test_receiver(self, name: str, integrations: list[dict]) -> list[dict]:
        """Send a test notification through `integrations` (a contact point's); each one's
        {name, uid, status, error}. Grafana answers 207 when some failed."""
        body = {"receivers": [{"name": name, "grafana_managed_receiver_configs": integrations}]}
        answer = self.post("/api/alertmanager/grafana/config/api/v1/receivers/test", body, accept=(200, 207, 400, 408))
        return [config for receiver in answer.get("receivers", [])
                for config in receiver.get("grafana_managed_receiver_configs", [])]

    # -- the datasources, through Grafana's proxy -------------------------------------------

    def prometheus(self, query: str) -> list[dict]:
        """An instant query (Prometheus docs/querying/api.md): the vector's samples."""
        answer = self.get("/api/datasources/proxy/uid/prometheus/api/v1/query", query=query)
        return answer["data"]["result"]

    def loki(self, query: str, start_ns: int, end_ns: int, limit: int = 100) -> list[dict]:
        """A log query over a range (Loki docs/sources/reference/loki-http-api.md): its streams."""
        answer = self.get("/api/datasources/proxy/uid/loki/loki/api/v1/query_range", query=query,
                          start=str(start_ns), end=str(end_ns), limit=str(limit), direction="backward")
        return answer["data"]["result"]

    def jaeger_trace(self, trace_id: str) -> list[dict] | None:
        """The trace's spans (Jaeger's query API GET /api/traces/{traceID},
        cmd/query/app/http_handler.go), or None while Jaeger has not got it (404)."""
        try:
            answer = self.get(f"/api/datasources/proxy/uid/jaeger/api/traces/{trace_id}")
        except HttpError as error:
            if error.status == 404:
                return None
            raise
        traces = answer.get("data") or []
        return traces[0].get("spans", []) if traces else None
