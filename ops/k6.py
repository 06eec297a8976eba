"""k6: found on PATH, checked, given a script rendered from the manifest's `loadtest` section.

Script API, thresholds and the summary are k6 v1's (grafana/k6-docs: using-k6/scenarios/executors/
ramping-vus, using-k6/thresholds, results-output/end-of-test/custom-summary): a `ramping-vus`
scenario with the manifest's stages, thresholds `p(95)<MS` on http_req_duration and `rate<R` on
http_req_failed, and `handleSummary` writing k6's summary object as JSON. k6 exits 99 when a
threshold fails. While it runs, its REST API (`--address`, GET /v1/metrics) gives the counters
the timeline is drawn from.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess

from orchestrator.errors import OrchestratorError
from orchestrator.schema import duration_seconds

#: The major version whose script API this module writes.
SUPPORTED = 1
#: k6's exit code when a threshold failed (k6 errext/exitcodes: ThresholdsHaveFailed).
THRESHOLDS_FAILED = 99
INSTALL = ("install k6 from Grafana's packages (https://grafana.com/docs/k6/latest/set-up/install-k6/: "
           "apt, dnf, brew, winget, or the release binary) and put it on PATH")


def find() -> str:
    """The k6 on PATH, checked to be a version whose script API we write."""
    path = shutil.which("k6")
    if path is None:
        raise OrchestratorError(f"k6 is not on PATH: {INSTALL}")
    answer = subprocess.run([path, "version"], capture_output=True, text=True, timeout=30)
    match = re.search(r"k6 v(\d+)\.(\d+)\.(\d+)", answer.stdout)
    if answer.returncode != 0 or not match:
        raise OrchestratorError(f"{path} does not answer `k6 version` as k6 does ({answer.stdout.strip()[:100]!r}): "
                                f"{INSTALL}")
    if int(match.group(1)) != SUPPORTED:
        raise OrchestratorError(f"{path} is k6 v{'.'.join(match.groups())}; this tool writes scripts for k6 "
                                f"v{SUPPORTED}.x: {INSTALL}")
    return path


def stages(spec, vus: int | None, duration: str | None) -> list[dict]:
    """The manifest's stages, scaled so the peak is `vus` and the total lasts `duration`; neither
    may pass the section's caps (max_vus, max_duration)."""
    peak = max(stage.target for stage in spec.stages) or 1
    total = sum(duration_seconds(stage.duration) for stage in spec.stages)
    if vus is not None and vus > spec.max_vus:
        raise OrchestratorError(f"--vus {vus} is above this environment's cap (loadtest.max_vus: {spec.max_vus})")
    if duration is not None and duration_seconds(duration) > duration_seconds(spec.max_duration):
        raise OrchestratorError(f"--duration {duration} is above this environment's cap "
                                f"(loadtest.max_duration: {spec.max_duration})")
    vus_factor = (vus / peak) if vus is not None else 1.0
    time_factor = (duration_seconds(duration) / total) if duration is not None else 1.0
    return [{"duration": f"{max(1, round(duration_seconds(stage.duration) * time_factor))}s",
             "target": round(stage.target * vus_factor)} for stage in spec.stages]


def thresholds(spec) -> dict[str, list[str]]:
    return {"http_req_duration": [f"p(95)<{spec.thresholds.p95_ms:g}"],
            "http_req_failed": [f"rate<{spec.thresholds.error_rate_percent / 100:g}"]}


def script(spec, base_url: str, run_stages: list[dict], summary_path: str) -> str:
    """The k6 script: each iteration one GET of a route picked by weight (`{id}` a random number),
    tagged with the route template so k6 groups its URLs (`name` tag)."""
    routes, upto = [], 0
    for route in spec.routes:
        upto += route.weight
        routes.append({"path": route.path, "upTo": upto})
    options = {"scenarios": {"load": {"executor": "ramping-vus", "startVUs": 0, "stages": run_stages,
                                      "gracefulRampDown": "30s"}},
               "thresholds": thresholds(spec),
               "summaryTrendStats": ["avg", "min", "med", "max", "p(50)", "p(95)", "p(99)"]}
    return f"""// Rendered by `orchestrator loadtest` from the manifest's loadtest section; do not edit.
import http from 'k6/http';

const BASE = {json.dumps(base_url.rstrip('/'))};
const ROUTES = {json.dumps(routes)};
const TOTAL = {upto};

export const options = {json.dumps(options, indent=2)};

function pick() {{
  const r = Math.random() * TOTAL;
  return ROUTES.find((route) => r < route.upTo) || ROUTES[ROUTES.length - 1];
}}

export default function () {{
  const route = pick();
  const path = route.path.replace('{{id}}', String(1 + Math.floor(Math.random() * 1000)));
  http.get(BASE + path, {{ tags: {{ name: route.path }} }});
}}

export function handleSummary(data) {{
  return {{ {json.dumps(summary_path)}: JSON.stringify(data, null, 2) }};
}}
"""


def drill_script(base_url: str, path: str, rate: int, duration: str) -> str:
    """A constant arrival rate on one route for `duration`, no thresholds: the alert drill's errors."""
    options = {"scenarios": {"drill": {"executor": "constant-arrival-rate", "rate": rate, "timeUnit": "1s",
                                       "duration": duration, "preAllocatedVUs": max(2, rate)}}}
    return f"""// Rendered by `orchestrator drill ENV alert`; do not edit.
import http from 'k6/http';

export const options = {json.dumps(options, indent=2)};

export default function () {{
  http.get({json.dumps(base_url.rstrip('/') + path)}, {{ tags: {{ name: {json.dumps(path)} }} }});
}}

export function handleSummary(data) {{
  return {{}};
}}
"""


def start(k6: str, script_path: str, api_port: int) -> subprocess.Popen:
    return subprocess.Popen([k6, "run", "--quiet", "--no-color", "--address", f"127.0.0.1:{api_port}", script_path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def live_metrics(api_port: int) -> dict[str, dict]:
    """k6's REST API GET /v1/metrics: each metric's sample so far (count, rate, p(95), value)."""
    from ops.http import HttpError, request
    try:
        answer = request("GET", f"http://127.0.0.1:{api_port}/v1/metrics", timeout=5)
    except HttpError:
        return {}
    if answer.status != 200:
        return {}
    return {item["id"]: item["attributes"].get("sample", {}) for item in answer.json().get("data", [])}
